"""Token masking shared by masked-image methods."""

from __future__ import annotations

import torch
from lightly.models import utils as lu


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


def pixel_targets(images: torch.Tensor, patch_size: int, norm_pix: bool) -> torch.Tensor:
    """Per-patch pixel targets (B, N, p*p*C), each patch normalised to zero mean, unit variance
    when `norm_pix` (MAE's and CroCo's norm-pix loss)."""
    patches = lu.patchify(images, patch_size)
    return lu.normalize_mean_var(patches, dim=-1) if norm_pix else patches


def masked_patch_mse(pred: torch.Tensor, target: torch.Tensor, idx_mask: torch.Tensor) -> torch.Tensor:
    """Per-patch MSE averaged over the masked patches only (every image masks the same count)."""
    return (lu.get_at_index(pred, idx_mask) - lu.get_at_index(target, idx_mask)).pow(2).mean()


@torch.no_grad()
def masked_and_filled(images: torch.Tensor, pred: torch.Tensor, idx_mask: torch.Tensor, patch_size: int,
                      norm_pix: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """For tensorboard: the images with masked patches blanked, and with them filled by the prediction
    (de-normalised with each true patch's own statistics when the targets were norm-pix)."""
    patches = lu.patchify(images, patch_size)
    if norm_pix:
        pred = pred * (patches.var(-1, keepdim=True) + 1e-6).sqrt() + patches.mean(-1, keepdim=True)
    hidden = lu.set_at_index(patches, idx_mask, torch.zeros_like(lu.get_at_index(patches, idx_mask)))
    filled = lu.set_at_index(patches, idx_mask, lu.get_at_index(pred.to(patches.dtype), idx_mask))
    return lu.unpatchify(hidden, patch_size), lu.unpatchify(filled, patch_size)
