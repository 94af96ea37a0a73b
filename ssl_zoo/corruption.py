"""Batched pixel-level group corruption (GMML, SiT): random blocks of noise, zeros or another image.

Why here: GMML and both SiT generations corrupt views with the same block sampler, and it has to
run on whole batches on the device. The official code adds one block at a time per image on the
CPU until the covered area reaches a per-image target; here every image draws its next block in
the same round (one set of tensor ops for the batch), and an image stops accepting blocks once its
own target is met, so each image follows the official rule. Masks are (B, 1, H, W): one mask shared
by all channels. Values live in the normalised input space (the official corruption runs after
normalisation), so noise is N(0, 1) and zeros are the dataset mean.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from kornia.filters import filter2d_separable, get_gaussian_kernel1d

from ssl_zoo.config import bounded

Count = Literal["union", "area"]
# blocks_per_read's margin over the expected need. GMML's corruption, 2 views x 16 images at 224 px / x 128 at
# 28 px: calls needing a second read (a host sync on GPUs), of 30: 1.0: 11 and 22, 1.25: 1 and 1, 1.5: 0 and 0;
# CPU time per call at 28 px (2 threads, 2 x 64 images): 1.0: 81 ms, 1.25: 82 ms, 1.5: 95 ms (AMD EPYC, AVX2)
MARGIN = 1.25


@dataclass
class GroupCorruption:
    """GMML's corruption (official `GMML_drop_rand_patches` + `GMML_replace_list`).

    Per image either (probability 1 - paste_p) blocks filled with `fill` until the covered area
    reaches a target drawn from U(min(0.5, coverage), coverage), or (probability paste_p) blocks of
    another image of the batch at the same places up to U(min(0.5, paste_coverage), paste_coverage).
    Block sides are drawn from [align, max_block * side) and positions snap to multiples of `align`
    (1: pixel-aligned, the default; the patch size: patch-aligned).
    """

    coverage: float = bounded(0.75, 0.0, 1.0)
    fill: Literal["noise", "zeros"] = "noise"
    paste_p: float = bounded(0.5, 0.0, 1.0)
    paste_coverage: float = bounded(0.3, 0.0, 1.0)
    max_block: float = bounded(0.3, 0.0, 1.0)
    align: int = bounded(1, 1)


@dataclass
class V1Distortion:
    """SiT v1's `distortImages` (2021 code), applied per image in this order.

    One random box turned grey (channel mean); one random box blurred with a Gaussian of random odd
    kernel size in [3, blur_kernel] and sigma in [0.1, 0.1 + blur_sigma]; noise blocks until their
    summed area (overlaps counted twice, as the official loop does) reaches U(0, noise_coverage);
    then blocks of another image of the batch up to U(0, paste_coverage). Block sides are drawn from
    [min_block, max_block) of the side, boxes from [min_block, 1) of the side.
    """

    noise_coverage: float = bounded(0.3, 0.0, 1.0)
    paste_coverage: float = bounded(0.3, 0.0, 1.0)
    min_block: float = bounded(0.05, 0.0, 1.0)
    max_block: float = bounded(0.25, 0.0, 1.0)
    blur_kernel: int = bounded(15, 3)
    blur_sigma: float = bounded(5.0, 0.0)


# ----------------------------------------------------------------------------- blocks


def sample_blocks(batch: int, count: int, height: int, width: int, min_side: int, max_side: int,
                  align: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """`count` random blocks per image as (top, left, h, w), each (B, count), by the official rule:
    top = randint(0, H - min_side) snapped to `align`; h = min(randint(min_side, max_side), H - top)
    rounded to `align` (numpy's randint: upper bound exclusive; a bound at or below the lower one
    gives the lower one)."""
    u = torch.rand(4, batch, count, device=device)

    def randint(lo: int, hi: torch.Tensor | int, v: torch.Tensor) -> torch.Tensor:
        span = hi - lo
        span = span.clamp_min(1) if isinstance(span, torch.Tensor) else max(span, 1)  # ints stay on the host
        return lo + torch.floor(v * span).long()

    top = torch.div(randint(0, height - min_side, u[0]), align, rounding_mode="floor") * align
    left = torch.div(randint(0, width - min_side, u[1]), align, rounding_mode="floor") * align
    h = torch.minimum(randint(min_side, max_side, u[2]), height - top)
    w = torch.minimum(randint(min_side, max_side, u[3]), width - left)
    if align > 1:
        h = torch.round(h / align).long() * align
        w = torch.round(w / align).long() * align
    return top, left, h, w


def box_masks(top: torch.Tensor, left: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
              height: int, width: int) -> torch.Tensor:
    """Boxes (any leading shape S) -> boolean masks (*S, H, W)."""
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    in_rows = (rows >= top[..., None]) & (rows < (top + h)[..., None])
    in_cols = (cols >= left[..., None]) & (cols < (left + w)[..., None])
    return in_rows[..., :, None] & in_cols[..., None, :]


@functools.lru_cache(maxsize=64)
def blocks_per_read(max_target: float, height: int, width: int, min_side: int, max_side: int, align: int,
                    max_blocks: int) -> int:
    """How many blocks to draw between two reads of "is every image covered?" (count="union").

    The chance that a block of sample_blocks covers row y (or column x) follows from its rule, border
    clipping and `align` included; n independent blocks cover pixel (y, x) with 1 - (1 - p_y p_x)^n.
    MARGIN x the n whose expected union reaches `max_target` (a fraction of the image), plus 8, makes a
    second read rare. Exact arithmetic on the host, once per shape: no random numbers are used."""
    rows, cols = _hit_chance(height, min_side, max_side, align), _hit_chance(width, min_side, max_side, align)
    log_miss = np.log(np.clip(1 - np.outer(rows, cols), 1e-12, None))  # log (1 - p) per pixel

    def coverage(n: int) -> float:
        return float(1 - np.exp(log_miss * n).mean())

    low, high = 0, max_blocks
    while low < high:  # the smallest n whose coverage reaches the target (coverage grows with n)
        mid = (low + high) // 2
        low, high = (mid + 1, high) if coverage(mid) < max_target else (low, mid)
    return max(8, min(max_blocks, math.ceil(MARGIN * low) + 8))


def _hit_chance(side: int, min_side: int, max_side: int, align: int) -> np.ndarray:
    """(side,) float64: the chance that one block of sample_blocks covers each row (or column)."""
    starts = np.arange(max(side - min_side, 1)) // align * align
    lengths = np.minimum(np.arange(min_side, max(max_side, min_side + 1))[None, :], side - starts[:, None])
    if align > 1:
        lengths = np.round(lengths / align).astype(np.int64) * align
    index = np.arange(side)
    inside = (index >= starts[:, None, None]) & (index < (starts[:, None] + lengths)[..., None])
    return inside.mean((0, 1))


@torch.no_grad()
def block_masks(targets: torch.Tensor, height: int, width: int, min_side: int, max_side: int, align: int = 1,
                count: Count = "union", max_target: float = 0.75, max_blocks: int = 4096,
                chunk_elements: int = 1 << 28) -> torch.Tensor:
    """Add random blocks per image until its covered area reaches targets[i] pixels; (B, 1, H, W) bool.

    count="union": covered = pixels under the union of the blocks (GMML); "area": the summed block
    areas, overlaps counted again (SiT v1). Blocks are drawn K per image at a time: block j is accepted
    while the coverage before it is below the target (the official `while` test), so an image accepts a
    prefix of its blocks, found from the running coverage (for the union: from the index of the first
    block covering each pixel). K is bounded by `chunk_elements` (B x K x H x W booleans at once).

    Host syncs: none with count="area": every block adds at least min_side^2 pixels, so
    ceil(pixels / min_side^2) blocks always suffice and are drawn without looking. The union has no
    such bound (a block may add nothing new), so the host reads "is every image covered?" after each
    round of `blocks_per_read` blocks, sized from `max_target` (the largest target as a fraction of the
    image, which callers know): one read per call, nearly always; callers put all their views in one call.
    """
    batch, device = targets.shape[0], targets.device
    targets = targets.float()
    pixels = height * width
    if count == "area":  # no target exceeds the image, so this many blocks always reach it (see the docstring)
        total = per_read = min(max_blocks, -(-pixels // min_side ** 2))
    else:
        total, per_read = max_blocks, blocks_per_read(max_target, height, width, min_side, max_side, align,
                                                      max_blocks)
    per_chunk = max(1, min(per_read, chunk_elements // max(1, batch * pixels)))
    mask = torch.zeros(batch, pixels, dtype=torch.bool, device=device)
    covered = torch.zeros(batch, device=device)
    for read_start in range(0, total, per_read):
        if read_start and count == "union" and not bool((covered < targets).any()):
            break
        read_end = min(total, read_start + per_read)
        for start in range(read_start, read_end, per_chunk):
            chunk = min(per_chunk, read_end - start)
            top, left, h, w = sample_blocks(batch, chunk, height, width, min_side, max_side, align, device)
            covered = _add_blocks(mask, covered, targets, box_masks(top, left, h, w, height, width).flatten(2),
                                  (h * w).float(), count)
    return mask.view(batch, 1, height, width)


def _add_blocks(mask: torch.Tensor, covered: torch.Tensor, targets: torch.Tensor, blocks: torch.Tensor,
                areas: torch.Tensor, count: Count) -> torch.Tensor:
    """Accept each image's blocks (B, K, H*W) while its coverage is below target: updates `mask` (B, H*W)
    in place, returns the new coverage (B,)."""
    chunk = blocks.shape[1]
    if count == "union":
        fresh = blocks & ~mask[:, None]
        first = torch.where(fresh.any(1), fresh.to(torch.uint8).argmax(1), chunk)  # first block covering a pixel
        gain = _pixels_first_covered(first, chunk)
    else:
        gain = areas
    take = covered[:, None] + gain.cumsum(1) - gain < targets[:, None]  # coverage before block j is short
    if count == "union":
        mask |= first < take.sum(1, keepdim=True)
    else:
        mask |= (blocks & take[..., None]).any(1)
    return covered + (gain * take).sum(1)


def _pixels_first_covered(first: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, K) float: how many pixels each block covers first, from `first` (B, H*W) in [0, K] (K: none).

    On the CPU a scatter_add into K + 1 bins per image (0.2 ms for 128 x 784 pixels, K = 100; the comparison
    takes 52 ms there). On a GPU that scatter piles atomic adds onto a few addresses per image, and a
    comparison and a sum were faster: GMML at 224 px on an H200 went from 140 to 1071 img/s."""
    if first.device.type == "cpu":
        gain = torch.zeros(first.shape[0], chunk + 1)
        return gain.scatter_add_(1, first, torch.ones_like(first, dtype=torch.float))[:, :chunk]
    return (first[:, None, :] == torch.arange(chunk, device=first.device)[:, None]).sum(-1).float()


def other_images(batch: int, device: torch.device) -> torch.Tensor:
    """For every image the index of a different, random image of the batch (itself only when B = 1)."""
    if batch == 1:
        return torch.zeros(1, dtype=torch.long, device=device)
    shift = torch.randint(1, batch, (batch,), device=device)
    return (torch.arange(batch, device=device) + shift) % batch


def coverage_targets(low: float, high: float, batch: int, pixels: int, device: torch.device) -> torch.Tensor:
    """Per-image target areas in pixels, U(low, high) x pixels (the official np.random.uniform)."""
    return (low + (high - low) * torch.rand(batch, device=device)) * pixels


# ----------------------------------------------------------------------------- GMML


@torch.no_grad()
def group_corrupt(x: torch.Tensor, spec: GroupCorruption, views: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """GMML corruption of a batch (B, C, H, W) -> (corrupted, mask (B, 1, H, W) in x's dtype, 1 = corrupted).

    `views` > 1: x is that many views of the same B / views images stacked (view-major), corrupted in one
    call (one block_masks call: one host sync for all of them). Pasted content comes from a different
    image of the same view (the official code draws any index, itself included, which then pastes the
    image onto itself: a no-op counted as corrupted).
    """
    batch, _, height, width = x.shape
    pixels, device = height * width, x.device
    per_view = batch // views
    paste = (torch.rand(batch, device=device) < spec.paste_p) & (per_view > 1)
    fill_target = coverage_targets(min(0.5, spec.coverage), spec.coverage, batch, pixels, device)
    paste_target = coverage_targets(min(0.5, spec.paste_coverage), spec.paste_coverage, batch, pixels, device)
    max_side = max(1, int(spec.max_block * height))  # views are square
    mask = block_masks(torch.where(paste, paste_target, fill_target), height, width, spec.align, max_side,
                       spec.align, max_target=max(spec.coverage, spec.paste_coverage))
    fill = torch.randn_like(x) if spec.fill == "noise" else torch.zeros_like(x)
    others = torch.cat([other_images(per_view, device) + v * per_view for v in range(views)])
    source = torch.where(paste[:, None, None, None], x[others], fill)
    return torch.where(mask, source, x), mask.to(x.dtype)


# ----------------------------------------------------------------------------- SiT v1


def random_boxes(batch: int, height: int, width: int, min_frac: float, device: torch.device) -> torch.Tensor:
    """One box per image (rgb2gray_patch / smooth_patch rule): top in [0, H - tol), height in [tol, H),
    clipped at the border; tol = min_frac * side. Returns (B, 1, H, W) bool."""
    tol = max(1, int(min_frac * height))
    top, left, h, w = sample_blocks(batch, 1, height, width, tol, height, 1, device)
    return box_masks(top, left, h, w, height, width)


def random_blur(x: torch.Tensor, max_kernel: int, max_sigma: float) -> torch.Tensor:
    """Gaussian blur with a random odd kernel size in [3, max_kernel] and sigma in [0.1, 0.1 + max_sigma] per image.

    One separable filter of the largest size for the whole batch; each image's kernel is cut to its own
    size and renormalised, which is the smaller Gaussian kernel exactly.
    """
    batch = x.shape[0]
    max_kernel = max_kernel if max_kernel % 2 == 1 else max_kernel - 1
    sigma = 0.1 + torch.rand(batch, 1, device=x.device) * max_sigma
    half = torch.randint(1, max_kernel // 2 + 1, (batch, 1), device=x.device)  # kernel = 2 * half + 1
    kernel = get_gaussian_kernel1d(max_kernel, sigma)
    offsets = torch.arange(max_kernel, device=x.device) - max_kernel // 2
    kernel = kernel * (offsets.abs() <= half)
    kernel = kernel / kernel.sum(-1, keepdim=True)
    return filter2d_separable(x, kernel, kernel, border_type="reflect")


@torch.no_grad()
def v1_distort(x: torch.Tensor, spec: V1Distortion) -> tuple[torch.Tensor, torch.Tensor]:
    """SiT v1 corruption of a batch -> (distorted, mask (B, 1, H, W) of every touched pixel).

    Differences from the per-image official loop, all for batching: the blurred box takes its values
    from a blur of the whole image (the official code blurs the box cut out on its own, reflecting at
    the box edges), and pasted blocks always come from a different image's clean view.
    """
    batch, _, height, width = x.shape
    pixels, device = height * width, x.device
    gray_box = random_boxes(batch, height, width, spec.min_block, device)
    out = torch.where(gray_box, x.mean(1, keepdim=True).expand_as(x), x)
    blur_box = random_boxes(batch, height, width, spec.min_block, device)
    out = torch.where(blur_box, random_blur(out, spec.blur_kernel, spec.blur_sigma), out)
    lo, hi = max(1, int(spec.min_block * height)), max(1, int(spec.max_block * height))
    noise = block_masks(coverage_targets(0.0, spec.noise_coverage, batch, pixels, device), height, width,
                        lo, hi, count="area")
    out = torch.where(noise, torch.randn_like(x), out)
    paste = block_masks(coverage_targets(0.0, spec.paste_coverage, batch, pixels, device), height, width,
                        lo, hi, count="area")
    out = torch.where(paste, x[other_images(batch, device)], out)
    return out, (gray_box | blur_box | noise | paste).to(x.dtype)


__all__ = ["GroupCorruption", "V1Distortion", "block_masks", "blocks_per_read", "box_masks", "group_corrupt",
           "other_images", "sample_blocks", "v1_distort"]
