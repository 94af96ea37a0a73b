"""Weighted cosine k-NN classification (as in DINO: k=20, T=0.07)."""

from __future__ import annotations

import torch

from ssl_zoo.eval.features import extract_features


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
