"""Where the feature-map bins of a crop lie in the original image.

Dense methods (PixPro) match feature bins across two views by position in the ORIGINAL image.
A view records its box as normalised pixel edges (x1, y1, x2, y2) with x1 > x2 when it was flipped
(ssl_zoo.augment.Views.boxes), so walking the bins from x1 towards x2 already follows the flip. The
view's edges are the box's edges (ssl_zoo.augment.crop_resize, torchvision's resized_crop), so bin j of
w covers [x1 + j (x2 - x1) / w, x1 + (j + 1) (x2 - x1) / w] of the original: its centre is where
`bin_centres` puts it, as in the official PixPro code.

Whole images (data.max_aspect > 1) travel centred in square canvases; `valid_offset` is the one rule
the loader pads by and the augmentation crops by.
"""

from __future__ import annotations

from typing import TypeVar

import torch

Side = TypeVar("Side", int, torch.Tensor)


def valid_offset(canvas: int, side: Side) -> Side:
    """Where an image side of length `side` starts inside a canvas side of length `canvas` (centred, rounded
    down): Python ints in the loader, tensors of sizes on the device."""
    return (canvas - side) // 2


def per_axis(coords: torch.Tensor, x_scale: float, y_scale: float) -> torch.Tensor:
    """(..., 2k) alternating x, y coordinates (points, or x1, y1, x2, y2 boxes) times Python per-axis
    scales: no (x, y) scale tensor built from Python numbers, which would be a host-to-device copy."""
    x, y = coords[..., 0::2] * x_scale, coords[..., 1::2] * y_scale
    return torch.stack([x, y], dim=-1).flatten(-2)


def bin_centres(boxes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Centres (x, y) of an h x w feature grid laid over each box: (B, 4) -> (B, h*w, 2), row-major."""
    h, w = grid
    x1, y1, x2, y2 = boxes.unbind(1)
    cols = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) / w
    rows = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) / h
    cx = x1[:, None] + cols * (x2 - x1)[:, None]  # (B, w)
    cy = y1[:, None] + rows * (y2 - y1)[:, None]  # (B, h)
    return torch.stack([cx[:, None, :].expand(-1, h, -1), cy[:, :, None].expand(-1, -1, w)], -1).flatten(1, 2)


def bin_diagonal(boxes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Length of one bin's diagonal in original-image units: (B, 4) -> (B,)."""
    h, w = grid
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.hypot((x2 - x1) / w, (y2 - y1) / h)


def positive_bins(boxes_a: torch.Tensor, grid_a: tuple[int, int], boxes_b: torch.Tensor, grid_b: tuple[int, int],
                  threshold: float) -> torch.Tensor:
    """PixPro positives: (B, h_a*w_a, h_b*w_b) bool, True where the two bin centres are closer than
    `threshold` x the larger of the two views' bin diagonals (in the original image)."""
    ca, cb = bin_centres(boxes_a, grid_a), bin_centres(boxes_b, grid_b)
    dist = (ca[:, :, None, :] - cb[:, None, :, :]).pow(2).sum(-1).sqrt()  # exact, unlike cdist's matmul path
    scale = torch.maximum(bin_diagonal(boxes_a, grid_a), bin_diagonal(boxes_b, grid_b))
    return dist / scale[:, None, None] < threshold
