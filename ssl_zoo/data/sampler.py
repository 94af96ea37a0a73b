"""A distributed, seeded sampler that can start mid-epoch (exact resume of the data position)."""

from __future__ import annotations

from typing import Iterator

import torch


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Each epoch is a seeded permutation split across ranks; `start_batch` skips what was done.

    Unlike torch's DistributedSampler + restart, a resumed run sees exactly the batches the
    interrupted run would have seen next.
    """

    def __init__(self, length: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True) -> None:
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch = 0
        self.start_batch = 0
        self.batches_per_epoch = length // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"dataset of {length} images is smaller than one global batch "
                             f"({batch_size} x {world_size} ranks); lower train.batch_size")

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.length, generator=g)
        else:
            order = torch.arange(self.length)
        per_rank = self.batches_per_epoch * self.batch_size
        mine = order[: per_rank * self.world_size][self.rank :: self.world_size]
        return iter(mine[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size
