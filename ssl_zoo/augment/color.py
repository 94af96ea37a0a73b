"""Colour jitter, random grayscale and Gaussian blur on whole batches: drawn per image, no host sync.

Why not kornia's modules, which the views used before: with p < 1 they pick the images to change with
a boolean mask and ask it `to_apply.any()`, ColorJitter draws one order per batch and reads it with
`.tolist()`, and `gaussian_blur2d` checks `sigma > 0` on the host: host syncs on every view of every
step, each one a stall of a GPU's queue. Here every random draw is a device tensor and every "apply or
not" a `torch.where`. The arithmetic is torchvision's (what the papers' per-image pipelines ran):
ColorJitter's brightness/contrast/saturation blends and its hue shift in HSV (kornia's `adjust_hue`,
which has no sync), each image with its own random order of the four, as a per-sample transform has;
Grayscale's ITU-R 601-2 luma; GaussianBlur's sampled sigma, normalised kernel and reflect padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.enhance import adjust_hue

LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1]; factor (B,)."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp(0, 1)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), factor)


def hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Shift the hue by `factor` turns, in [-0.5, 0.5]."""
    return adjust_hue(x, factor * 2 * math.pi).clamp(0, 1)


JITTER_OPS = (brightness, contrast, saturation, hue)


def jitter_in_order(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor,
                    active: tuple[bool, bool, bool, bool] = (True, True, True, True)) -> torch.Tensor:
    """Apply the four jitter ops to each image in its own order. factors: (B, 4) (brightness, contrast,
    saturation factors; hue shift); order: (B, 4) a permutation of 0..3 per image; `active` leaves out
    ops whose strength is 0 (identity) without computing them. Each slot computes every active op on
    the whole batch and keeps, per image, the one its order names (no gather of a data-dependent size)."""
    for slot in range(4):
        out = x
        for index, (op, on) in enumerate(zip(JITTER_OPS, active)):
            if on:
                out = torch.where((order[:, slot] == index).view(-1, 1, 1, 1), op(x, factors[:, index]), out)
        x = out
    return x


def jitter_factors(batch: int, strength: tuple[float, float, float, float], device: torch.device) -> torch.Tensor:
    """(B, 4) factors as torchvision's ColorJitter draws them: uniform in [max(0, 1 - s), 1 + s] for
    brightness, contrast and saturation, in [-h, h] for hue."""
    u = torch.rand(batch, 4, device=device)
    bounds = [(max(0.0, 1 - s), 1 + s) for s in strength[:3]] + [(-strength[3], strength[3])]
    return torch.stack([lo + (hi - lo) * u[:, i] for i, (lo, hi) in enumerate(bounds)], dim=1)


def random_color_jitter(x: torch.Tensor, strength: tuple[float, float, float, float], p: float) -> torch.Tensor:
    """torchvision's RandomApply([ColorJitter(*strength)], p) per image on (B, 3, H, W) in [0, 1]."""
    batch = x.shape[0]
    factors = jitter_factors(batch, strength, x.device)
    order = torch.rand(batch, 4, device=x.device).argsort(dim=1)  # a uniform random permutation per image
    jittered = jitter_in_order(x, factors, order, tuple(s > 0 for s in strength))
    return torch.where(_chosen(batch, p, x.device), jittered, x)


def random_grayscale(x: torch.Tensor, p: float) -> torch.Tensor:
    """torchvision's RandomGrayscale(p) per image: the luma in all three channels."""
    return torch.where(_chosen(x.shape[0], p, x.device), grayscale(x).expand_as(x), x)


def separable_gaussian(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Blur each image of (B, C, H, W) with its own Gaussian, sigma (B, 2) for x and y, taps -radius..radius
    (torchvision's `_get_gaussian_kernel1d`), normalised, reflect padding; one grouped convolution per axis
    (used by the random blur here and by crop_resize's antialiasing prefilter)."""
    batch, channels, height, width = x.shape
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernels = torch.exp(-taps.square() / (2 * sigma.to(x.dtype).clamp_min(1e-3).square()[..., None]))
    kernels = (kernels / kernels.sum(-1, keepdim=True)).repeat_interleave(channels, 0)  # (B*C, 2, k)
    k = 2 * radius + 1
    flat = F.pad(x.reshape(1, batch * channels, height, width), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernels[:, 0].reshape(-1, 1, 1, k), groups=batch * channels)
    flat = F.conv2d(flat, kernels[:, 1].reshape(-1, 1, k, 1), groups=batch * channels)
    return flat.view(batch, channels, height, width)


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own sigma (B,) and an odd `kernel`, as torchvision's gaussian_blur."""
    return separable_gaussian(x, sigma[:, None].expand(-1, 2), kernel // 2)


def random_gaussian_blur(x: torch.Tensor, kernel: int, sigma_range: tuple[float, float], p: float) -> torch.Tensor:
    """torchvision's RandomApply([GaussianBlur(kernel, sigma_range)], p) per image, sigma uniform per image."""
    batch = x.shape[0]
    sigma = torch.empty(batch, device=x.device).uniform_(*sigma_range).clamp_min(1e-3)
    return torch.where(_chosen(batch, p, x.device), gaussian_blur(x, kernel, sigma), x)


def _chosen(batch: int, p: float, device: torch.device) -> torch.Tensor:
    """(B, 1, 1, 1) bool: which images an op with probability p applies to."""
    return (torch.rand(batch, device=device) < p).view(-1, 1, 1, 1)
