"""Weighted cosine k-NN classification (as in DINO: k=20, T=0.07), sharded over the ranks of a DDP run.

An ImageNet-sized k-NN (1.28M train + 50k test images) repeated whole on every rank would take hours
on each GPU; here each rank embeds a disjoint share of both splits, the train features are
all-gathered into one memory bank on every rank's device, each rank votes for its own share of the
test images (top-k in chunks on the device), and the correct counts are summed. Imports only the
engine, so the trainer's periodic k-NN uses it.
"""

from __future__ import annotations

import torch

from ssl_zoo import distributed as dist_utils
from ssl_zoo.data.subset import spread_subset
from ssl_zoo.eval.features import Embed, embed_items

SIMILARITY_ELEMENTS = 2**26  # test x train similarities held at once (256 MiB in fp32)


def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                k: int = 20, temperature: float = 0.07, num_classes: int | None = None,
                chunk: int = 0) -> torch.Tensor:
    """Votes of the k most cosine-similar training samples, each weighted by exp(sim / T), computed on the
    features' device in chunks of `chunk` test rows (0: as many as fit SIMILARITY_ELEMENTS)."""
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, train_feats.shape[0])
    chunk = chunk or max(1, SIMILARITY_ELEMENTS // max(1, train_feats.shape[0]))
    preds = [torch.empty(0, dtype=torch.long, device=test_feats.device)]
    for start in range(0, test_feats.shape[0], chunk):
        sims = test_feats[start:start + chunk] @ train_feats.T
        top_sim, top_idx = sims.topk(k, dim=1)
        votes = torch.zeros(sims.shape[0], num_classes, device=sims.device)
        votes.scatter_add_(1, train_labels[top_idx], (top_sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy in percent."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes)
    return 100.0 * (pred == test_labels).float().mean().item()


def _shard(embed: Embed, dataset, limit: int, device: torch.device, batch_size: int, num_workers: int,
           desc: str, progress: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """This rank's share of `limit` images spread over the dataset (0: all; data.subset.spread_subset):
    features, labels, which rows are real (not padding), and the number of images shared out."""
    chosen = spread_subset(len(dataset), limit)
    n = len(chosen)
    positions = dist_utils.shard_positions(n)
    feats, labels = embed_items(embed, dataset, chosen[positions % n], device, batch_size, num_workers, desc,
                                progress)
    return feats, labels, (positions < n).to(device), n


def knn_eval(embed: Embed, train_set, test_set, device: torch.device, k: int = 20, temperature: float = 0.07,
             batch_size: int = 512, train_limit: int = 0, test_limit: int = 0, progress: bool = True,
             num_workers: int = 0) -> float:
    """k-NN top-1 (%) of `embed` features: train split as memory, test split as queries.

    Under DDP every rank must call it (collectives) and every rank gets the same result; without a
    process group it is the plain single-process evaluation.
    """
    train_feats, train_labels, _, n_train = _shard(embed, train_set, train_limit, device, batch_size, num_workers,
                                                   "k-NN train features", progress)
    bank, bank_labels = (dist_utils.gather_shards(t, n_train) for t in (train_feats, train_labels))
    test_feats, test_labels, real, _ = _shard(embed, test_set, test_limit, device, batch_size, num_workers,
                                              "k-NN test features", progress)
    pred = knn_predict(bank, bank_labels, test_feats, k, temperature)
    counts = dist_utils.all_reduce_sum(torch.stack([((pred == test_labels) & real).sum(), real.sum()]))
    correct, total = counts.tolist()
    return 100.0 * correct / total
