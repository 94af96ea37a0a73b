"""Weighted cosine k-NN classification (as in DINO: k=20, T=0.07)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ssl_zoo.data import build_loader


@torch.no_grad()
def extract_features(embed, dataset, device: torch.device, batch_size: int = 512, limit: int = 0,
                     desc: str = "features", progress: bool = True,
                     l2_normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2-normalised) features and labels of the first `limit` images (0: all), in dataset order."""
    n = len(dataset) if not limit else min(limit, len(dataset))
    subset = torch.utils.data.Subset(dataset, range(n)) if n < len(dataset) else dataset
    loader = build_loader(_Batched(subset), batch_size, num_workers=0)
    feats, labels = [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        f = embed(batch.images.to(device))
        feats.append((F.normalize(f.float(), dim=1) if l2_normalize else f.float()).cpu())
        labels.append(batch.labels)
    return torch.cat(feats), torch.cat(labels)


class _Batched(torch.utils.data.Dataset):
    """Route Subset indices to the base dataset's batched `__getitems__`."""

    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, indices: list[int]):
        if isinstance(self.ds, torch.utils.data.Subset):
            return self.ds.dataset.__getitems__([self.ds.indices[i] for i in indices])
        return self.ds.__getitems__(indices)


def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                k: int = 20, temperature: float = 0.07, num_classes: int | None = None,
                chunk: int = 1024) -> torch.Tensor:
    """Votes of the k most cosine-similar training samples, each weighted by exp(sim / T)."""
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, train_feats.shape[0])
    preds = []
    for start in range(0, test_feats.shape[0], chunk):
        sims = test_feats[start:start + chunk] @ train_feats.T
        top_sim, top_idx = sims.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sims.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy in percent."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes)
    return 100.0 * (pred == test_labels).float().mean().item()


def knn_eval(embed, train_set, test_set, device: torch.device, k: int = 20, temperature: float = 0.07,
             batch_size: int = 512, train_limit: int = 0, test_limit: int = 0, progress: bool = True) -> float:
    """k-NN top-1 (%) of `embed` features: train split as memory, test split as queries."""
    tr_f, tr_l = extract_features(embed, train_set, device, batch_size, train_limit, "k-NN train features", progress)
    te_f, te_l = extract_features(embed, test_set, device, batch_size, test_limit, "k-NN test features", progress)
    return knn_accuracy(tr_f, tr_l, te_f, te_l, k, temperature)
