"""The docs hold: the reliability contract names real tests, the README is a user guide in the expected
order, every link and repository path resolves inside the repository, and every documented command parses
(its --help runs; the cheap ones run for real)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_every_test_the_reliability_table_names_exists():
    text = (ROOT / "docs" / "reliability.md").read_text()
    named = re.findall(r"(tests/[\w/]+\.py)::(\w+)", text)
    assert len(named) > 40
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^def {name}\(", (ROOT / path).read_text(), flags=re.M)]
    assert not missing


# ----------------------------------------------------------------------------- the README and docs/

README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_DOCS = [README, ROOT / "docs/commands.md", ROOT / "docs/hub.md"]  # their ```bash blocks are commands


def test_readme_is_a_user_guide_in_the_expected_order():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings == ["Install", "Quick start", "Methods", "Results", "Documentation", "Citation", "License",
                        "Acknowledgements"]
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    assert [line.split("#")[0].split() for line in first_block.splitlines()] == [["make", "train"], ["make", "test"]]
    assert text.index("make train") < text.index("## Install")
    assert "@software{" in text and (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_every_method_has_a_row_with_its_paper_and_configs():
    from ssl_zoo.registry import available_methods

    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \|(.*)$", README.read_text(), flags=re.M)}
    assert set(rows) == set(available_methods())
    for name, row in rows.items():
        assert "https://arxiv.org/abs/" in row and f"](configs/{name}/" in row, name


def test_docs_link_and_name_only_files_in_the_repository():
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        assert not re.search(r"METHODS\.md|DESIGN\.md|\.\./|/work/|shared/", text), doc
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[\w-]+)?\)", text):
            if not target.startswith(("http://", "https://")):
                path = (doc.parent / target).resolve()
                if not path.exists():
                    missing.append(f"{doc.name}: {target}")
        for named in re.findall(r"`((?:configs|slurm|docs|tests|benchmarks|ssl_zoo|methods|backbones)/[\w./-]+)`",
                                text):
            if "<" not in named and not named.endswith("/") and not (ROOT / named.split("::")[0]).exists():
                missing.append(f"{doc.name}: {named}")
    assert not missing


def command_lines(doc: Path) -> list[list[str]]:
    """The words of every command in the doc's ```bash blocks (continuations joined, comments dropped)."""
    import shlex

    lines = []
    for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value prefixes
                words.pop(0)
            if words:
                lines.append(words)
    return lines


def zoo_args(words: list[str]) -> list[str] | None:
    """The ssl-zoo arguments of a command line (ssl-zoo, .venv/bin/ssl-zoo, torchrun/python -m ssl_zoo)."""
    if words[0].endswith("ssl-zoo"):
        return words[1:]
    if "ssl_zoo" in words and words[words.index("ssl_zoo") - 1] == "-m":
        return words[words.index("ssl_zoo") + 1:]
    return None


CHEAP = {("methods",), ("config", "show"), ("hub", "official")}  # run for real; the rest: --help and parsing


@pytest.mark.parametrize("doc", COMMAND_DOCS, ids=lambda p: p.name)
def test_every_documented_command_parses_and_its_help_runs(doc, tmp_path, monkeypatch, capsys):
    from ssl_zoo.cli import build_parser, main

    monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path / "cache"))
    commands, seen = [], 0
    for words in command_lines(doc):
        if words[0] == "make":
            assert re.search(rf"^{words[1]}:", (ROOT / "Makefile").read_text(), flags=re.M), words
        elif words[0] == "cp":
            assert (ROOT / words[1]).is_file(), words
        args = zoo_args(words)
        if args is None:
            continue
        seen += 1
        path = []
        while len(path) < 2 and len(args) > len(path) and not args[len(path)].startswith("-") \
                and "=" not in args[len(path)] and _is_command([*path, args[len(path)]]):
            path.append(args[len(path)])
        assert path, words
        with pytest.raises(SystemExit) as help_exit:
            build_parser().parse_args([*path, "--help"])
        assert help_exit.value.code == 0
        parsed, extra = build_parser().parse_known_args(args)  # a wrong option or a missing argument exits 2
        assert all("=" in word and not word.startswith("-") for word in extra), (words, extra)
        if path[0] in ("train", "submit") or path == ["config", "show"]:
            assert (ROOT / parsed.config).is_file(), words
        if tuple(path) in CHEAP:
            assert main(args) == 0, words
        commands.append(tuple(path))
    capsys.readouterr()
    assert seen >= 3
    if doc == README:  # one command per use: train, evaluate, submit, export
        assert {("train",), ("eval", "knn"), ("submit",), ("hub", "export")} <= set(commands)


def _is_command(path: list[str]) -> bool:
    from ssl_zoo.cli import build_parser

    parser = build_parser()
    for word in path:
        subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subs or word not in subs[0].choices:
            return False
        parser = subs[0].choices[word]
    return True
