"""The run directory the trainer writes, read in one place by eval, hub and launch.

Layout: RUN = <train.output_dir>/<train.name>, with RUN/checkpoints/last.pt (and step_<n>.pt),
RUN/metrics.jsonl, RUN/eval/ (evaluation results and feature caches). A source may name the run
directory or one checkpoint file inside it; every reader resolves it the same way here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ssl_zoo.checkpoint import load_checkpoint
from ssl_zoo.config import ExperimentConfig
from ssl_zoo.experiment import load_config
from ssl_zoo.errors import CheckpointError
from ssl_zoo.methods.base import Method, build_method

EVAL_DIR = "eval"


def run_dir_for(cfg: ExperimentConfig) -> Path:
    """Where the run of `cfg` lives."""
    return Path(cfg.train.output_dir) / cfg.train.name


def resolve_checkpoint(source: Path) -> Path:
    """The checkpoint a run directory stands for (its last.pt), or `source` itself when it is a file."""
    if source.is_dir():
        for candidate in (source / "checkpoints" / "last.pt", source / "last.pt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"no checkpoints/last.pt under run directory {source}")
    if not source.is_file():
        raise CheckpointError(f"no such run directory or checkpoint: {source}")
    return source


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to (RUN/checkpoints/x.pt, or a loose RUN/x.pt)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


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
