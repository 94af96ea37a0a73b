"""A backbone (plus the head layer fine-tuning keeps) with a linear classifier, and its safe on-disk form.

Fine-tuned and distilled classifiers are saved as a folder: `model.safetensors` (never a pickle)
and `classifier.json`, which says how to rebuild the network (backbone spec, kept head layer,
classes, input view) and where it came from. `ssl-zoo distill` reads its teacher from such a folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ssl_zoo.augment import EvalView, Normalize
from ssl_zoo.backbones import BackboneSpec, rebuild_backbone, spec_of
from ssl_zoo.checkpoint import CheckpointError, atomic_write_json
from ssl_zoo.eval.features import extract_features
from ssl_zoo.methods.base import linear_bn_relu

CLASSIFIER_FILE = "classifier.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "ssl-zoo-classifier/1"


class Classifier(nn.Module):
    """logits = fc(head(backbone(view(images)))); `images` uint8 or [0, 1] at any side."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None, num_classes: int, view: EvalView) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        width = head[0].out_features if head is not None else backbone.num_features
        self.fc = nn.Linear(width, num_classes)
        nn.init.zeros_(self.fc.weight)  # SimCLR's zero-initialised logits layer: start from uniform predictions
        nn.init.zeros_(self.fc.bias)
        self.view = view

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.backbone(self.view(images))))

    def describe(self) -> dict:
        """What `load_classifier` needs to rebuild this network without its weights."""
        head = None if isinstance(self.head, nn.Identity) else [self.head[0].in_features, self.head[0].out_features]
        return {"backbone": asdict(spec_of(self.backbone)), "head": head, "num_classes": self.fc.out_features,
                "view": self.view.describe()}


@torch.no_grad()
def top1_accuracy(model: Classifier, dataset, device: torch.device, batch_size: int = 512, limit: int = 0,
                  desc: str = "test top-1", progress: bool = True) -> float:
    """Top-1 (%) of the classifier on `limit` images spread over `dataset` (0: all)."""
    was_training = model.training
    logits, labels = extract_features(model.eval(), dataset, device, batch_size, limit, desc, progress,
                                      l2_normalize=False)
    model.train(was_training)
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


def save_classifier(model: Classifier, folder: Path, provenance: dict) -> Path:
    """Weights (safetensors) and classifier.json, each written atomically; returns the folder."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / f".{WEIGHTS_FILE}.{os.getpid()}.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, folder / WEIGHTS_FILE)
    atomic_write_json({"format": FORMAT, **model.describe(), **provenance}, folder / CLASSIFIER_FILE)
    return folder


def load_classifier(folder: Path) -> tuple[Classifier, dict]:
    """The saved classifier (eval mode) and its classifier.json; clear errors for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_path, weights = folder / CLASSIFIER_FILE, folder / WEIGHTS_FILE
    if not meta_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{folder} is not a classifier folder from `ssl-zoo finetune` or `ssl-zoo distill` "
                              f"(needs {CLASSIFIER_FILE} and {WEIGHTS_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path} is not valid JSON: {e}") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    backbone = rebuild_backbone(BackboneSpec(**meta["backbone"]))
    head = linear_bn_relu(*meta["head"]) if meta["head"] else None
    view = meta["view"]
    model = Classifier(backbone, head, int(meta["num_classes"]),
                       EvalView(int(view["side"]), Normalize(stats=(view["mean"], view["std"])),
                                resize=bool(view.get("resize", False)), minmax=bool(view.get("minmax", False))))
    try:
        model.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{weights} does not hold this classifier's weights: {e}") from e
    return model.eval(), meta
