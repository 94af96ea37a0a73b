"""Frozen features of a dataset, read in batches (DataLoader workers) and embedded under autocast on CUDA.

Imports only the engine, so the trainer's periodic k-NN can use it as well as the
evaluation commands.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ssl_zoo.data import build_loader
from ssl_zoo.data.subset import spread_subset
from ssl_zoo.runtime import autocast_dtype

Embed = Callable[[torch.Tensor], torch.Tensor]  # uint8 images at the load size -> (B, D) features


@torch.no_grad()
def embed_items(embed: Embed, dataset, indices: Sequence[int] | torch.Tensor, device: torch.device,
                batch_size: int = 512, num_workers: int = 0, desc: str = "features", progress: bool = True,
                l2_normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2-normalised) float32 features and labels of dataset[indices], in that order, on `device`.

    On CUDA the embedding runs under the device's native autocast dtype (bf16, else fp16): frozen
    features for a nearest-neighbour vote or a probe do not need fp32 matmuls. On CPU it stays fp32.
    """
    loader = build_loader(Selection(dataset, indices), batch_size, num_workers, pin_memory=device.type == "cuda")
    dtype = autocast_dtype("auto", device) if device.type == "cuda" else None
    feats, labels = [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            f = embed(batch.images.to(device, non_blocking=True)).float()
        feats.append(F.normalize(f, dim=1) if l2_normalize else f)
        labels.append(batch.labels.to(device, non_blocking=True))
    return torch.cat(feats), torch.cat(labels)


def extract_features(embed: Embed, dataset, device: torch.device, batch_size: int = 512, limit: int = 0,
                     desc: str = "features", progress: bool = True, l2_normalize: bool = True,
                     num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2-normalised) features and labels of `limit` images spread over the dataset (0: all), in dataset
    order, on the CPU."""
    feats, labels = embed_items(embed, dataset, spread_subset(len(dataset), limit), device, batch_size, num_workers,
                                desc, progress, l2_normalize)
    return feats.cpu(), labels.cpu()


class Selection(torch.utils.data.Dataset):
    """dataset[indices] with batched reads: a loader's positions into `indices` go to the dataset's
    `__getitems__` as one list (the zoo's datasets decode a whole batch at once)."""

    def __init__(self, dataset, indices: Sequence[int] | torch.Tensor) -> None:
        self.dataset, self.indices = dataset, torch.as_tensor(indices, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, positions: list[int]):
        return self.dataset.__getitems__(self.indices[positions].tolist())
