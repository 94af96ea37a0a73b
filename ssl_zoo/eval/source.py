"""What can be evaluated: a run directory, a checkpoint or a hub model, rebuilt from its stored config.

Every evaluation (k-NN, linear probe, fine-tuning, distillation) starts from `load_source`, so a
run and the hub model exported from it are measured with the same backbone, input view and data.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ssl_zoo.augment import EvalView, Normalize
from ssl_zoo.backbones import rebuild_backbone
from ssl_zoo.checkpoint import load_checkpoint
from ssl_zoo.config import DataConfig, ExperimentConfig
from ssl_zoo.experiment import load_config
from ssl_zoo.data import build_dataset
from ssl_zoo.errors import CheckpointError
from ssl_zoo.methods.base import build_method
from ssl_zoo.run_dir import EVAL_DIR, TrainedRun, load_method, resolve_checkpoint, run_dir_of
from ssl_zoo.runtime import seeded


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


def is_run(source: str) -> bool:
    """A checkpoint file or a run directory (a hub model folder holds config.json instead)."""
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
        view = method.eval_view(run.cfg.data.load_size)
        return EvalSource(method.backbone(), method.finetune_head(), view, run.cfg, run.step,
                          f"{run.checkpoint}@{run.step}{suffix}", run_dir_of(run.checkpoint) / EVAL_DIR)
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
    return EvalSource(backbone, None, hub_view(config), cfg, int(meta.get("steps", 0)) if pretrained else 0,
                      meta["sha256"] + suffix, cache_root() / "eval" / meta["sha256"][:16])


def hub_view(config: dict) -> EvalView:
    """A hub model's evaluation input from its config.json: timm's pretrained_cfg on images at the stored
    config's load size (crop_pct 1 resizes the whole image to the input size, below 1 centre-crops it), and
    the zoo's per-image min-max where the export says so."""
    pcfg = config["pretrained_cfg"]
    return EvalView(int(pcfg["input_size"][-1]), Normalize(stats=(pcfg["mean"], pcfg["std"])),
                    resize=float(pcfg.get("crop_pct", 1.0)) >= 1.0,
                    minmax=bool(config["ssl_zoo"].get("intensity_minmax", False)))


def labelled_splits(data: DataConfig, what: str) -> tuple:
    """Full train and test splits (no subset limit); a clear error when there is no labelled test split."""
    data = dataclasses.replace(data, limit=0)
    train_set, test_set = build_dataset(data, "train"), build_dataset(data, "test")
    if test_set is None:
        raise CheckpointError(f"data.kind={data.kind} has no labelled test split for {what}; "
                              "give one with data.eval_path=...")
    return train_set, test_set
