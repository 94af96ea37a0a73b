"""Deterministic labelled images for tests: each class is a distinct oriented stripe pattern."""

from __future__ import annotations

import math

import torch

from ssl_zoo.data.batch import Batch


class SyntheticImages(torch.utils.data.Dataset):
    def __init__(self, size: int, num_classes: int, load_size: int, channels: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(size) % num_classes
        yy, xx = torch.meshgrid(torch.linspace(0, 1, load_size), torch.linspace(0, 1, load_size), indexing="ij")
        angles = self.labels.float() * math.pi / num_classes
        freq = 3.0 + torch.rand(size, generator=g) * 2
        phase = torch.rand(size, generator=g) * 2 * math.pi
        wave = torch.sin(2 * math.pi * freq[:, None, None]
                         * (xx * torch.cos(angles)[:, None, None] + yy * torch.sin(angles)[:, None, None])
                         + phase[:, None, None])
        noise = torch.rand(size, channels, load_size, load_size, generator=g) * 0.3
        tint = 0.5 + 0.5 * torch.rand(size, channels, 1, 1, generator=g)
        img = ((wave[:, None] * 0.5 + 0.5) * tint * 0.7 + noise).clamp(0, 1)
        self.images = (img * 255).round().to(torch.uint8)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: list[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return Batch(self.images[idx], self.labels[idx], idx)

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])
