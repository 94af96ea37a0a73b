"""Linear probe on frozen features: logistic regression with an lr x weight-decay sweep.

The sweep is scored on a seeded validation split carved from the train features; the winner is
retrained on the whole train split and scored once on the test split, so the test set never
picks hyperparameters.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ssl_zoo.config import ConfigError


@dataclass
class ProbeResult:
    test_top1: float
    val_top1: float
    lr: float
    weight_decay: float
    epochs: int
    sweep: list  # [(lr, weight_decay, val_top1), ...]

    def to_dict(self) -> dict:
        return asdict(self)


def validation_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices): a seeded permutation, the same for the same n/fraction/seed."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(n * fraction)))
    return order[n_val:], order[:n_val]


def fit_logistic(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, lr: float, weight_decay: float,
                 epochs: int, batch_size: int = 1024, seed: int = 0) -> torch.nn.Linear:
    """Multinomial logistic regression (AdamW, cosine lr) on standardised features."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Linear(feats.shape[1], num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(feats) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    for _ in range(epochs):
        for idx in torch.randperm(len(feats), generator=gen).split(batch_size):
            loss = F.cross_entropy(model(feats[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model


@torch.no_grad()
def top1(model: torch.nn.Linear, feats: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (model(feats).argmax(1) == labels).float().mean().item()


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, lrs: tuple[float, ...] = (1e-3, 1e-2),
                 weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-2), epochs: int = 30,
                 val_fraction: float = 0.1, seed: int = 0) -> ProbeResult:
    """Pick (lr, wd) on a validation split of train, retrain on all of train, report test top-1 (%)."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1), got {val_fraction}")
    if not lrs or not weight_decays or epochs < 1:
        raise ConfigError(f"a linear probe needs lrs, weight decays and epochs >= 1; got {lrs}, {weight_decays}, {epochs}")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    tr_idx, val_idx = validation_split(len(train_feats), val_fraction, seed)
    sub_tr, sub_val = standardise(train_feats[tr_idx], train_feats[val_idx])
    sweep = []
    for lr, wd in itertools.product(lrs, weight_decays):
        model = fit_logistic(sub_tr, train_labels[tr_idx], num_classes, lr, wd, epochs, seed=seed)
        sweep.append((lr, wd, top1(model, sub_val, train_labels[val_idx])))
    lr, wd, val_top1 = max(sweep, key=lambda row: row[2])
    full_tr, full_te = standardise(train_feats, test_feats)
    model = fit_logistic(full_tr, train_labels, num_classes, lr, wd, epochs, seed=seed)
    return ProbeResult(top1(model, full_te, test_labels), val_top1, lr, wd, epochs, sweep)
