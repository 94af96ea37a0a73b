"""Collapse diagnostics against hand-computed values, and the warning that names the step."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_zoo.diagnostics import collapse_diagnostics, collapse_warning, effective_rank, teacher_entropy


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
