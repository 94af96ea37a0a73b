"""Subsets of a split spread evenly over it, never its first N items.

Why: image folders list their files class by class, so the first N images of a split are its first
few classes (ImageNet's first 50,000 hold 39 of 1,000 classes; the multispectral set's first 2,000,
3 of 10). Pretraining subsets (`data.limit`), k-NN banks and probe subsets all take this one rule.
"""

from __future__ import annotations

import torch

from ssl_zoo.data.batch import Batch


def spread_subset(size: int, limit: int) -> torch.Tensor:
    """`limit` indices spread evenly over range(size) (all of them when limit is 0 or >= size), in order."""
    n = size if not limit else min(limit, size)
    return torch.arange(n) * size // max(n, 1)


class SpreadSubset(torch.utils.data.Dataset):
    """`limit` items of a dataset spread evenly over it (spread_subset), labels and batches remapped."""

    def __init__(self, base: torch.utils.data.Dataset, limit: int) -> None:
        self.base, self.chosen = base, spread_subset(len(base), limit)
        self.labels = torch.as_tensor(base.labels)[self.chosen]
        self.num_classes = getattr(base, "num_classes", 0)

    def __len__(self) -> int:
        return len(self.chosen)

    def __getitems__(self, indices: list[int]) -> Batch:
        return self.base.__getitems__(self.chosen[indices].tolist())
