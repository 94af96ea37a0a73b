"""`ssl-zoo eval knn|linear`: the k-NN and the linear probe of a source's frozen backbone.

The linear probe trains many classifiers on the same features, so a split's features are
extracted once per weights and data setting and cached next to the results (OUT_DIR/features_*.pt).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ssl_zoo.checkpoint import atomic_save, atomic_write_json
from ssl_zoo.config import to_dict
from ssl_zoo.eval.features import extract_features
from ssl_zoo.eval.knn import knn_eval
from ssl_zoo.eval.linear import ProbeResult, linear_probe
from ssl_zoo.eval.source import EvalSource, labelled_splits, load_source
from ssl_zoo.runtime import pick_device


def evaluate_knn(source: str, overrides: list[str] | None = None, k: int = 20, temperature: float = 0.07,
                 device: str = "auto", hub: str | None = None) -> float:
    """k-NN top-1 (%) of a run's or hub model's backbone on its labelled test split."""
    src = load_source(source, overrides, hub)
    dev = pick_device(device)
    src.to(dev)
    train_set, test_set = labelled_splits(src.cfg.data, "k-NN")
    return knn_eval(src.embed, train_set, test_set, dev, k, temperature, src.cfg.eval.batch_size,
                    num_workers=src.cfg.data.num_workers)


def cached_features(src: EvalSource, dataset, split: str, device: torch.device,
                    limit: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features of one split (`limit` images spread over it if > 0), extracted once per weights and
    data setting (OUT_DIR/features_*.pt)."""
    key = json.dumps({"weights": src.identity, "data": to_dict(src.cfg.data), "limit": limit, "subset": "spread"},
                     sort_keys=True)  # "subset": entries of the first-N limit (before) are not reused
    path = src.out_dir / f"features_{split}_{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        return cached["features"], cached["labels"]
    feats, labels = extract_features(src.embed, dataset, device, src.cfg.eval.batch_size, limit, f"{split} features",
                                     num_workers=src.cfg.data.num_workers)
    atomic_save({"features": feats, "labels": labels}, path)
    return feats, labels


def evaluate_linear(source: str, overrides: list[str] | None = None, device: str = "auto", hub: str | None = None,
                    from_scratch: bool = False, train_limit: int = 0, test_limit: int = 0,
                    **probe_args) -> tuple[ProbeResult, Path]:
    """Linear probe of a run's or hub model's backbone (or, `from_scratch`, of the same network freshly
    initialised), on `train_limit`/`test_limit` images spread over each split (0: all); the result is
    also written to OUT_DIR/linear_probe[_scratch].json."""
    src = load_source(source, overrides, hub, pretrained=not from_scratch)
    dev = pick_device(device)
    src.to(dev)
    train_set, test_set = labelled_splits(src.cfg.data, "a linear probe")
    train = cached_features(src, train_set, "train", dev, train_limit)
    test = cached_features(src, test_set, "test", dev, test_limit)
    result = linear_probe(*train, *test, **probe_args)
    out = src.out_dir / ("linear_probe_scratch.json" if from_scratch else "linear_probe.json")
    atomic_write_json({"step": src.step, "from_scratch": from_scratch, "train_images": len(train[0]),
                       "test_images": len(test[0]), **result.to_dict()}, out)
    return result, out
