import math

import pytest

from ssl_zoo.config import OptimConfig
from ssl_zoo.optim import Schedule, scaled_lr
from ssl_zoo.schedules import Cosine, Progress, Warmup, warmup_cosine


def progress(step, total=100, spe=10):
    return Progress(step=step, total_steps=total, epoch=step // spe, steps_per_epoch=spe)


def test_cosine_endpoints_and_midpoint():
    m = Cosine(0.996, 1.0)
    assert m(progress(0)) == pytest.approx(0.996)
    assert m(progress(100)) == pytest.approx(1.0)
    assert m(progress(50)) == pytest.approx(0.998)


def test_warmup_linear_then_constant():
    t = Warmup(0.04, 0.07, epochs=5)
    assert t(progress(0)) == pytest.approx(0.04)
    assert t(progress(25)) == pytest.approx(0.055)
    assert t(progress(50)) == pytest.approx(0.07)
    assert t(progress(90)) == pytest.approx(0.07)


def test_lr_warmup_then_cosine_to_floor():
    lrs = [warmup_cosine(1.0, 0.01, 10, 100, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert warmup_cosine(1.0, 0.01, 10, 100, 100) == pytest.approx(0.01)


def test_lr_scaling_rules():
    cfg = OptimConfig(base_lr=0.3, lr_scaling="linear")
    assert scaled_lr(cfg, 4096) == pytest.approx(4.8)  # SimCLRv2 at batch 4096
    cfg = OptimConfig(base_lr=0.075, lr_scaling="sqrt")
    assert scaled_lr(cfg, 4096) == pytest.approx(0.075 * math.sqrt(16))
    assert scaled_lr(OptimConfig(base_lr=0.1, lr_scaling="none"), 4096) == 0.1


def test_weight_decay_cosine_schedule():
    s = Schedule(OptimConfig(weight_decay=0.04, weight_decay_end=0.4), 1.0, 10, 100)
    assert s.weight_decay(0) == pytest.approx(0.04)
    assert s.weight_decay(100) == pytest.approx(0.4)
    constant = Schedule(OptimConfig(weight_decay=0.05), 1.0, 10, 100)
    assert constant.weight_decay(70) == 0.05


def test_warmup_in_stairs_holds_each_value_for_its_stretch():
    t = Warmup(0.04, 0.07, epochs=3, stairs=3)  # 3 stairs of 1 epoch = 10 steps
    values = [t(progress(s)) for s in range(40)]
    assert values[:10] == [pytest.approx(0.04)] * 10
    assert values[10:20] == [pytest.approx(0.055)] * 10
    assert values[20:] == [pytest.approx(0.07)] * 20
