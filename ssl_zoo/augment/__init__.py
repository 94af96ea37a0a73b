"""Batched view generation on the training device, recording what was applied.

Why here and not in the loader: every random, per-view operation runs on whole batches on the
device, so the CPU workers only decode. Crops are sampled here (not inside a kornia module) so
each view knows its box in normalised original-image coordinates and whether it was flipped;
dense methods (PixPro) and tests need exactly that. kornia's augmentation modules are not used:
they choose images with boolean masks and check parameters on the host, a GPU sync per op and view;
color.py and crop_resize do the same arithmetic with every choice kept on the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ssl_zoo.augment.color import random_color_jitter, random_gaussian_blur, random_grayscale, separable_gaussian
from ssl_zoo.config import bounded
from ssl_zoo.geometry import valid_offset

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
    boxes: list[torch.Tensor]  # each (B, 4): x1, y1, x2, y2 pixel edges in [0, 1] of the original; x1 > x2 when flipped
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


def center_crop_or_resize(x: torch.Tensor, size: int, whole: bool = False) -> torch.Tensor:
    """Evaluation view: the central size x size square (resize-256 / crop-224 style), or with `whole` the whole
    image downsampled (antialiased) to it -- for models trained on downsampled crops of most of the image
    (SatMAE++), where a centre crop would show part of it at a finer scale. Smaller images are upsampled."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if h >= size and w >= size:
        if whole:
            return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        top, left = (h - size) // 2, (w - size) // 2
        return x[..., top:top + size, left:left + size]
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


class EvalView(nn.Module):
    """The evaluation input of a backbone: [0, 1] pixels, optionally each image's own min-max, then a centre
    crop (or, with `resize`, the whole image resized) to `side` (0: kept), normalised. Every evaluation, the
    in-training k-NN included (Method.embed), builds its input here, so they all see the same pixels."""

    def __init__(self, side: int, normalize: Normalize, resize: bool = False, minmax: bool = False) -> None:
        super().__init__()
        self.side = side
        self.normalize = normalize
        self.resize = resize
        self.minmax = minmax

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = minmax_scale(images) if self.minmax else to_unit(images)
        if self.side:
            x = center_crop_or_resize(x, self.side, whole=self.resize)
        return self.normalize(x)

    def describe(self) -> dict:
        """What rebuilds this view (classifier folders store it)."""
        return {"side": self.side, "mean": self.normalize.mean.flatten().tolist(),
                "std": self.normalize.std.flatten().tolist(), "resize": self.resize, "minmax": self.minmax}


def sample_boxes(sizes: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float],
                 tries: int = 10) -> torch.Tensor:
    """RandomResizedCrop boxes, torchvision's rule vectorised, each inside its own image: sizes (B, 2) float
    (height, width) -> (B, 4) pixel x1, y1, x2, y2 (exclusive) in that image's coordinates."""
    batch, device = sizes.shape[0], sizes.device
    height, width = sizes[:, :1], sizes[:, 1:]
    target = height * width * torch.empty(batch, tries, device=device).uniform_(scale[0], scale[1])
    log_r = torch.empty(batch, tries, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(ok.int(), dim=1, keepdim=True)
    any_ok = ok.any(dim=1)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    height, width = sizes.unbind(1)
    # fallback (no valid try): the largest centred box within the ratio range, as torchvision does (its
    # rounding is Python's, in double precision)
    in_ratio = width / height
    fw = torch.where(in_ratio > ratio[1], torch.round(height.double() * ratio[1]).to(w.dtype), width)
    fh = torch.where(in_ratio < ratio[0], torch.round(width.double() / ratio[0]).to(h.dtype), height)
    w = torch.where(any_ok, w, fw)
    h = torch.where(any_ok, h, fh)
    u = torch.rand(batch, 2, device=device)
    x1 = torch.where(any_ok, torch.floor(u[:, 0] * (width - w + 1)), torch.floor((width - w) / 2))
    y1 = torch.where(any_ok, torch.floor(u[:, 1] * (height - h + 1)), torch.floor((height - h) / 2))
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def gaussian_prefilter(images: torch.Tensor, steps: torch.Tensor, largest_step: float) -> torch.Tensor:
    """Low-pass each image before it is resampled `steps` (B, 2: x, y) source pixels apart, so shrinking
    does not alias.

    Why a Gaussian and not F.interpolate(antialias=True): every image of a batch shrinks by its own
    factor, which one interpolate call cannot do; a separable Gaussian with a per-image sigma is one
    grouped convolution per axis. sigma = sqrt(step^2 - 1) / 2 brings the blur a pixel already has
    (about half a pixel) up to half an output pixel; no blur where the image is enlarged. The kernel
    radius (3 sigma) comes from `largest_step` (from shapes, not values: no host sync). Borders are
    mirrored, so a pattern runs on across them.
    """
    _, _, height, width = images.shape
    radius = min(math.ceil(3 * 0.5 * math.sqrt(max(largest_step**2 - 1, 0.0))), height - 1, width - 1)
    if radius <= 0:
        return images
    return separable_gaussian(images, 0.5 * (steps.square() - 1).clamp_min(0).sqrt(), radius)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Cut each pixel box out of its image and resize it to size x size, with torchvision's `resized_crop`
    semantics (what the papers' per-image pipelines ran): images (B, C, H, W), boxes (B, 4) x1, y1, x2, y2
    as pixel EDGES (x2, y2 exclusive) -> (B, C, size, size).

    The box's edges are the view's edges: output pixel i samples x1 + (i + 0.5) (x2 - x1) / size in edge
    coordinates (pixel p spans [p, p + 1]), so the recorded box is exactly what the view shows (the feature
    bins PixPro matches by position lie where ssl_zoo.geometry puts them). Sampled with grid_sample after
    `gaussian_prefilter` wherever the box shrinks. One difference from torchvision, which crops first and
    repeats the box's edge pixels: when a box is enlarged, the view's outermost pixels interpolate with the
    image just beyond the box where there is image there."""
    _, _, height, width = images.shape
    x1, y1, x2, y2 = boxes.unbind(1)
    steps = torch.stack([x2 - x1, y2 - y1], 1) / size  # source pixels per output pixel
    images = gaussian_prefilter(images, steps, max(height, width) / size)
    # align_corners=False: -1 and 1 are the image's outer edges, so edge coordinate x sits at 2 x / W - 1
    zero = torch.zeros_like(x1)
    theta = torch.stack([
        torch.stack([(x2 - x1) / width, zero, (x1 + x2) / width - 1], 1),
        torch.stack([zero, (y2 - y1) / height, (y1 + y2) / height - 1], 1),
    ], 1)
    grid = F.affine_grid(theta.to(images.dtype), [images.shape[0], images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)


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
        self.jitter = spec.jitter_p > 0 and any(v > 0 for v in spec.jitter)
        self.has_color = self.jitter or spec.gray_p > 0 or spec.blur_p > 0
        self.blur_kernel = odd_kernel(spec.size, spec.blur_kernel_frac)
        self.normalize = Normalize(normalize)

    @torch.no_grad()
    def forward(self, images: torch.Tensor,
                sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images: (B, C, H, W) uint8 or [0,1] float; sizes: (B, 2) valid (height, width) of images centred in
        their canvas (Batch.sizes), None when all of each tensor is image -> (view, box (B, 4) normalised by
        the image's valid size, flipped (B,))."""
        x = to_unit(images)
        bsz, _, height, width = x.shape
        if sizes is None:
            sizes = torch.stack([x.new_full((bsz,), height), x.new_full((bsz,), width)], 1)
        sizes = sizes.to(x.dtype)
        boxes = sample_boxes(sizes, self.spec.scale, self.spec.ratio)
        top, left = valid_offset(height, sizes[:, 0]), valid_offset(width, sizes[:, 1])
        view = crop_resize(x, boxes + torch.stack([left, top, left, top], 1), self.spec.size, self.spec.interpolation)
        flips = torch.rand(bsz, device=x.device) < self.spec.flip_p
        view = torch.where(flips[:, None, None, None], view.flip(-1), view)
        if view.shape[1] == 1 and self.has_color:  # the colour ops are RGB ones
            view = self._color(view.expand(-1, 3, -1, -1))[:, :1]
        elif self.has_color:
            if view.shape[1] != 3:  # multispectral bands: crop and flip only
                raise ValueError(f"colour jitter, grayscale and blur need 1 or 3 channels, got {view.shape[1]}; "
                                 "set jitter_p, gray_p and blur_p to 0 for multi-band images")
            view = self._color(view)
        view = solarize(view.clamp(0, 1), self.spec.solarize_p)
        x1, y1, x2, y2 = (boxes / sizes.flip(1).repeat(1, 2)).unbind(1)
        norm_boxes = torch.stack([torch.where(flips, x2, x1), y1, torch.where(flips, x1, x2), y2], 1)
        return self.normalize(view), norm_boxes, flips

    def _color(self, view: torch.Tensor) -> torch.Tensor:
        """torchvision's RandomApply(ColorJitter), RandomGrayscale, RandomApply(GaussianBlur), per image
        (ssl_zoo/augment/color.py: no host sync)."""
        spec = self.spec
        if self.jitter:
            view = random_color_jitter(view, spec.jitter, spec.jitter_p)
        if spec.gray_p > 0:
            view = random_grayscale(view, spec.gray_p)
        if spec.blur_p > 0:
            view = random_gaussian_blur(view, self.blur_kernel, spec.blur_sigma, spec.blur_p)
        return view


class MultiViewAugment(nn.Module):
    """Several view recipes applied to the same batch (two-view, multi-crop).

    Views that share one recipe (DINO's and RAD-DINO's local crops) are made in ONE call on the batch
    repeated, not in one call each: one kernel launch per op for all of them."""

    def __init__(self, specs: list[ViewSpec], normalize: str = "none") -> None:
        super().__init__()
        recipes: list[ViewSpec] = []
        for spec in specs:
            if spec not in recipes:
                recipes.append(spec)
        self.views = nn.ModuleList(ViewAugment(s, normalize) for s in recipes)
        self.copies = [specs.count(r) for r in recipes]
        self.order = [(recipes.index(s), specs[:i].count(s)) for i, s in enumerate(specs)]  # (recipe, copy) per view

    @torch.no_grad()
    def forward(self, images: torch.Tensor, sizes: torch.Tensor | None = None) -> Views:
        """images: (B, C, H, W); sizes: Batch.sizes (None: all of each tensor is image)."""
        made = []
        for aug, n in zip(self.views, self.copies):
            repeated = sizes if sizes is None or n == 1 else sizes.repeat(n, 1)
            out = aug(images if n == 1 else images.repeat(n, 1, 1, 1), repeated)
            made.append([t.chunk(n) for t in out])
        crops, boxes, flips = ([made[r][k][c] for r, c in self.order] for k in range(3))
        return Views(crops, boxes, flips)
