"""The import graph runs one way: engine -> methods -> trainer -> eval/hub/launch -> cli.

Why: a lower layer importing a higher one (even lazily, inside a function) is how import loops and
"the schema loads every method" come back. Every import statement is read, function-level ones too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# top-level folders installed under ssl_zoo (setup.cfg package_dir)
PACKAGES = {"ssl_zoo": ROOT / "ssl_zoo", "ssl_zoo.methods": ROOT / "methods", "ssl_zoo.backbones": ROOT / "backbones"}
# module-name prefix -> layer (the longest prefix wins); anything in ssl_zoo not named here is the engine
LAYERS = {
    "ssl_zoo.backbones": 1, "ssl_zoo.methods": 1, "ssl_zoo.registry": 1, "ssl_zoo.experiment": 1,
    "ssl_zoo.trainer": 2, "ssl_zoo.resume_check": 2, "ssl_zoo.run_dir": 2,
    "ssl_zoo.eval": 3, "ssl_zoo.launch": 3,
    "ssl_zoo.hub.export": 3, "ssl_zoo.hub.card": 3, "ssl_zoo.hub.official": 3, "ssl_zoo.hub.releases": 3,
    "ssl_zoo.hub.torchhub": 3,
    "ssl_zoo.cli": 4, "ssl_zoo.__main__": 4,
    # what the trainer itself runs sits below it: the k-NN monitor (engine: data + runtime only) and
    # reading a hub model's weights for model.init_from (index, download, source, loading: backbones)
    "ssl_zoo.eval.features": 0, "ssl_zoo.eval.knn": 0, "ssl_zoo.hub": 1,
}
NAMES = ["engine", "methods", "trainer", "eval/hub/launch", "cli"]


def layer(module: str) -> int:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else 0


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imported(module: str, path: Path) -> set[str]:
    """Absolute names of the ssl_zoo modules `path` imports (relative imports resolved)."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
    return {n for n in names if n == "ssl_zoo" or n.startswith("ssl_zoo.")}


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_runs_up_a_layer(module):
    own = layer(module)
    upward = sorted(n for n in imported(module, MODULES[module]) if layer(n) > own)
    assert not upward, (f"{module} ({NAMES[own]}) imports {', '.join(upward)} from a higher layer "
                        f"({', '.join(NAMES[layer(n)] for n in upward)})")


def test_the_layer_map_sees_every_package():
    assert {"ssl_zoo.config", "ssl_zoo.trainer", "ssl_zoo.methods.dino", "ssl_zoo.cli"} <= set(MODULES)
    assert layer("ssl_zoo.config") == 0 and layer("ssl_zoo.methods.dino") == 1 and layer("ssl_zoo.eval.linear") == 3
    assert layer("ssl_zoo.hub.export") == 3 and layer("ssl_zoo.hub.loading") == 1
