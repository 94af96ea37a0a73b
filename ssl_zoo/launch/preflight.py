"""What `ssl-zoo submit` checks and shows before anything is queued.

Why: a job can wait hours in a queue. A data path left empty (the cluster configs ship without one)
must fail at submit naming the key, and the numbers that change with the node count (ranks, global
batch, peak lr) must be on screen before the job is queued, not discovered in its log.
"""

from __future__ import annotations

from pathlib import Path

from ssl_zoo.config import ConfigError, ExperimentConfig
from ssl_zoo.optim import scaled_lr

FOLDER_KINDS = ("image_folder", "multispectral")


def required_data_keys(cfg: ExperimentConfig) -> list[str]:
    """The data keys this config cannot run without (a folder kind's path, the pairs list, the k-NN queries)."""
    data = cfg.data
    keys = []
    if data.kind in FOLDER_KINDS or (data.kind == "synthetic_pairs" and data.pairs_source == "image_folder"):
        keys.append("path")
    if data.kind == "pairs":
        keys.append("pairs_file")
    if data.kind in FOLDER_KINDS and (cfg.eval.final_knn or cfg.eval.knn_every):
        keys.append("eval_path")
    return keys


def check_data_paths(cfg: ExperimentConfig) -> None:
    """A ConfigError naming the first required data key that is still empty."""
    for key in required_data_keys(cfg):
        if not getattr(cfg.data, key):
            hint = " (the labelled folder k-NN queries, or eval.final_knn=false eval.knn_every=0)" \
                if key == "eval_path" else ""
            raise ConfigError(f"data.{key} is empty: data.kind={cfg.data.kind} needs it; "
                              f"pass data.{key}=/your/path{hint}")


def _path(value: str) -> str:
    return value + ("" if Path(value).exists() else "  (not found on this machine)")


def summary(cfg: ExperimentConfig, world_size: int) -> list[str]:
    """The lines shown before queueing: ranks, global batch, peak lr and the data it reads."""
    train, optim = cfg.train, cfg.optim
    global_batch = train.batch_size * world_size
    fixed = "train.global_batch" if train.global_batch else "train.batch_size x ranks"
    lines = [f"world size {world_size}, global batch {global_batch} ({train.batch_size} per rank; {fixed}), "
             f"peak lr {scaled_lr(optim, global_batch):.4g} (base {optim.base_lr:g}, {optim.lr_scaling} "
             f"scaling on {global_batch}/{optim.lr_reference_batch})",
             f"data: {cfg.data.kind}"]
    for key in ("path", "eval_path", "pairs_file"):
        value = getattr(cfg.data, key)
        if value:
            lines.append(f"  data.{key}: {_path(value)}")
    return lines
