"""`train.time_budget_min`: a run that ends inside a wall-clock budget on any machine.

Why: a fixed step count cannot fit machines 3-5x apart in speed (the default job took 12 minutes
on one 2-core EPYC and 6 hours on another). The trainer instead measures its own step rate and sets
`total_steps` so that training, the periodic and final k-NN evaluations end inside the budget:
a first estimate over a few steps after warm-up, then the count is fixed from a longer window
(REPLAN_SHARE of the first estimate) that includes what the first steps miss (checkpoints,
logging, data loading once the prefetched batches are used up: the 5-minute survey's MAE and Selfie
ran 6.1 and 6.5 minutes on the first estimate alone). Every schedule depends on `total_steps`, so
after the count is fixed the run is an ordinary fixed-length run: it is recorded in the checkpoint
and a resumed run keeps it. If the steps still slow down later, the trainer stops when the time
left only covers the final k-NN (`out_of_time`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SKIP_STEPS = 3  # first steps allocate memory and warm caches: not representative
MEASURE_STEPS = 10  # steps timed after those
SAFETY = 0.05  # share of the remaining time left unplanned (checkpoints, jitter)
REPLAN_SHARE = 0.1  # the second, fixing measurement spans this share of the first estimate's steps


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
    """Two measurements of this process's seconds per step (a resumed run times its own).

    First: steps SKIP_STEPS .. SKIP_STEPS + MEASURE_STEPS, optimizer steps only. Second, once
    `extend(to_step, now)` is called: from there to `to_step`, wall time less the `exclude`d seconds
    (periodic evaluations, which the plan counts separately), so checkpoints, logging and data
    stalls are in it.
    """

    def __init__(self, first_step: int) -> None:
        self.start_step = first_step + SKIP_STEPS
        self.end_step = self.start_step + MEASURE_STEPS
        self._t0: float | None = None
        self._excluded = 0.0

    def extend(self, to_step: int, now: float) -> None:
        """Right after a measurement: measure again from here (`now`) to `to_step`."""
        self.start_step, self.end_step = self.end_step, max(to_step, self.end_step + MEASURE_STEPS)
        self._t0, self._excluded = now, 0.0

    def exclude(self, seconds: float) -> None:
        """Seconds inside the current window that are not per-step cost."""
        if self._t0 is not None:
            self._excluded += seconds

    def observe(self, step: int, now: float) -> float | None:
        """Call after each optimizer step with the steps done; the seconds per step at a window's end."""
        if step == self.start_step:
            self._t0, self._excluded = now, 0.0
        if step == self.end_step and self._t0 is not None:
            per_step = (now - self._t0 - self._excluded) / (self.end_step - self.start_step)
            self._t0 = None
            return per_step
        return None


def second_window_end(step: int, first_total: int) -> int:
    """Where the fixing measurement ends: REPLAN_SHARE of the first estimate's remaining steps."""
    return step + max(MEASURE_STEPS, math.ceil(REPLAN_SHARE * (first_total - step)))


def out_of_time(budget_s: float, elapsed_s: float, final_eval_s: float) -> bool:
    """True when the time left covers no more than the final evaluation: stop training now."""
    return elapsed_s + final_eval_s >= budget_s
