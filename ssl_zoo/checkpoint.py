"""Atomic checkpoints and a loader that falls back past a damaged file.

A checkpoint is written to a temporary file in the same folder and renamed into place, so a
kill during the write never leaves a half-written `last.pt`; the temporaries a kill leaves behind
are removed at the next start. Files are read with `torch.load(weights_only=True)`: nothing is
unpickled. Damaged checkpoints are never deleted or overwritten without the user's say.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from ssl_zoo.errors import CheckpointError



_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)$")


def _temporary_path(path: Path) -> Path:
    """The hidden temporary `path` is written through: `.<name>.tmp<pid>` (the pid tells whose it is)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write through a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_path(path)
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
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n", path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(*folders: Path) -> str | None:
    """Delete the `.<name>.tmp<pid>` files that killed writers left in `folders` (not recursive).

    Called by the run directory's lock holder before it writes anything, so no trainer is writing
    them; a temporary of a live process on this machine (a launcher's status file) is left alone.
    Returns one line for the user, or None when there was nothing to remove.
    """
    count, size = 0, 0
    for folder in folders:
        for path in sorted(Path(folder).glob(".*.tmp*")):
            match = _TEMPORARY.match(path.name)
            if not match or not path.is_file():
                continue
            pid = int(match.group(1))
            if pid != os.getpid() and _pid_alive(pid):
                continue
            size += path.stat().st_size
            path.unlink(missing_ok=True)
            count += 1
    if not count:
        return None
    where = ", ".join(str(f) for f in folders)
    return f"removed {count} stale temporary file{'s' * (count != 1)} of interrupted saves in {where} " \
           f"({size / 1e6:.1f} MB freed)"


def _reason(e: Exception) -> str:
    """One line of why torch.load failed (its weights-only refusal puts the reason on a later line)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
    why = next((line for line in lines if line.startswith("WeightsUnpickler error")), lines[0])
    return f"{type(e).__name__}: {why}"


def load_checkpoint(path: Path) -> dict:
    """Load one checkpoint safely; raise CheckpointError naming the file (one line) if it is unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, random bytes: all unusable
        raise CheckpointError(f"cannot read checkpoint {path}: {_reason(e)}") from e
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

        def copy_last(f) -> None:
            with self.last.open("rb") as src:
                shutil.copyfileobj(src, f)

        _atomic_write(self.folder / f"step_{step}.pt", copy_last)
        for old in step_checkpoints(self.folder)[self.keep_last:]:
            old.unlink(missing_ok=True)
        return self.last

    def candidates(self) -> list[Path]:
        """Every checkpoint of the run, newest first."""
        return ([self.last] if self.last.exists() else []) + step_checkpoints(self.folder)

    def load_latest(self) -> tuple[dict, Path] | None:
        """The newest checkpoint that loads (damaged newer ones are reported); None when there are none.

        Raises CheckpointError when checkpoints exist but none loads: starting over would overwrite them.
        """
        failures = []
        for path in self.candidates():
            try:
                state = load_checkpoint(path)
            except CheckpointError as e:
                failures.append(str(e))
                continue
            for failure in failures:
                warnings.warn(f"{failure}; using the older {path.name}")
            return state, path
        if failures:
            raise CheckpointError("\n  ".join(
                [f"all {len(failures)} checkpoints in {self.folder} are unreadable, so the run cannot resume; "
                 f"repair or move them, or set train.resume=false to move them aside and start from step 0:",
                 *failures]))
        return None

    def set_aside_unreadable(self) -> str | None:
        """Move the checkpoints that do not load into `unreadable-<time>/` (never deleted: a fresh run
        would overwrite or prune them). Returns one line for the user, or None when all load."""
        bad = []
        for path in self.candidates():
            try:
                load_checkpoint(path)
            except CheckpointError:
                bad.append(path)
        if not bad:
            return None
        aside = Path(tempfile.mkdtemp(prefix=time.strftime("unreadable-%Y%m%d-%H%M%S-"), dir=self.folder))
        for path in bad:
            os.replace(path, aside / path.name)
        return (f"train.resume=false: moved {len(bad)} unreadable checkpoint{'s' * (len(bad) != 1)} "
                f"({', '.join(p.name for p in bad)}) to {aside}; they are kept, not deleted")
