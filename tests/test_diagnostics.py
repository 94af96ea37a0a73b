"""Collapse diagnostics against hand-computed values, what the methods feed them, and both in real runs:
logged to metrics.jsonl and tensorboard, and the warning that names the step."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ssl_zoo.diagnostics import (collapse_diagnostics, collapse_warning, distillation_pair, effective_rank,
                                 teacher_entropy, token_embeddings)
from ssl_zoo.experiment import load_config
from ssl_zoo.schedules import Progress
from ssl_zoo.trainer import Trainer
from tests.conftest import random_images, tiny_config, tiny_method


def test_embedding_std_is_zero_for_a_collapsed_batch_and_near_isotropic_for_noise():
    collapsed = torch.ones(64, 32) * torch.randn(1, 32)
    noise = torch.randn(4096, 32, generator=torch.Generator().manual_seed(0))
    assert collapse_diagnostics({"embeddings": collapsed})["collapse/embedding_std"] == pytest.approx(0, abs=1e-6)
    assert collapse_diagnostics({"embeddings": noise})["collapse/embedding_std"] == pytest.approx(1 / math.sqrt(32),
                                                                                                  rel=0.02)


def test_effective_rank_counts_equal_directions():
    basis = torch.eye(8)[:3] * torch.tensor([[2.0], [2.0], [2.0]])  # three orthogonal directions, equal energy
    z = torch.cat([basis, -basis])  # centred: singular values 2*sqrt(2) on three directions
    assert float(effective_rank(z)) == pytest.approx(3.0, rel=1e-5)
    line = torch.arange(10.0)[:, None] * torch.randn(1, 16)
    assert float(effective_rank(line)) == pytest.approx(1.0, rel=1e-4)


def test_teacher_entropy_and_kl_by_hand():
    uniform = torch.full((4, 8), 1 / 8)
    one_hot = torch.nn.functional.one_hot(torch.tensor([1, 2, 3, 4]), 8).float()
    assert float(teacher_entropy(uniform)) == pytest.approx(math.log(8))
    assert float(teacher_entropy(one_hot)) == pytest.approx(0, abs=1e-6)
    student = torch.log_softmax(torch.tensor([[2.0, 0.0]]), dim=-1)
    teacher = torch.tensor([[0.5, 0.5]])
    expected = sum(0.5 * (math.log(0.5) - float(student[0, i])) for i in range(2))
    out = collapse_diagnostics({"teacher_probs": teacher, "student_log_probs": student})
    assert out["collapse/student_teacher_kl"] == pytest.approx(expected, rel=1e-5)
    assert out["collapse/teacher_entropy"] == pytest.approx(math.log(2))


def test_the_collapse_warning_names_the_step_only_when_collapsed():
    collapsed = {"embeddings": torch.ones(16, 64) + 1e-6 * torch.randn(16, 64)}
    healthy = {"embeddings": torch.randn(16, 64)}
    message = collapse_warning(collapsed, collapse_diagnostics(collapsed), step=120)
    assert message.startswith("step 120: the embeddings look collapsed") and "1/sqrt(64)" in message
    assert collapse_warning(healthy, collapse_diagnostics(healthy), step=120) is None
    assert collapse_warning({}, {}, step=1) is None


def test_an_early_narrow_spread_is_not_warned_about():
    """Embeddings sharing a large common direction, spread ~0.04 x 1/sqrt(D): where MAE, PixPro and SatMAE++
    pass early in runs that then learn (diagnostics.COLLAPSE_STD_FRACTION), not a collapse."""
    narrow = {"embeddings": torch.ones(64, 64) + 0.04 * torch.randn(64, 64, generator=torch.Generator().manual_seed(0))}
    diagnostics = collapse_diagnostics(narrow)
    assert 0.03 < diagnostics["collapse/embedding_std"] * math.sqrt(64) < 0.06
    assert collapse_warning(narrow, diagnostics, step=50) is None


def test_the_helpers_that_build_the_outputs_wait_for_nothing():
    from tests.host_syncs import HostSyncCounter

    with HostSyncCounter() as syncs:
        token_embeddings(torch.randn(4, 1 + 9, 16), prefix=1)
        distillation_pair(torch.softmax(torch.randn(4, 8), -1), torch.randn(4, 8), 0.1)
    assert syncs.total == 0, syncs.calls


def test_token_embeddings_average_the_patch_tokens_without_the_prefix():
    tokens = torch.randn(2, 1 + 4, 3, requires_grad=True)
    z = token_embeddings(tokens, prefix=1)
    assert torch.equal(z, tokens[:, 1:].mean(1).detach()) and not z.requires_grad


# ----------------------------------------------------------------------------- from the methods' steps

STEP = Progress(0, 10, 0, 10)


def test_dinos_pair_is_the_losss_target_for_view_1_and_the_students_prediction_for_view_2(tmp_path, one_thread):
    method = tiny_method("dino", tmp_path).eval()  # no drop-path: the forwards below repeat the step's
    torch.manual_seed(0)
    views = method.views(random_images(8))
    temp = method.cfg.teacher_temp(STEP)
    with torch.no_grad():
        first = method.training_step(views, STEP)
        teacher = method.teacher([views.crops[0]])[0]
        student = method.student([views.crops[1]])[0]
        centre = method.criterion.center[0].clone()  # moved by the first step's loss
        second = method.training_step(views, STEP)
    assert centre.abs().max() > 0
    assert torch.allclose(first["teacher_probs"], torch.softmax(teacher / temp, -1), atol=1e-5)  # centre 0 at start
    assert torch.allclose(second["teacher_probs"], torch.softmax((teacher - centre) / temp, -1), atol=1e-5)
    expected = torch.log_softmax(student / method.cfg.student_temp, -1)
    assert torch.allclose(first["student_log_probs"], expected, atol=1e-4)


# ----------------------------------------------------------------------------- in a run


def logged(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["dino", "mae"])
def test_a_run_logs_the_diagnostics_to_metrics_and_tensorboard_on_log_steps(method, tmp_path, capsys, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = tiny_config(method, tmp_path, train={"max_steps": 4, "log_every": 2, "batch_size": 16})
    trainer = Trainer(load_config(raw), progress_bar=False)
    result = trainer.fit()
    distills = method == "dino"
    keys = ["collapse/embedding_std", "collapse/effective_rank"]
    keys += ["collapse/teacher_entropy", "collapse/student_teacher_kl"] if distills else []
    rows = [r for r in logged(result.run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(set(keys) <= set(r) for r in rows)
    assert not any("collapse/teacher_entropy" in r for r in rows) or distills
    width = trainer.method.cfg.out_dim if distills else trainer.method.encoder.vit.embed_dim
    for r in rows:
        assert 0 <= r["collapse/embedding_std"] <= 1
        assert 1 <= r["collapse/effective_rank"] <= min(width, 16)  # a centred batch of 16 spans at most 15
        if distills:
            assert 0 <= r["collapse/teacher_entropy"] <= math.log(trainer.method.cfg.out_dim)
            assert r["collapse/student_teacher_kl"] >= 0
    acc = EventAccumulator(str(result.tb_dir)).Reload()
    for key in keys:
        events = acc.Scalars(key)
        assert [e.step for e in events] == [2, 4]
        assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6)  # float32 in tensorboard
    assert "look collapsed" not in capsys.readouterr().out  # a learning run is not warned about


def test_a_collapsed_encoder_is_warned_about_naming_the_step(tmp_path, capsys, one_thread):
    """A real collapse: MAE's final LayerNorm scale zeroed, so every token of every image is the norm's bias,
    and lr 0 keeps it there; the trainer prints the warning on each log step."""
    raw = tiny_config("mae", tmp_path, train={"max_steps": 4, "log_every": 2, "batch_size": 16},
                      optim={"base_lr": 0.0})
    trainer = Trainer(load_config(raw), progress_bar=False)
    with torch.no_grad():
        trainer.method.encoder.vit.norm.weight.zero_()
    result = trainer.fit()
    lines = [line for line in capsys.readouterr().out.splitlines() if "look collapsed" in line]
    assert [line.split(":")[0] for line in lines] == ["step 2", "step 4"], lines
    assert "1/sqrt(192)" in lines[0]
    assert all(r["collapse/embedding_std"] < 1e-6 for r in logged(result.run_dir) if "loss" in r)
