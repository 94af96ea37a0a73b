"""Evaluation lives in ssl_zoo/eval/ and sits above the trainer: the import graph, read from the sources.

Layers, bottom to top: engine (config, errors, runtime, data, augment, ...) -> methods/backbones ->
trainer (and run_dir) -> eval/hub/launch -> cli. The trainer's periodic k-NN is the one use of
evaluation code below it, so eval/features and eval/knn must import only the engine.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"ssl_zoo": ROOT / "ssl_zoo", "ssl_zoo.methods": ROOT / "methods", "ssl_zoo.backbones": ROOT / "backbones"}
ABOVE_ENGINE = ("ssl_zoo.methods", "ssl_zoo.backbones", "ssl_zoo.registry", "ssl_zoo.trainer", "ssl_zoo.run_dir",
                "ssl_zoo.eval", "ssl_zoo.hub", "ssl_zoo.launch", "ssl_zoo.cli")
APPLICATION = ("ssl_zoo.eval", "ssl_zoo.hub", "ssl_zoo.launch", "ssl_zoo.cli")
TRAINERS_EVAL = {"ssl_zoo.eval.features", "ssl_zoo.eval.knn"}


def in_layer(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def import_graph() -> dict[str, set[str]]:
    """Every zoo module -> the zoo modules it imports anywhere in its source (function-level imports too)."""
    graph = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            names = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ssl_zoo"):
                    names |= {f"{node.module}.{a.name}" if node.module == "ssl_zoo" else node.module for a in node.names}
                elif isinstance(node, ast.Import):
                    names |= {a.name for a in node.names if a.name.startswith("ssl_zoo")}
            graph[".".join([package, *parts])] = names
    return graph


def test_evaluation_lives_in_eval_and_imports_follow_the_layers():
    assert importlib.util.find_spec("ssl_zoo.evaluate") is None
    graph = import_graph()
    assert TRAINERS_EVAL <= graph.keys() and "ssl_zoo.eval.source" in graph
    # below eval, only the trainer reaches into it, and only for feature extraction and the k-NN
    below = {(m, i) for m, imports in graph.items() if not in_layer(m, APPLICATION) for i in imports
             if in_layer(i, ("ssl_zoo.eval",))}
    assert below == {("ssl_zoo.trainer", "ssl_zoo.eval.features"), ("ssl_zoo.trainer", "ssl_zoo.eval.knn")}
    for module in TRAINERS_EVAL:
        assert not {i for i in graph[module] if in_layer(i, ABOVE_ENGINE) and i not in TRAINERS_EVAL}, module
    # run directories are read through one module; nothing but the entry point imports the CLI
    assert {m for m, imports in graph.items() if "ssl_zoo.run_dir" in imports} >= {
        "ssl_zoo.eval.source", "ssl_zoo.hub.export", "ssl_zoo.launch.job", "ssl_zoo.launch.submit"}
    assert {m for m, imports in graph.items() if "ssl_zoo.cli" in imports} == {"ssl_zoo.__main__"}
