"""The unit the loader hands to the trainer: uint8 images at a fixed size, plus labels (and pairs, valid sizes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_zoo.errors import DataError


@dataclass
class Batch:
    images: torch.Tensor  # (B, C, H, W) uint8
    labels: torch.Tensor  # (B,) int64, -1 where unlabeled
    indices: torch.Tensor  # (B,) int64 dataset indices
    pair_images: torch.Tensor | None = None  # (B, C, H, W) uint8: the second image of each pair (data.kind=pairs)
    skipped: int = 0  # items replaced by the next readable one (data.on_bad_image=skip): counted in the run's metrics
    # (B, 2) int64 (height, width) of each image's valid region when whole images are padded into square
    # canvases (image folders with data.max_aspect > 1; centred, ssl_zoo.geometry.valid_offset); None: the
    # whole tensor is image
    sizes: torch.Tensor | None = None

    def pin_memory(self) -> "Batch":
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device, non_blocking: bool = True) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def _map(self, fn) -> "Batch":
        pair = None if self.pair_images is None else fn(self.pair_images)
        sizes = None if self.sizes is None else fn(self.sizes)
        return Batch(fn(self.images), fn(self.labels), fn(self.indices), pair, self.skipped, sizes)

    def __len__(self) -> int:
        return self.images.shape[0]


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Replicate single-channel images when the backbone wants more (e.g. gray -> RGB)."""
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    raise DataError(f"images have {images.shape[1]} channels but data.channels={channels}")
