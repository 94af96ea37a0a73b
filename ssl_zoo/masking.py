"""Token masking shared by masked-image methods."""

from __future__ import annotations

import torch


def random_patch_mask(batch: int, num_patches: int, mask_ratio: float,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random masking as in MAE: argsort of uniform noise, keep int(N * (1 - r)).

    Returns (idx_keep (B, K), idx_mask (B, N - K)) as patch indices (no prefix-token offset).
    """
    return random_patch_split(batch, num_patches, num_patches - int(num_patches * (1 - mask_ratio)), device)


def random_patch_split(batch: int, num_patches: int, num_masked: int,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random split into visible and masked patches by count (Selfie masks a fixed number).

    Argsort of uniform noise: idx_keep (B, N - num_masked), idx_mask (B, num_masked), patch indices.
    """
    keep = num_patches - num_masked
    noise = torch.rand(batch, num_patches, device=device)
    order = torch.argsort(noise, dim=1)
    return order[:, :keep], order[:, keep:]


def mask_from_indices(idx_mask: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(B, M) masked indices -> (B, N) float mask, 1 where removed."""
    mask = torch.zeros(idx_mask.shape[0], num_patches, device=idx_mask.device)
    return mask.scatter_(1, idx_mask, 1.0)
