"""Evaluate a finished run, a checkpoint or a hub model: rebuild it from its stored config, load, measure."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ssl_zoo.augment import center_crop_or_resize, to_unit
from ssl_zoo.checkpoint import CheckpointError, atomic_save, atomic_write_json, load_checkpoint
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


class HubEmbed(nn.Module):
    """Features of uint8 images for a hub backbone: its pretrained_cfg's side, mean and std."""

    def __init__(self, model: nn.Module, pretrained_cfg: dict) -> None:
        super().__init__()
        self.model = model
        self.side = int(pretrained_cfg["input_size"][-1])
        self.register_buffer("mean", torch.tensor(pretrained_cfg["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pretrained_cfg["std"]).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_unit(images)
        if x.shape[-1] != self.side or x.shape[-2] != self.side:
            x = center_crop_or_resize(x, self.side)
        return self.model((x - self.mean) / self.std)


@dataclass
class EvalSource:
    """What an evaluation needs: a feature function, the data settings, and where results go."""

    embed: Callable[[torch.Tensor], torch.Tensor]
    module: nn.Module  # moved to the device
    cfg: ExperimentConfig
    step: int
    identity: str  # names the weights in feature-cache keys
    out_dir: Path  # RUN/eval for runs; the cache for hub models (a hub folder is never written to)


def is_run(source: str) -> bool:
    path = Path(source)
    return path.is_file() or (path.is_dir() and not (path / "config.json").is_file())


def load_source(source: str, overrides: list[str] | None = None, hub: str | None = None) -> EvalSource:
    """A run directory or checkpoint, or anything ssl_zoo.hub.load takes (name, folder, URL, hf-hub:)."""
    if os.sep in str(source) and "://" not in str(source) and not Path(source).exists():
        raise CheckpointError(f"no such run directory, checkpoint or hub model folder: {source}")
    if is_run(str(source)):
        run = load_method(Path(source), overrides)
        return EvalSource(run.method.embed, run.method, run.cfg, run.step, f"{run.checkpoint}@{run.step}",
                          run_dir_of(run.checkpoint) / "eval")
    from ssl_zoo.hub import build_from_folder, cache_root, read_model_config, resolve

    folder, expected = resolve(str(source), hub)
    config = read_model_config(folder)
    meta = config["ssl_zoo"]
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"hub model {source} carries no training config; give the data with a run instead")
    cfg = load_config(meta["config"], overrides)
    embed = HubEmbed(build_from_folder(folder, 0, expected), config["pretrained_cfg"])
    return EvalSource(embed, embed, cfg, int(meta.get("steps", 0)), meta["sha256"],
                      cache_root() / "eval" / meta["sha256"][:16])


def evaluate_knn(source: str, overrides: list[str] | None = None, k: int = 20, temperature: float = 0.07,
                 device: str = "auto", hub: str | None = None) -> float:
    src = load_source(source, overrides, hub)
    dev = pick_device(device)
    src.module.to(dev)
    train_set, test_set = labelled_splits(src.cfg, "k-NN")
    return knn_eval(src.embed, train_set, test_set, dev, k, temperature, src.cfg.eval.batch_size)


def cached_features(src: EvalSource, dataset, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features of one split, extracted once per weights and data setting (OUT_DIR/features_*.pt)."""
    key = json.dumps({"weights": src.identity, "data": to_dict(src.cfg.data)}, sort_keys=True)
    path = src.out_dir / f"features_{split}_{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        return cached["features"], cached["labels"]
    feats, labels = extract_features(src.embed, dataset, device, src.cfg.eval.batch_size, desc=f"{split} features")
    atomic_save({"features": feats, "labels": labels}, path)
    return feats, labels


def evaluate_linear(source: str, overrides: list[str] | None = None, device: str = "auto", hub: str | None = None,
                    **probe_args) -> tuple[ProbeResult, Path]:
    """Linear probe of a run's or hub model's backbone; the result is also written to OUT_DIR/linear_probe.json."""
    src = load_source(source, overrides, hub)
    dev = pick_device(device)
    src.module.to(dev)
    train_set, test_set = labelled_splits(src.cfg, "a linear probe")
    train = cached_features(src, train_set, "train", dev)
    test = cached_features(src, test_set, "test", dev)
    result = linear_probe(*train, *test, **probe_args)
    out = src.out_dir / "linear_probe.json"
    atomic_write_json({"step": src.step, **result.to_dict()}, out)
    return result, out
