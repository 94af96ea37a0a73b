"""Evaluate a finished run, a checkpoint or a hub model: rebuild it from its stored config, load, measure."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ssl_zoo.augment import EvalView, Normalize
from ssl_zoo.backbones import rebuild_backbone
from ssl_zoo.checkpoint import CheckpointError, atomic_save, atomic_write_json, load_checkpoint
from ssl_zoo.config import DataConfig, ExperimentConfig, to_dict
from ssl_zoo.experiment import load_config
from ssl_zoo.data import build_dataset
from ssl_zoo.eval.knn import extract_features, knn_eval
from ssl_zoo.eval.linear import ProbeResult, linear_probe
from ssl_zoo.methods.base import Method, build_method
from ssl_zoo.runtime import pick_device


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


def labelled_splits(data: DataConfig, what: str) -> tuple:
    """Full train and test splits (no subset limit); a clear error when there is no labelled test split."""
    data = dataclasses.replace(data, limit=0)
    train_set, test_set = build_dataset(data, "train"), build_dataset(data, "test")
    if test_set is None:
        raise CheckpointError(f"data.kind={data.kind} has no labelled test split for {what}; "
                              "give one with data.eval_path=...")
    return train_set, test_set


@dataclass
class EvalSource:
    """What an evaluation needs: the backbone, its input view, the data settings, where results go."""

    backbone: nn.Module  # moved to the device by `to`
    head: nn.Module | None  # the head layer fine-tuning keeps (SimCLRv2), None otherwise
    view: EvalView  # uint8 or [0, 1] images -> the backbone's input
    cfg: ExperimentConfig
    step: int
    identity: str  # names the weights in feature-cache keys
    out_dir: Path  # RUN/eval for runs; the cache for hub models (a hub folder is never written to)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.view(images))

    def to(self, device: torch.device) -> "EvalSource":
        for module in (self.backbone, self.head, self.view):
            if module is not None:
                module.to(device)
        return self


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Random initialisation that is the same every time (feature caches key on it), global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def is_run(source: str) -> bool:
    path = Path(source)
    return path.is_file() or (path.is_dir() and not (path / "config.json").is_file())


def load_source(source: str, overrides: list[str] | None = None, hub: str | None = None,
                pretrained: bool = True) -> EvalSource:
    """A run directory or checkpoint, or anything ssl_zoo.hub.load takes (name, folder, URL, hf-hub:).

    `pretrained=False` gives the same architecture freshly initialised: the baseline every
    evaluation should beat.
    """
    if os.sep in str(source) and "://" not in str(source) and not Path(source).exists():
        raise CheckpointError(f"no such run directory, checkpoint or hub model folder: {source}")
    suffix = "" if pretrained else "@random-init"
    if is_run(str(source)):
        if pretrained:
            run = load_method(Path(source), overrides)
        else:
            path = resolve_checkpoint(Path(source))
            cfg = load_config(load_checkpoint(path)["config"], overrides)
            with seeded(cfg.train.seed):
                run = TrainedRun(build_method(cfg).eval(), cfg, 0, path)
        method = run.method
        view = EvalView(method.eval_size or run.cfg.data.load_size, method.normalize)
        return EvalSource(method.backbone(), method.finetune_head(), view, run.cfg, run.step,
                          f"{run.checkpoint}@{run.step}{suffix}", run_dir_of(run.checkpoint) / "eval")
    from ssl_zoo.hub import build_from_folder, cache_root, read_model_config, resolve
    from ssl_zoo.hub.loading import spec_from_config

    folder, expected = resolve(str(source), hub, weights=pretrained)
    config = read_model_config(folder)
    meta = config["ssl_zoo"]
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"hub model {source} carries no training config; give the data with a run instead")
    cfg = load_config(meta["config"], overrides)
    if pretrained:
        backbone = build_from_folder(folder, 0, expected)
    else:
        with seeded(cfg.train.seed):
            backbone = rebuild_backbone(spec_from_config(config)).eval()
    pcfg = config["pretrained_cfg"]
    view = EvalView(int(pcfg["input_size"][-1]), Normalize(stats=(pcfg["mean"], pcfg["std"])))
    return EvalSource(backbone, None, view, cfg, int(meta.get("steps", 0)) if pretrained else 0,
                      meta["sha256"] + suffix, cache_root() / "eval" / meta["sha256"][:16])


def evaluate_knn(source: str, overrides: list[str] | None = None, k: int = 20, temperature: float = 0.07,
                 device: str = "auto", hub: str | None = None) -> float:
    src = load_source(source, overrides, hub)
    dev = pick_device(device)
    src.to(dev)
    train_set, test_set = labelled_splits(src.cfg.data, "k-NN")
    return knn_eval(src.embed, train_set, test_set, dev, k, temperature, src.cfg.eval.batch_size)


def cached_features(src: EvalSource, dataset, split: str, device: torch.device,
                    limit: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features of one split (its first `limit` images if > 0), extracted once per weights and
    data setting (OUT_DIR/features_*.pt)."""
    key = json.dumps({"weights": src.identity, "data": to_dict(src.cfg.data), "limit": limit}, sort_keys=True)
    path = src.out_dir / f"features_{split}_{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        return cached["features"], cached["labels"]
    feats, labels = extract_features(src.embed, dataset, device, src.cfg.eval.batch_size, limit, f"{split} features")
    atomic_save({"features": feats, "labels": labels}, path)
    return feats, labels


def evaluate_linear(source: str, overrides: list[str] | None = None, device: str = "auto", hub: str | None = None,
                    from_scratch: bool = False, train_limit: int = 0, test_limit: int = 0,
                    **probe_args) -> tuple[ProbeResult, Path]:
    """Linear probe of a run's or hub model's backbone (or, `from_scratch`, of the same network freshly
    initialised), on the first `train_limit`/`test_limit` images of each split (0: all); the result is
    also written to OUT_DIR/linear_probe[_scratch].json."""
    src = load_source(source, overrides, hub, pretrained=not from_scratch)
    dev = pick_device(device)
    src.to(dev)
    train_set, test_set = labelled_splits(src.cfg.data, "a linear probe")
    train = cached_features(src, train_set, "train", dev, train_limit)
    test = cached_features(src, test_set, "test", dev, test_limit)
    result = linear_probe(*train, *test, **probe_args)
    out = src.out_dir / ("linear_probe_scratch.json" if from_scratch else "linear_probe.json")
    atomic_write_json({"step": src.step, "from_scratch": from_scratch, "train_images": len(train[0]),
                       "test_images": len(test[0]), **result.to_dict()}, out)
    return result, out
