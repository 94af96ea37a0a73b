"""Token masking shared by masked-image methods."""

from __future__ import annotations

import math

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


def enough_rounds(patches: int, min_patches: int) -> int:
    """Rounds of block_masks after which no image still grows (checked over thousands of masks)."""
    return 4 * math.ceil(math.log2(max(patches // max(min_patches, 1), 2))) + 8


def block_masks(n: int, height: int, width: int, masked_fraction: float = 0.5,
                ratio: tuple[float, float] = (0.1, 0.5), min_patches: int = 4, min_aspect: float = 0.3,
                attempts: int = 10, device: torch.device | None = None, rounds: int = 0) -> torch.Tensor:
    """DINOv2's iBOT block masks (dinov2/data/masking.py MaskingGenerator + collate), batched on the device.

    Exactly int(n * masked_fraction) of the n images (random ones) are masked; the k-th of them aims at
    int(N * U(r_k, r_k+1)) patches, r = linspace(ratio, masked + 1). An image grows by rectangles of area
    U(min_patches, still missing) and aspect log-U(min_aspect, 1 / min_aspect) that add 1 .. still missing
    new patches; per rectangle up to `attempts` tries, and it stops when a rectangle finds no place.
    Why not lightly's `random_block_mask`: the same rule as a Python loop per image and per rectangle
    (with a host sync per rectangle on a GPU). Here every image draws its `attempts` candidates at once
    and takes the first valid one; a rejected try leaves the mask as it was, so that is the same
    distribution as trying them one after another. Returns (n, height, width) bool, True = masked.

    No host sync: instead of "while any image still grows" (the host reading the device each round),
    a fixed number of rounds (`rounds`, 0: `enough_rounds`); a finished image draws and ignores its
    candidates. Each round's rectangle covers U(min_patches, missing) of what is still missing, about
    half, so an image finishes in ~log2(target) rounds; tests/test_rad_dino.py checks that the default
    leaves no image growing (the same masks as 4x the rounds).
    """
    total = height * width
    n_masked = int(n * masked_fraction)
    edges = torch.linspace(ratio[0], ratio[1], n_masked + 1, device=device)
    goal = (total * (edges[:-1] + (edges[1:] - edges[:-1]) * torch.rand(n_masked, device=device))).long()
    target = torch.zeros(n, dtype=torch.long, device=device)
    target[torch.randperm(n, device=device)[:n_masked]] = goal
    mask = torch.zeros(n, height, width, dtype=torch.bool, device=device)
    count = torch.zeros(n, dtype=torch.long, device=device)
    rows = torch.arange(height, device=device).view(1, -1, 1)
    cols = torch.arange(width, device=device).view(1, 1, -1)
    log_aspect = (math.log(min_aspect), -math.log(min_aspect))
    active = count < target
    for _ in range(rounds or enough_rounds(total, min_patches)):
        missing = (target - count).float()[:, None]
        area = min_patches + (missing - min_patches) * torch.rand(n, attempts, device=device)
        aspect = torch.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * torch.rand(n, attempts, device=device))
        h = torch.sqrt(area * aspect).round().long()
        w = torch.sqrt(area / aspect).round().long()
        top = (torch.rand(n, attempts, device=device) * (height - h + 1).clamp_min(1)).long()
        left = (torch.rand(n, attempts, device=device) * (width - w + 1).clamp_min(1)).long()
        # patches already masked inside each candidate, from the mask's summed-area table
        table = torch.nn.functional.pad(mask.long().cumsum(1).cumsum(2), (1, 0, 1, 0)).flatten(1)
        bottom, right = (top + h).clamp_max(height), (left + w).clamp_max(width)

        def corner(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return table.gather(1, y * (width + 1) + x)

        inside = corner(bottom, right) - corner(top, right) - corner(bottom, left) + corner(top, left)
        new = h * w - inside
        valid = (w < width) & (h < height) & (new > 0) & (new <= missing) & active[:, None]
        found = valid.any(dim=1)
        pick = valid.int().argmax(dim=1, keepdim=True)
        y0, y1, x0, x1 = (t.gather(1, pick)[..., None] for t in (top, bottom, left, right))
        mask |= (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1) & found[:, None, None]
        count += new.gather(1, pick).squeeze(1) * found
        active &= found & (count < target)
    return mask
