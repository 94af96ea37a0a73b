"""Collapse diagnostics, computed from what a training step already returned, on log steps only.

A method's training_step may return, besides "loss", detached tensors of the step:
  "embeddings"        (B, D) the representation the loss acts on (projector / head input, or the
                      backbone's pooled features for reconstruction methods);
  "teacher_probs"     (B, K) a self-distillation teacher's output distribution (after centring and
                      sharpening), and
  "student_log_probs" (B, K) the student's log-probabilities for the same images.
From them: the std of the L2-normalised embeddings across the batch (lightly's `std_of_l2_normalized`,
SimSiam's collapse measure: 0 when every image maps to one point, ~1/sqrt(D) for an isotropic
Gaussian), their effective rank (Roy & Vetterli 2007: exp of the entropy of the normalised singular
values; 1 when the batch spans one direction), the teacher's mean entropy (0: one prototype for all,
log K: uniform, DINO's two collapse modes), and the mean student-teacher KL divergence.
"""

from __future__ import annotations

import math

import torch
from lightly.utils.debug import std_of_l2_normalized

# embedding std below this fraction of an isotropic Gaussian's 1/sqrt(D): the run is warned of collapse
COLLAPSE_STD_FRACTION = 0.1


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
