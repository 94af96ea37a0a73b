"""Checkpoints and hub folders written before a refactor still load: every method's state-dict layout
(keys, in order, and shapes, the whole method and the exported backbone; the order is the parameter
order, by which a checkpoint's optimizer state is matched on resume) equals the one recorded in
tests/data/state_dict_layout.json, at its tiny config and at every variant or option that adds modules;
and the method section those runs saved (checkpoints and hub folders keep the whole config) loads again,
builds the same layout and keeps every value it still has a field for.

The fixture was written from the code before the one-class-per-algorithm step (issue 18) by
`python -m tests.test_state_dict_layout --write`; rewrite it only for a deliberate layout change, which
breaks the loading of older checkpoints.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, tiny_config

FIXTURE = Path(__file__).resolve().parent / "data" / "state_dict_layout.json"

# case -> (method, method-section overrides, whole sections replaced); beyond each method's tiny config,
# the variants and options that hold other modules
CASES: dict[str, tuple[str, dict, dict]] = {
    **{name: (name, {}, {}) for name in TINY},
    "sit/v1": ("sit", {"variant": "v1"}, {}),
    "satmae_pp/rgb": ("satmae_pp", {"variant": "rgb", "normalize": "fmow_rgb",
                                    "view": {"size": 56, "jitter_p": 0.0, "gray_p": 0.0}},
                      {"model": {"backbone": "vit_tiny_patch16_224", "patch_size": 4}}),
    "simclrv2/memory": ("simclrv2", {"memory_size": 64}, {}),
    "rad_dino/shared_ibot_head": ("rad_dino", {"separate_ibot_head": False}, {}),
}


def shapes(module) -> dict[str, str]:
    """State-dict key -> shape as "d0xd1x..." (one fixture line per key)."""
    return {k: "x".join(map(str, v.shape)) for k, v in module.state_dict().items()}


def case_config(case: str, tmp_path: Path) -> dict:
    name, overrides, sections = CASES[case]
    raw = tiny_config(name, tmp_path)
    raw["method"].update(copy.deepcopy(overrides))  # copies: a test that edits its config must not edit CASES
    raw.update(copy.deepcopy(sections))
    return raw


def layout(raw: dict) -> dict:
    """{"method": key -> shape, "backbone": key -> shape, "config": the saved method section} of a
    freshly built method."""
    from ssl_zoo.config import to_dict
    from ssl_zoo.experiment import load_config
    from ssl_zoo.methods.base import build_method

    cfg = load_config(raw)
    method = build_method(cfg)
    return {"method": shapes(method), "backbone": shapes(method.backbone()), "config": to_dict(cfg.method)}


def ordered(layout: dict) -> tuple[list, list]:
    return list(layout["method"].items()), list(layout["backbone"].items())


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_layout_is_unchanged(case, tmp_path):
    recorded = json.loads(FIXTURE.read_text())[case]
    now = layout(case_config(case, tmp_path))
    assert ordered(now) == ordered(recorded)


@pytest.mark.parametrize("case", list(CASES))
def test_the_method_section_saved_before_loads_and_builds_the_same_layout(case, tmp_path):
    recorded = json.loads(FIXTURE.read_text())[case]
    raw = case_config(case, tmp_path)
    raw["method"] = recorded["config"]
    reloaded = layout(raw)
    assert ordered(reloaded) == ordered(recorded)
    assert_kept(recorded["config"], reloaded["config"])


def assert_kept(saved: dict, loaded: dict, prefix: str = "method") -> None:
    """Every value saved before is loaded unchanged; keys added since (with their defaults) and retired
    keys (dropped on load) are the only differences."""
    for key, value in loaded.items():
        if key not in saved:
            continue
        if isinstance(value, dict) and isinstance(saved[key], dict):
            assert_kept(saved[key], value, f"{prefix}.{key}")
        else:
            assert value == saved[key], f"{prefix}.{key}: saved {saved[key]!r}, loaded {value!r}"


def test_every_registered_method_has_a_recorded_layout():
    from ssl_zoo.registry import available_methods

    assert set(available_methods()) <= set(json.loads(FIXTURE.read_text()))


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        layouts = {case: layout(case_config(case, Path(tmp))) for case in CASES}
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(layouts, indent=1) + "\n")
