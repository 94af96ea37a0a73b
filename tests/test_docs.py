"""The reliability contract (docs/reliability.md) names real tests: a renamed or deleted test breaks this."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def test_every_test_the_reliability_table_names_exists():
    text = (ROOT / "docs" / "reliability.md").read_text()
    named = re.findall(r"(tests/[\w/]+\.py)::(\w+)", text)
    assert len(named) > 40
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^def {name}\(", (ROOT / path).read_text(), flags=re.M)]
    assert not missing
