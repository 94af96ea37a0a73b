"""Batched view generation on the training device (kornia), recording what was applied.

Why here and not in the loader: every random, per-view operation runs on whole batches on the
device, so the CPU workers only decode. Crops are sampled here (not inside a kornia module) so
each view knows its box in normalised original-image coordinates and whether it was flipped;
dense methods (PixPro) and tests need exactly that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import kornia.augmentation as K
import torch
from kornia.geometry.transform import crop_and_resize
from torch import nn

from ssl_zoo.config import bounded

NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "fmow_rgb": ((0.4182, 0.4215, 0.3991), (0.2877, 0.2754, 0.2764)),  # SatMAE(++) fMoW-RGB statistics
    "rad_dino": ((0.5307,), (0.2583,)),  # RAD-DINO's chest X-ray statistics (its inference processor)
    "none": None,
}


@dataclass
class ViewSpec:
    """One view's recipe (RandomResizedCrop + flip + colour); probabilities are per image. The (low, high)
    ranges are `ordered`: a reversed range is refused at load rather than sampled from an empty interval."""

    size: int = bounded(224, 1)
    scale: tuple[float, float] = bounded((0.08, 1.0), 0.0, 1.0, ordered=True)  # crop area / image area
    ratio: tuple[float, float] = bounded((3 / 4, 4 / 3), 1e-3, 1e3, ordered=True)  # crop aspect w / h (log-uniform)
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    flip_p: float = bounded(0.5, 0.0, 1.0)
    jitter_p: float = bounded(0.8, 0.0, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    gray_p: float = bounded(0.2, 0.0, 1.0)
    blur_p: float = bounded(0.0, 0.0, 1.0)
    blur_sigma: tuple[float, float] = bounded((0.1, 2.0), 0.0, ordered=True)
    blur_kernel_frac: float = bounded(0.1, 0.0, 1.0)  # kernel side as a fraction of the view side
    solarize_p: float = bounded(0.0, 0.0, 1.0)


@dataclass
class Views:
    """Views of one batch plus the geometry each one applied, and what a method draws with them (masks,
    corrupted copies, labels): typed fields, None where the method draws none. Methods add theirs with
    dataclasses.replace, so views are not changed after they are built."""

    crops: list[torch.Tensor]  # each (B, C, h, w), float, normalised
    boxes: list[torch.Tensor]  # each (B, 4): x1, y1, x2, y2 in [0, 1] of the original; x1 > x2 when flipped
    flips: list[torch.Tensor]  # each (B,) bool
    # token split of crops[0] (MAE-style masking: MAE, CroCo, SatMAE++, Selfie): (B, kept) and (B, masked)
    # token indices, row-major (group-major for SatMAE++'s group ViT)
    idx_keep: torch.Tensor | None = None
    idx_mask: torch.Tensor | None = None
    # pixel corruption of the first crops (GMML, SiT): corrupted copies and their masks, each (B, 1, h, w),
    # 1 where a pixel was corrupted
    corrupted: list[torch.Tensor] | None = None
    corruption_masks: list[torch.Tensor] | None = None
    rotations: list[torch.Tensor] | None = None  # each (B,) long: quarter turns applied to each crop (SiT v1)
    patch_masks: torch.Tensor | None = None  # (n, h, w) bool over the patch grid of the global crops (iBOT)


class Normalize(nn.Module):
    """Map uint8-range [0, 1] images to the method's input space (identity for 'none').

    A named normalisation, or explicit per-channel `stats` (mean, std), e.g. a hub model's
    pretrained_cfg."""

    def __init__(self, name: str = "none", stats: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        super().__init__()
        stats = stats or NORMALIZATIONS[name]
        mean, std = stats if stats else ((0.0,), (1.0,))
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        mean = self.mean if self.mean.shape[1] in (1, c) else self.mean.mean().view(1, 1, 1, 1)
        std = self.std if self.std.shape[1] in (1, c) else self.std.mean().view(1, 1, 1, 1)
        return (x - mean) / std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        mean = self.mean if self.mean.shape[1] in (1, c) else self.mean.mean().view(1, 1, 1, 1)
        std = self.std if self.std.shape[1] in (1, c) else self.std.mean().view(1, 1, 1, 1)
        return x * std + mean


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> float in [0, 1]."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def minmax_scale(images: torch.Tensor) -> torch.Tensor:
    """Per-image intensity min-max to [0, 1] (radiographs: each X-ray's own range fills the scale)."""
    x = images.float()
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-6)


def center_crop_or_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Evaluation view: the central size x size square (resize-256 / crop-224 style), or a resize if smaller."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if h >= size and w >= size:
        top, left = (h - size) // 2, (w - size) // 2
        return x[..., top:top + size, left:left + size]
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


class EvalView(nn.Module):
    """The evaluation input of a backbone: [0, 1] pixels, centre crop (or resize) to `side`, normalised."""

    def __init__(self, side: int, normalize: Normalize) -> None:
        super().__init__()
        self.side = side
        self.normalize = normalize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(center_crop_or_resize(to_unit(images), self.side))


def sample_boxes(batch: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                 device: torch.device, tries: int = 10) -> torch.Tensor:
    """RandomResizedCrop boxes (torchvision's rule, vectorised): (B, 4) pixel x1, y1, x2, y2 (exclusive)."""
    area = height * width
    target = area * torch.empty(batch, tries, device=device).uniform_(scale[0], scale[1])
    log_r = torch.empty(batch, tries, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(ok.int(), dim=1)
    any_ok = ok.any(dim=1)
    rows = torch.arange(batch, device=device)
    w, h = w[rows, first], h[rows, first]
    # fallback (no valid try): the largest centred box within the ratio range, as torchvision does
    in_ratio = width / height
    fw = float(width) if ratio[0] <= in_ratio <= ratio[1] else (
        float(round(height * ratio[1])) if in_ratio > ratio[1] else float(width))
    fh = float(height) if ratio[0] <= in_ratio <= ratio[1] else (
        float(height) if in_ratio > ratio[1] else float(round(width / ratio[0])))
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    u = torch.rand(batch, 2, device=device)
    x1 = torch.where(any_ok, torch.floor(u[:, 0] * (width - w + 1)), torch.floor((width - w) / 2))
    y1 = torch.where(any_ok, torch.floor(u[:, 1] * (height - h + 1)), torch.floor((height - h) / 2))
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Cut each pixel box out of its image and resize it to size x size."""
    x1, y1, x2, y2 = boxes.unbind(1)
    corners = torch.stack([
        torch.stack([x1, y1], 1), torch.stack([x2 - 1, y1], 1),
        torch.stack([x2 - 1, y2 - 1], 1), torch.stack([x1, y2 - 1], 1),
    ], dim=1)
    return crop_and_resize(images, corners, (size, size), mode=mode, align_corners=True)


def odd_kernel(size: int, fraction: float) -> int:
    k = max(3, int(round(size * fraction)))
    return k if k % 2 == 1 else k + 1


def solarize(x: torch.Tensor, p: float) -> torch.Tensor:
    """Invert pixels >= 0.5, per image with probability p (kornia's version randomises the threshold)."""
    if p <= 0:
        return x
    chosen = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p)
    return torch.where(chosen & (x >= 0.5), 1.0 - x, x)


class ViewAugment(nn.Module):
    """One view of a batch: crop, flip, colour jitter, grayscale, blur, solarize, normalise. Crop, flip and
    solarize work on any band count; the colour ops only on 1 or 3 channels."""

    def __init__(self, spec: ViewSpec, normalize: str = "none") -> None:
        super().__init__()
        self.spec = spec
        b, c, s, h = spec.jitter
        color = []
        if spec.jitter_p > 0 and any(v > 0 for v in spec.jitter):
            color.append(K.ColorJitter(b, c, s, h, p=spec.jitter_p))
        if spec.gray_p > 0:
            color.append(K.RandomGrayscale(p=spec.gray_p))
        if spec.blur_p > 0:
            k = odd_kernel(spec.size, spec.blur_kernel_frac)
            color.append(K.RandomGaussianBlur((k, k), spec.blur_sigma, p=spec.blur_p))
        self.color = nn.Sequential(*color)
        self.normalize = Normalize(normalize)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images: (B, C, H, W) uint8 or [0,1] float -> (view, normalised box (B,4), flipped (B,))."""
        x = to_unit(images)
        bsz, _, height, width = x.shape
        boxes = sample_boxes(bsz, height, width, self.spec.scale, self.spec.ratio, x.device)
        view = crop_resize(x, boxes, self.spec.size, self.spec.interpolation)
        flips = torch.rand(bsz, device=x.device) < self.spec.flip_p
        view = torch.where(flips[:, None, None, None], view.flip(-1), view)
        if view.shape[1] == 1 and len(self.color):  # kornia colour ops want RGB
            view = self.color(view.expand(-1, 3, -1, -1))[:, :1]
        elif len(self.color):
            if view.shape[1] != 3:  # multispectral bands: crop and flip only
                raise ValueError(f"colour jitter, grayscale and blur need 1 or 3 channels, got {view.shape[1]}; "
                                 "set jitter_p, gray_p and blur_p to 0 for multi-band images")
            view = self.color(view)
        view = solarize(view.clamp(0, 1), self.spec.solarize_p)
        norm_boxes = boxes / torch.tensor([width, height, width, height], device=x.device, dtype=boxes.dtype)
        norm_boxes = torch.where(flips[:, None], norm_boxes[:, [2, 1, 0, 3]], norm_boxes)
        return self.normalize(view), norm_boxes, flips


class MultiViewAugment(nn.Module):
    """Several view recipes applied to the same batch (two-view, multi-crop)."""

    def __init__(self, specs: list[ViewSpec], normalize: str = "none") -> None:
        super().__init__()
        self.views = nn.ModuleList(ViewAugment(s, normalize) for s in specs)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> Views:
        crops, boxes, flips = [], [], []
        for aug in self.views:
            v, b, f = aug(images)
            crops.append(v)
            boxes.append(b)
            flips.append(f)
        return Views(crops, boxes, flips)
