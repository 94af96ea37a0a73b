"""Run metrics on rank 0: one JSON object per logged step, and tensorboard scalars/images."""

from __future__ import annotations

import json
from pathlib import Path

import torch


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.jsonl = run_dir / "metrics.jsonl"
        self.tb_dir = run_dir / "tb"
        self.writer = None
        if not enabled:
            return
        if resume_step and self.jsonl.exists():  # drop steps the resumed run will redo
            kept = [line for line in self.jsonl.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.jsonl.write_text("".join(line + "\n" for line in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.tb_dir), purge_step=resume_step or None)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.jsonl.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
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
