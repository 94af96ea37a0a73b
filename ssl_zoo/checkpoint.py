"""Atomic checkpoints and a loader that falls back past a damaged file.

A checkpoint is written to a temporary file in the same folder and renamed into place, so a
kill during the write never leaves a half-written `last.pt`. Files are read with
`torch.load(weights_only=True)`: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one from another method/config."""


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write through a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: Path) -> None:
    _atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(obj: Any, path: Path, sort_keys: bool = False) -> None:
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n").encode()))


def load_checkpoint(path: Path) -> dict:
    """Load one checkpoint safely; raise CheckpointError naming the file if it is unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, random bytes: all unusable
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{path} is not an ssl-zoo training checkpoint (no 'model'/'step' entries)")
    return state


_STEP = re.compile(r"step_(\d+)\.pt$")


def step_checkpoints(folder: Path) -> list[Path]:
    """step_<n>.pt files, newest first."""
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := _STEP.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


class CheckpointManager:
    """Writes `last.pt` plus `step_<n>.pt` copies, keeps the newest K, finds the newest readable one."""

    def __init__(self, folder: Path, keep_last: int) -> None:
        self.folder = Path(folder)
        self.keep_last = keep_last

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    def save(self, state: dict, step: int) -> Path:
        atomic_save(state, self.last)
        step_path = self.folder / f"step_{step}.pt"
        tmp = step_path.with_name(f".{step_path.name}.tmp{os.getpid()}")
        shutil.copyfile(self.last, tmp)
        os.replace(tmp, step_path)
        for old in step_checkpoints(self.folder)[self.keep_last:]:
            old.unlink(missing_ok=True)
        return self.last

    def load_latest(self) -> tuple[dict, Path] | None:
        """The newest checkpoint that loads; damaged ones are reported and skipped."""
        candidates = ([self.last] if self.last.exists() else []) + step_checkpoints(self.folder)
        for path in candidates:
            try:
                return load_checkpoint(path), path
            except CheckpointError as e:
                warnings.warn(f"{e}; trying an older checkpoint")
        return None
