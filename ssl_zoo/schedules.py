"""Schedules as pure functions of training progress, so a resumed run sees the same values."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """Where training stands; every schedule reads only this."""

    step: int  # optimizer steps done before the current one
    total_steps: int
    epoch: int
    steps_per_epoch: int

    @property
    def fraction(self) -> float:
        return min(self.step / max(self.total_steps, 1), 1.0)

    @property
    def epoch_float(self) -> float:
        return self.step / max(self.steps_per_epoch, 1)


def cosine(start: float, end: float, fraction: float) -> float:
    """Half-cosine from `start` (fraction 0) to `end` (fraction 1)."""
    fraction = min(max(fraction, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * fraction))


@dataclass
class Cosine:
    """A value following a half-cosine from start to end over all steps (e.g. EMA momentum)."""

    start: float
    end: float

    def __call__(self, progress: Progress) -> float:
        return cosine(self.start, self.end, progress.fraction)


@dataclass
class Warmup:
    """Linear from start to end over `epochs` epochs, then constant (e.g. DINO's teacher temperature)."""

    start: float
    end: float
    epochs: float

    def __call__(self, progress: Progress) -> float:
        if self.epochs <= 0:
            return self.end
        t = min(progress.epoch_float / self.epochs, 1.0)
        return self.start + (self.end - self.start) * t


def warmup_cosine(peak: float, floor: float, warmup_steps: int, total_steps: int, step: int) -> float:
    """Learning rate: linear warm-up from 0 to peak, then half-cosine down to floor."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    return cosine(peak, floor, (step - warmup_steps) / span)
