"""`train.time_budget_min`: a run that ends inside a wall-clock budget on any machine.

Why: a fixed step count cannot fit machines 3-5x apart in speed (the default job took 12 minutes
on one 2-core EPYC and 6 hours on another). The trainer instead measures its own step rate over a
few steps after warm-up, then fixes `total_steps` once so that training, the periodic and final
k-NN evaluations end inside the budget. Every schedule depends on `total_steps` (and the step), so
after the count is fixed the run is an ordinary fixed-length run: it is recorded in the checkpoint
and a resumed run keeps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SKIP_STEPS = 3  # first steps allocate memory and warm caches: not representative
MEASURE_STEPS = 10  # steps timed after those
SAFETY = 0.05  # share of the remaining time left unplanned (checkpoints, jitter)


@dataclass(frozen=True)
class EvalCost:
    """Seconds the evaluations will cost: the final k-NN, and one periodic k-NN (0 when off)."""

    final_s: float
    periodic_s: float
    periodic_every: int  # steps between periodic evaluations (0: none)


def steps_within_budget(budget_s: float, elapsed_s: float, step: int, seconds_per_step: float,
                        cap: int, cost: EvalCost) -> int:
    """The total step count that ends, with the evaluations, inside `budget_s`.

    `elapsed_s` is the time spent so far (set-up included) when `step` steps are done. A periodic
    evaluation every `periodic_every` steps adds its cost per step. Never more than `cap` (the
    config's epochs / max_steps) and never fewer than the steps already done.
    """
    left = (budget_s - elapsed_s - cost.final_s) * (1.0 - SAFETY)
    per_step = seconds_per_step + (cost.periodic_s / cost.periodic_every if cost.periodic_every else 0.0)
    more = math.floor(left / per_step) if left > 0 and per_step > 0 else 0
    return max(step, min(cap, step + more))


class StepTimer:
    """Times steps SKIP_STEPS .. SKIP_STEPS + MEASURE_STEPS of this process (a resumed run times its own)."""

    def __init__(self, first_step: int) -> None:
        self.start_step = first_step + SKIP_STEPS
        self.end_step = self.start_step + MEASURE_STEPS
        self._t0: float | None = None

    def observe(self, step: int, now: float) -> float | None:
        """Call after each optimizer step with the steps done; the seconds per step once measured."""
        if step == self.start_step:
            self._t0 = now
        if step == self.end_step and self._t0 is not None:
            return (now - self._t0) / MEASURE_STEPS
        return None
