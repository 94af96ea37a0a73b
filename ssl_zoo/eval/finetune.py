"""SimCLRv2 step 2: fine-tune on a class-balanced, seeded fraction of the labels.

SimCLRv2 fine-tunes from the first projection-head layer (methods say which layer they keep
through `Method.finetune_head`); other methods from the backbone. Hub models carry only the
backbone, so they fine-tune from it. The recipe follows the SimCLR papers' fine-tuning:
momentum SGD (no weight decay, no warm-up) at lr 0.005 x sqrt(batch) -- 0.16 at batch 1024 --,
a zero-initialised logits layer, crop + flip only, 60 epochs on 1% and 30 epochs on 10% of the
labels; 30 on more labels is our choice. `recipe="mae"` swaps in the optimiser of MAE's fine-tuning of
ViTs (He et al. 2022, official main_finetune for ViT-B: AdamW at 5e-4 x batch/256, weight decay 0.05, 5
warm-up epochs (at most 10% of a shorter run), cosine to 1e-6), the one MAE-style papers (GMML, SatMAE++) fine-tune with: momentum SGD
without warm-up diverged on SatMAE++'s ViT (loss 2.30 -> 2.8 in 25 steps, 10.2% after 450). Layer-wise
lr decay, mixup, cutmix, label smoothing and random erasing of that recipe are not applied.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ssl_zoo.backbones import is_vit
from ssl_zoo.checkpoint import atomic_write_json
from ssl_zoo.config import ConfigError, OptimConfig, to_dict
from ssl_zoo.eval.classifier import Classifier, save_classifier, top1_accuracy
from ssl_zoo.eval.supervised import Recipe, train_on
from ssl_zoo.eval.source import EvalSource, labelled_splits, load_source
from ssl_zoo.optim import scaled_lr
from ssl_zoo.runtime import pick_device


def parse_label_fraction(text: str) -> float:
    """'1%' -> 0.01; any percentage in (0, 100]."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", str(text))
    value = float(match.group(1)) / 100 if match else -1.0
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"--labels {text!r}: give a percentage of the labelled train split in (0%, 100%], "
                          "e.g. 1%, 10% or 100%")
    return value


def label_tag(fraction: float) -> str:
    """A file-name-safe name for a fraction: 0.01 -> '1pct', 0.005 -> '0.5pct'."""
    return f"{fraction * 100:g}pct"


def balanced_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of `fraction` of the labels with the same count from every class.

    Each class gives round(fraction * N / classes) images (fewer only if it has fewer), drawn by a
    seeded permutation: the same labels, fraction and seed always give the same subset. 100% is
    every label, balanced or not.
    """
    if fraction >= 1.0:
        return torch.arange(len(labels))
    classes = torch.unique(labels)
    per_class = max(1, round(fraction * len(labels) / len(classes)))
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in classes:
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return torch.cat(chosen).sort().values


RECIPES = ("simclr", "mae")


def default_recipe(backbone: nn.Module) -> str:
    """`--recipe auto`: MAE's optimiser for ViTs (momentum SGD without warm-up diverged on SatMAE++'s ViT),
    SimCLR's for convolutional networks (what SimCLRv2's ResNets were fine-tuned with)."""
    return "mae" if is_vit(backbone) else "simclr"


def finetune_recipe(fraction: float, batch_size: int = 1024, recipe: str = "simclr",
                    epochs: float | None = None) -> Recipe:
    """The SimCLR fine-tuning recipe for a label fraction, or with MAE's optimiser (see the module docstring);
    `epochs` replaces the default length (60 epochs on 1% of the labels, else 30)."""
    if recipe not in RECIPES:
        raise ConfigError(f"fine-tuning recipe {recipe!r}: valid choices are {', '.join(RECIPES)}")
    epochs = epochs or (60 if fraction <= 0.01 else 30)
    if recipe == "mae":
        # MAE warms up 5 epochs of 100 (ViT-B) or of 50 (ViT-L/H); a shorter run warms up 10% of it,
        # not all of it (5 epochs of a 5-epoch run never reached the peak lr)
        optim = OptimConfig(name="adamw", base_lr=5e-4, lr_scaling="linear", lr_reference_batch=256,
                            betas=(0.9, 0.999), weight_decay=0.05, warmup_epochs=min(5.0, 0.1 * epochs), min_lr=1e-6)
    else:
        optim = OptimConfig(name="sgd", base_lr=0.005, lr_scaling="sqrt", lr_reference_batch=1, momentum=0.9,
                            weight_decay=0.0, warmup_epochs=0.0)
    return Recipe(epochs=epochs, batch_size=batch_size, optim=optim)


@dataclass
class FinetuneResult:
    test_top1: float
    labels: str
    label_fraction: float
    labelled_images: int
    from_scratch: bool
    step: int
    epochs: float
    batch_size: int
    peak_lr: float
    optimizer: str  # sgd (the SimCLR recipe) or adamw (MAE's)
    seed: int
    train_loss: float
    test_images: int
    model: str  # the fine-tuned classifier's folder


def finetune(source: str | EvalSource, fraction: float, recipe: Recipe, overrides: list[str] | None = None,
             device: str = "auto", hub: str | None = None, from_scratch: bool = False,
             progress: bool = True) -> tuple[FinetuneResult, Path]:
    """Fine-tune `source` (run, checkpoint or hub model) on a balanced label subset; report test top-1.

    Writes OUT/finetune_<pct>.json and the classifier folder OUT/finetune_<pct>/ (OUT = RUN/eval,
    or the cache for hub models); `from_scratch` trains the same network from random weights
    (files tagged `_scratch`), the baseline pretraining must beat. `source` may be an EvalSource
    already loaded (with `pretrained=not from_scratch`; overrides and hub are then not used).
    """
    src = source if isinstance(source, EvalSource) else load_source(source, overrides, hub, pretrained=not from_scratch)
    dev = pick_device(device)
    train_set, test_set = labelled_splits(src.cfg.data, "fine-tuning")
    subset = balanced_subset(train_set.labels, fraction, recipe.seed)
    num_classes = int(getattr(train_set, "num_classes", 0) or train_set.labels.max() + 1)
    model = Classifier(src.backbone, src.head, num_classes, src.view).to(dev)
    tag = f"finetune_{label_tag(fraction)}" + ("_scratch" if from_scratch else "")
    train_loss = train_on(model, train_set, subset,
                          lambda views, batch: F.cross_entropy(model(views).float(), batch.labels),  # fp32 loss
                          recipe, src.view.side, dev, tag, progress)
    top1 = top1_accuracy(model, test_set, dev, src.cfg.eval.batch_size, recipe.test_limit, progress=progress)
    folder = src.out_dir / tag
    batch = min(recipe.batch_size, len(subset))
    result = FinetuneResult(top1, f"{fraction * 100:g}%", fraction, len(subset), from_scratch, src.step,
                            recipe.epochs, batch, scaled_lr(recipe.optim, batch), recipe.optim.name, recipe.seed,
                            train_loss, min(recipe.test_limit or len(test_set), len(test_set)), str(folder))
    save_classifier(model, folder, {"source": src.identity, "step": src.step, "data": to_dict(src.cfg.data),
                                    "result": asdict(result)})
    out = src.out_dir / f"{tag}.json"
    atomic_write_json(asdict(result), out)
    return result, out
