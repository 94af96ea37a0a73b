"""Run metrics on rank 0: one JSON object per logged step, and tensorboard scalars/images.

metrics.jsonl stays readable by any JSON parser whatever happens to the run: each record is one
complete line written by one `write` call (a kill cuts at most the last line, which the next start
drops), non-finite values are written as null, and a resumed run first drops the steps it will redo.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path

import torch

from ssl_zoo import distributed as dist_utils

from ssl_zoo.checkpoint import atomic_write_text


def json_line(record: dict) -> str:
    """`record` as one line of strict JSON (NaN/inf become null: bare NaN is not JSON)."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


def kept_lines(text: str, resume_step: int, name: str) -> list[str]:
    """The lines of a metrics log a run resumed at `resume_step` keeps: records up to that step.

    An unparsable last line (a write cut short by a kill) is dropped with a warning; other
    unparsable lines are not ours to judge and stay.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    kept = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warnings.warn(f"{name}: dropped its unparsable last line (a write cut short): {line[:80]!r}")
            else:
                kept.append(line)
            continue
        if not isinstance(record, dict) or record.get("step", 0) <= resume_step:
            kept.append(line)
    return kept


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics log for readers (`ssl-zoo jobs`, hub export): a line being written or cut
    short by a kill is passed over, not an error."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class LossMeter:
    """Mean loss and images per second between log steps; the loss stays on the device until read."""

    def __init__(self, device: torch.device, step: int) -> None:
        self.device = device
        self._reset(step)

    def _reset(self, step: int) -> None:
        self.total, self.count = torch.zeros((), device=self.device), 0
        self.since, self.since_step = time.perf_counter(), step

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss
        self.count += 1

    def read(self, step: int, global_batch: int) -> tuple[float, float]:
        """(mean loss over all ranks, images per second); starts a new interval."""
        mean = dist_utils.all_reduce_mean(self.total / max(self.count, 1)).item()
        rate = (step - self.since_step) * global_batch / max(time.perf_counter() - self.since, 1e-9)
        self._reset(step)
        return mean, rate


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.jsonl = run_dir / "metrics.jsonl"
        self.tb_dir = run_dir / "tb"
        self.writer = None
        if not enabled:
            return
        if self.jsonl.exists():  # drop the steps this run will redo (all of them when it starts over)
            text = self.jsonl.read_text(errors="replace")
            kept = "".join(line + "\n" for line in kept_lines(text, resume_step, str(self.jsonl)))
            if kept != text:
                atomic_write_text(kept, self.jsonl)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.tb_dir), purge_step=resume_step or None)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        line = json_line({"step": step, **values}).encode()
        fd = os.open(self.jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.write(fd, line) != len(line):  # one call: a kill never leaves a record half appended
                raise OSError(f"short write to {self.jsonl} (disk full?)")
        finally:
            os.close(fd)
        for key, value in values.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                self.writer.add_scalar(key, value, step)

    def images(self, step: int, grids: dict[str, torch.Tensor]) -> None:
        if self.enabled:
            for key, grid in grids.items():
                self.writer.add_image(key, grid, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
