"""Evaluate a finished run or checkpoint: rebuild its method from the stored config, load, measure."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ssl_zoo.checkpoint import CheckpointError, atomic_save, load_checkpoint
from ssl_zoo.config import ExperimentConfig, load_config, to_dict
from ssl_zoo.data import build_dataset
from ssl_zoo.eval.knn import extract_features, knn_eval
from ssl_zoo.eval.linear import ProbeResult, linear_probe
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


def run_dir_of(checkpoint: Path) -> Path:
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def labelled_splits(cfg: ExperimentConfig, what: str) -> tuple:
    """Full train and test splits (no subset limit); a clear error when there is no labelled test split."""
    cfg.data.limit = 0
    train_set, test_set = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    if test_set is None:
        raise CheckpointError(f"data.kind={cfg.data.kind} has no labelled test split for {what}; "
                              "give one with data.eval_path=...")
    return train_set, test_set


def evaluate_knn(source: Path, overrides: list[str] | None = None, k: int = 20, temperature: float = 0.07,
                 device: str = "auto") -> float:
    run = load_method(source, overrides)
    dev = pick_device(device)
    run.method.to(dev)
    train_set, test_set = labelled_splits(run.cfg, "k-NN")
    return knn_eval(run.method.embed, train_set, test_set, dev, k, temperature, run.cfg.eval.batch_size)


def cached_features(run: TrainedRun, dataset, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features of one split, extracted once per checkpoint step and data setting (run/eval/)."""
    key = json.dumps({"step": run.step, "checkpoint": str(run.checkpoint), "data": to_dict(run.cfg.data),
                      "eval_size": run.method.eval_size}, sort_keys=True)
    path = run_dir_of(run.checkpoint) / "eval" / f"features_{split}_{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        return cached["features"], cached["labels"]
    feats, labels = extract_features(run.method.embed, dataset, device, run.cfg.eval.batch_size,
                                     desc=f"{split} features")
    atomic_save({"features": feats, "labels": labels}, path)
    return feats, labels


def evaluate_linear(source: Path, overrides: list[str] | None = None, device: str = "auto",
                    **probe_args) -> ProbeResult:
    """Linear probe of a run's backbone; the result is also written to RUN_DIR/eval/linear_probe.json."""
    run = load_method(source, overrides)
    dev = pick_device(device)
    run.method.to(dev)
    train_set, test_set = labelled_splits(run.cfg, "a linear probe")
    train = cached_features(run, train_set, "train", dev)
    test = cached_features(run, test_set, "test", dev)
    result = linear_probe(*train, *test, **probe_args)
    out = run_dir_of(run.checkpoint) / "eval" / "linear_probe.json"
    out.write_text(json.dumps({"step": run.step, **result.to_dict()}, indent=2) + "\n")
    return result
