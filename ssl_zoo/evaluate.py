"""Evaluate a finished run or checkpoint: rebuild its method from the stored config, load, measure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ssl_zoo.checkpoint import CheckpointError, load_checkpoint
from ssl_zoo.config import ExperimentConfig, load_config
from ssl_zoo.data import build_dataset
from ssl_zoo.eval.knn import knn_eval
from ssl_zoo.methods.base import Method, build_method
from ssl_zoo.trainer import pick_device


def resolve_checkpoint(source: Path) -> Path:
    if source.is_dir():
        for candidate in (source / "checkpoints" / "last.pt", source / "last.pt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"no checkpoints/last.pt under run directory {source}")
    if not source.is_file():
        raise CheckpointError(f"no such run directory or checkpoint: {source}")
    return source


@dataclass
class TrainedRun:
    method: Method
    cfg: ExperimentConfig
    step: int
    checkpoint: Path


def load_method(source: Path, overrides: list[str] | None = None) -> TrainedRun:
    """The trained method in eval mode, its config (stored in the checkpoint, plus overrides), its step."""
    path = resolve_checkpoint(source)
    state = load_checkpoint(path)
    cfg = load_config(state["config"], overrides)
    method = build_method(cfg)
    method.load_state_dict(state["model"])
    return TrainedRun(method.eval(), cfg, int(state["step"]), path)


def evaluate_knn(source: Path, overrides: list[str] | None = None, k: int = 20, temperature: float = 0.07,
                 device: str = "auto") -> float:
    run = load_method(source, overrides)
    method, cfg = run.method, run.cfg
    dev = pick_device(device)
    method.to(dev)
    data_cfg = cfg.data
    data_cfg.limit = 0
    train_set, test_set = build_dataset(data_cfg, "train"), build_dataset(data_cfg, "test")
    if test_set is None:
        raise CheckpointError(f"data.kind={data_cfg.kind} has no labelled test split for k-NN; "
                              "give one with data.eval_path=...")
    return knn_eval(method.embed, train_set, test_set, dev, k, temperature, cfg.eval.batch_size)
