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
    steps_per_epoch: float  # of the schedules' epochs (under a time budget scaled with the run, see Trainer)

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
    """From start to end over `epochs` epochs, then constant (e.g. DINO's teacher temperature).

    `stairs` 0: linear per step (DINOv2's per-iteration schedule). `stairs` n: n equal stairs of
    `linspace(start, end, n)`, each `epochs / n` long: DINO's official schedule is
    `linspace(0.04, 0.07, 30)[epoch]`, held for each whole epoch and reaching 0.07 at epoch 29, i.e.
    `epochs: 30, stairs: 30`; a scaled-down run keeps 30 stairs over its shorter warm-up."""

    start: float
    end: float
    epochs: float
    stairs: int = 0

    def __call__(self, progress: Progress) -> float:
        if self.epochs <= 0:
            return self.end
        # in steps, not float epochs: a stair starts exactly at its step
        warmup_steps = self.epochs * max(progress.steps_per_epoch, 1)
        if self.stairs <= 0:
            return self.start + (self.end - self.start) * min(progress.step / warmup_steps, 1.0)
        stair = min(math.floor(progress.step * self.stairs / warmup_steps + 1e-9), self.stairs - 1)
        return self.start + (self.end - self.start) * stair / max(self.stairs - 1, 1)


def warmup_cosine(peak: float, floor: float, warmup_steps: int, total_steps: int, step: int) -> float:
    """Learning rate: linear warm-up from 0 to peak, then half-cosine down to floor."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    return cosine(peak, floor, (step - warmup_steps) / span)
