"""The unit the loader hands to the trainer: uint8 images at a fixed size, plus labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class DataError(RuntimeError):
    """The dataset cannot be used (missing path, empty folder, unreadable image in 'error' mode)."""


@dataclass
class Batch:
    images: torch.Tensor  # (B, C, H, W) uint8
    labels: torch.Tensor  # (B,) int64, -1 where unlabeled
    indices: torch.Tensor  # (B,) int64 dataset indices

    def pin_memory(self) -> "Batch":
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.indices.pin_memory())

    def to(self, device: torch.device, non_blocking: bool = True) -> "Batch":
        return Batch(
            self.images.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.indices.to(device, non_blocking=non_blocking),
        )

    def __len__(self) -> int:
        return self.images.shape[0]


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Replicate single-channel images when the backbone wants more (e.g. gray -> RGB)."""
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    raise DataError(f"images have {images.shape[1]} channels but data.channels={channels}")
