"""train.time_budget_min: the run measures its step rate, then fixes a step count that ends in time."""

from __future__ import annotations

import os
import signal
import time

import pytest
import yaml

from ssl_zoo.budget import (MEASURE_STEPS, SAFETY, SKIP_STEPS, EvalCost, StepTimer, out_of_time, second_window_end,
                            steps_within_budget)
from ssl_zoo.checkpoint import load_checkpoint
from ssl_zoo.experiment import load_config
from ssl_zoo.trainer import Trainer
from tests.conftest import tiny_config

NO_EVAL = EvalCost(0.0, 0.0, 0)
# how far past its 15 s a test run may end: the other pytest worker shares the 2 cores, so the step and k-NN
# times measured early need not hold (1 s was exceeded by 0.3 s on an AVX2-only 2-core machine under -n 2)
OVERRUN_S = 2.0


def test_steps_within_budget_by_hand():
    # 100 s budget, 10 s spent at step 13, final k-NN 20 s: (100 - 10 - 20) * 0.95 = 66.5 s at 0.5 s/step -> 133 more
    assert steps_within_budget(100, 10, 13, 0.5, 10_000, EvalCost(20.0, 0.0, 0)) == 13 + 133
    # a k-NN of 4 s every 8 steps adds 0.5 s per step: 66.5 / 1.0 -> 66 more
    assert steps_within_budget(100, 10, 13, 0.5, 10_000, EvalCost(20.0, 4.0, 8)) == 13 + 66
    assert (100 - 10) * (1 - SAFETY) == pytest.approx(85.5)


def test_steps_within_budget_never_exceeds_the_config_nor_goes_back():
    assert steps_within_budget(1e6, 0, 13, 0.1, 500, NO_EVAL) == 500  # a fast machine runs the config's length
    assert steps_within_budget(10, 30, 13, 0.1, 500, NO_EVAL) == 13  # over budget already: stop now
    assert steps_within_budget(10, 5, 13, 0.1, 500, EvalCost(60.0, 0.0, 0)) == 13  # the final k-NN alone won't fit


def test_step_timer_measures_after_the_skipped_steps():
    timer = StepTimer(first_step=4)
    seen = [timer.observe(step, now=float(step) * 2.0) for step in range(5, 4 + SKIP_STEPS + MEASURE_STEPS + 2)]
    measured = [s for s in seen if s is not None]
    assert measured == [2.0] and seen.index(2.0) == SKIP_STEPS + MEASURE_STEPS - 1


def test_the_second_window_measures_wall_time_less_the_evaluations():
    timer = StepTimer(first_step=0)
    end = SKIP_STEPS + MEASURE_STEPS
    assert [timer.observe(s, now=s * 1.0) for s in range(1, end + 1)][-1] == 1.0
    timer.extend(second_window_end(end, first_total=end + 300), now=end * 1.0)
    assert timer.end_step == end + 30  # REPLAN_SHARE of the 300 steps left
    seen = []
    for s in range(end + 1, end + 31):
        if s == end + 5:
            timer.exclude(100.0)  # a periodic k-NN took 100 s inside the window
        seen.append(timer.observe(s, now=end + (s - end) * 3.0 + (100.0 if s >= end + 5 else 0.0)))
    assert [v for v in seen if v is not None] == [3.0] and seen[-1] == 3.0
    assert second_window_end(end, first_total=end + 20) == end + MEASURE_STEPS  # never shorter than the first


def test_out_of_time_keeps_the_final_evaluation():
    assert not out_of_time(100, 79, 20) and out_of_time(100, 80, 20) and out_of_time(100, 101, 0)


def slowed(trainer: Trainer, seconds: float, stop_at: int | None = None, slower_when=None, slower: float = 0.0) -> Trainer:
    """Every training step sleeps `seconds` (a machine of known speed), or `slower` where
    `slower_when(trainer)` holds; optionally SIGUSR1 at a step."""
    original = trainer.method.training_step

    def slow_step(views, progress):
        time.sleep(slower if slower_when is not None and slower_when(trainer) else seconds)
        if progress.step == stop_at:
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(views, progress)

    trainer.method.training_step = slow_step
    return trainer


def budget_config(tmp_path, name: str, minutes: float = 0.25) -> dict:
    return tiny_config("simclrv2", tmp_path, train={"name": name, "max_steps": 1000, "time_budget_min": minutes,
                                                    "batch_size": 8, "log_every": 5, "ckpt_every": 10_000},
                       eval={"final_knn": True})


def test_slow_steps_end_inside_the_budget_and_the_count_is_recorded(tmp_path, one_thread):
    start = time.perf_counter()  # the budget counts from the Trainer's construction
    trainer = slowed(Trainer(load_config(budget_config(tmp_path, "slow")), progress_bar=False), 0.3)
    result = trainer.fit()
    wall = time.perf_counter() - start
    assert result.status == "completed" and result.knn_top1 is not None
    assert 0.6 * 15 < wall <= 15 + OVERRUN_S, wall  # used the 15 s, did not overrun them
    assert SKIP_STEPS + MEASURE_STEPS < result.step < 1000
    as_run = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert as_run["train"]["max_steps"] == result.step and as_run["train"]["time_budget_min"] == 0.25
    state = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert state["total_steps"] == result.step and state["total_steps_fixed"]


def estimated(trainer: Trainer) -> bool:
    return trainer.total_steps < trainer.config_steps


def fixed(trainer: Trainer) -> bool:
    return trainer.total_steps < trainer.config_steps and trainer.steps_fixed


@pytest.mark.parametrize("slower_when, stopped_early", [(estimated, False), (fixed, True)])
def test_steps_that_slow_down_still_end_inside_the_budget(tmp_path, one_thread, capsys, slower_when, stopped_early):
    """4x slower steps after the first estimate: the fixing measurement catches them. 4x slower after the
    count is fixed: the run stops early, the final k-NN still inside the budget."""
    start = time.perf_counter()  # the budget counts from the Trainer's construction
    trainer = slowed(Trainer(load_config(budget_config(tmp_path, "slower")), progress_bar=False), 0.1,
                     slower_when=slower_when, slower=0.4)
    result = trainer.fit()
    wall = time.perf_counter() - start
    assert result.status == "completed" and result.knn_top1 is not None
    assert wall <= 15 + OVERRUN_S, wall
    assert ("steps slowed down; stopping at step" in capsys.readouterr().out) == stopped_early
    assert load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["total_steps"] == result.step


def test_epoch_counted_schedules_keep_their_share_of_a_budgeted_run(tmp_path):
    """A budget that halves the recipe's length halves its lr warm-up (and every epoch-counted schedule,
    through Progress.steps_per_epoch); one that stretches it over a raised max_steps stretches them."""
    raw = budget_config(tmp_path, "shares")
    raw["optim"]["warmup_epochs"] = 0.5
    trainer = Trainer(load_config(raw), progress_bar=False)
    recipe, per_epoch = trainer.recipe_steps, trainer.steps_per_epoch
    assert recipe == round(trainer.cfg.train.epochs * per_epoch) < trainer.config_steps  # max_steps only caps
    for total in (recipe // 2, 4 * recipe):
        trainer._set_total_steps(total)
        assert trainer.schedule_epoch == pytest.approx(per_epoch * total / recipe)
        assert trainer.schedule.warmup_steps == round(0.5 * per_epoch * total / recipe)


def test_a_resumed_run_keeps_the_count_fixed_before(tmp_path, one_thread):
    stop_at = SKIP_STEPS + 2 * MEASURE_STEPS + 2  # after the count is fixed (the second measurement ends at 23)
    # 30 s: on a slow machine (AVX2 only) this tiny step alone takes 0.25 s, and at 0.3 s of sleep more 15 s
    # fitted 21 steps, fewer than stop_at
    config = budget_config(tmp_path, "resumed", minutes=0.5)
    first = slowed(Trainer(load_config(config), progress_bar=False), 0.3, stop_at).fit()
    assert first.status == "interrupted"
    fixed = load_checkpoint(first.run_dir / "checkpoints" / "last.pt")["total_steps"]
    assert first.step < fixed < 1000
    # no sleep now: measuring again would allow all 1000 steps; the run keeps its count (exact resume)
    scaled = load_checkpoint(first.run_dir / "checkpoints" / "last.pt")["schedule_epoch"]
    second = Trainer(load_config(config), progress_bar=False)
    result = second.fit()
    assert result.status == "completed" and result.step == fixed and second.schedule_epoch == scaled


def test_without_a_budget_nothing_is_measured(tmp_path, one_thread):
    raw = tiny_config("simclrv2", tmp_path, train={"max_steps": SKIP_STEPS + MEASURE_STEPS + 1, "batch_size": 8})
    trainer = Trainer(load_config(raw), progress_bar=False)
    trainer._eval_cost = lambda: pytest.fail("no budget: no evaluation timing")
    assert trainer.fit().step == SKIP_STEPS + MEASURE_STEPS + 1
