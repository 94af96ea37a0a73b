"""Collapse diagnostics, computed from what a training step already returned, on log steps only.

A method's training_step may return, besides "loss", detached tensors of the step:
  "embeddings"        (B, D) the representation the loss acts on (a projector / head output, or the
                      encoder's pooled patch tokens for reconstruction methods);
  "teacher_probs"     (B, K) a self-distillation teacher's output distribution (after centring and
                      sharpening), and
  "student_log_probs" (B, K) the student's log-probabilities for the same images (another view of
                      them: a pair the loss scores).
Every method builds them from tensors its step computed anyway (no extra forward): joint-embedding
methods return a projector / head output for one view, reconstruction methods `token_embeddings`,
self-distillation methods add `distillation_pair`; B is the number of images (one view), on every method.
From them: the std of the L2-normalised embeddings across the batch (lightly's `std_of_l2_normalized`,
SimSiam's collapse measure: 0 when every image maps to one point, ~1/sqrt(D) for an isotropic
Gaussian), their effective rank (Roy & Vetterli 2007: exp of the entropy of the normalised singular
values; 1 when the batch spans one direction), the teacher's mean entropy (0: one prototype for all,
log K: uniform, DINO's two collapse modes), and the mean student-teacher KL divergence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from lightly.utils.debug import std_of_l2_normalized

# embedding std below this fraction of an isotropic Gaussian's 1/sqrt(D): the run is warned of collapse.
# Measured (benchmarks/quality.py, 5 minutes per tiny config): runs that go on to learn pass through early
# lows of 0.044 (SatMAE++, step 50), 0.072 (PixPro, step 25) and 0.076 (MAE, step 50) x 1/sqrt(D), and a
# 0.1 threshold warned them all; a collapsed encoder reads below 1e-6 (tests/test_diagnostics.py).
COLLAPSE_STD_FRACTION = 0.02


def token_embeddings(tokens: torch.Tensor, prefix: int = 0) -> torch.Tensor:
    """A reconstruction method's embeddings: the mean of an encoder's patch tokens (B, prefix + N, D), the
    `prefix` tokens (CLS, registers) left out, detached -> (B, D). The patch tokens, not the CLS, so that
    every reconstruction method is measured alike: CroCo's encoder and GMML's token mean have no CLS."""
    return tokens[:, prefix:].detach().mean(dim=1)


def distillation_pair(teacher_probs: torch.Tensor, student_logits: torch.Tensor,
                      student_temp: float) -> dict[str, torch.Tensor]:
    """A self-distillation step's "teacher_probs" and "student_log_probs": the teacher's target
    distribution for global view 1 (B, K) and the student's log-softmax at its temperature for global
    view 2 of the same images (B, K), one of the cross-view pairs the loss scores, detached."""
    return {"teacher_probs": teacher_probs.detach(),
            "student_log_probs": F.log_softmax(student_logits.detach().float() / student_temp, dim=-1)}


def effective_rank(z: torch.Tensor) -> torch.Tensor:
    """exp(H(p)) with p the singular values of the centred (B, D) batch normalised to sum 1."""
    s = torch.linalg.svdvals(z.float() - z.float().mean(dim=0))
    p = s / s.sum().clamp_min(1e-12)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


def teacher_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the rows of a (B, K) distribution."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1).mean()


def student_teacher_kl(teacher_probs: torch.Tensor, student_log_probs: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(teacher || student) in nats."""
    return torch.nn.functional.kl_div(student_log_probs.float(), teacher_probs.float(), reduction="batchmean")


def collapse_diagnostics(outputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """The diagnostics the step's outputs allow, as floats for the metrics log (host syncs: log steps only)."""
    values: dict[str, torch.Tensor] = {}
    z = outputs.get("embeddings")
    if z is not None and z.ndim == 2 and z.shape[0] > 1:
        values["embedding_std"] = std_of_l2_normalized(z.detach().float())
        values["effective_rank"] = effective_rank(z.detach())
    if "teacher_probs" in outputs:
        values["teacher_entropy"] = teacher_entropy(outputs["teacher_probs"].detach().float())
        if "student_log_probs" in outputs:
            values["student_teacher_kl"] = student_teacher_kl(outputs["teacher_probs"].detach(),
                                                              outputs["student_log_probs"].detach())
    return {f"collapse/{k}": float(v) for k, v in values.items()}


def collapse_warning(outputs: dict[str, torch.Tensor], diagnostics: dict[str, float], step: int) -> str | None:
    """A one-line warning naming the step when the embedding std says the embeddings collapsed."""
    std = diagnostics.get("collapse/embedding_std")
    if std is None:
        return None
    isotropic = 1 / math.sqrt(outputs["embeddings"].shape[1])
    if std >= COLLAPSE_STD_FRACTION * isotropic:
        return None
    return (f"step {step}: the embeddings look collapsed: the std of the L2-normalised embeddings is {std:.2e}, "
            f"below {COLLAPSE_STD_FRACTION:g} x 1/sqrt({outputs['embeddings'].shape[1]}) (an isotropic Gaussian's "
            f"{isotropic:.3g}); a falling loss does not mean learning here")
