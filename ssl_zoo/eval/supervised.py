"""The one training loop of fine-tuning and distillation: crop + flip views on the device, a loss, SGD.

SimCLRv2 fine-tunes and distils with random crop and horizontal flip only, so the views come
from the zoo's on-device ViewAugment with every colour operation off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import timm.optim
import torch
from torch import nn
from tqdm import tqdm

from ssl_zoo.augment import ViewAugment, ViewSpec
from ssl_zoo.config import ConfigError, OptimConfig
from ssl_zoo.data import Batch, build_loader
from ssl_zoo.eval.features import Selection
from ssl_zoo.optim import Schedule, build_optimizer, scaled_lr
from ssl_zoo.errors import NonFiniteLossError
from ssl_zoo.runtime import cpu_has_native_bf16


@dataclass
class Recipe:
    """Epochs, batch and optimiser of a fine-tuning or distillation run."""

    epochs: float
    batch_size: int
    optim: OptimConfig
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop's default, as in SimCLR fine-tuning
    seed: int = 0
    test_limit: int = 0  # score only N test images spread over the split (0: the whole test split)

    def check(self) -> None:
        if self.epochs <= 0 or self.batch_size < 1:
            raise ConfigError(f"epochs must be > 0 and batch size >= 1; got {self.epochs} and {self.batch_size}")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ConfigError(f"crop scale must satisfy 0 < min <= max <= 1; got {self.crop_scale}")


LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]


def train_on(model: nn.Module, dataset, indices: torch.Tensor, loss_of: LossFn, recipe: Recipe,
             side: int, device: torch.device, desc: str, progress: bool = True) -> float:
    """Train `model` on dataset[indices] for recipe.epochs; `loss_of(views, batch)` gives the loss.

    views are crop+flip views in [0, 1] at `side` (models normalise themselves). Returns the mean
    loss of the last epoch. Stops with NonFiniteLossError on a NaN/inf loss.
    """
    recipe.check()
    torch.manual_seed(recipe.seed)
    batch_size = min(recipe.batch_size, len(indices))
    steps_per_epoch = len(indices) // batch_size
    total = max(1, math.ceil(recipe.epochs * steps_per_epoch))
    augment = ViewAugment(ViewSpec(size=side, scale=recipe.crop_scale, interpolation="bicubic", jitter_p=0.0,
                                   gray_p=0.0, blur_p=0.0), "none")
    groups = timm.optim.param_groups_weight_decay(model, weight_decay=recipe.optim.weight_decay)
    optimizer = build_optimizer([g for g in groups if g["params"]], recipe.optim)
    schedule = Schedule(recipe.optim, scaled_lr(recipe.optim, batch_size), steps_per_epoch, total)
    sampler = torch.utils.data.RandomSampler(indices.tolist(), replacement=False, num_samples=total * batch_size,
                                             generator=torch.Generator().manual_seed(recipe.seed))
    loader = build_loader(Selection(dataset, indices), batch_size, num_workers=0, sampler=sampler)
    # bf16 where the hardware does it natively (the trainer's precision=auto; fp16 would need a grad scaler)
    bf16 = device.type == "cuda" or cpu_has_native_bf16()
    model.train()
    recent: list[float] = []
    bar = tqdm(loader, total=total, desc=desc, disable=not progress, leave=False)
    for step, batch in enumerate(bar):
        schedule.apply(optimizer, step)
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(augment(batch.images)[0], batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"{desc}: the loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recent = (recent + [loss.item()])[-steps_per_epoch:]
        bar.set_postfix(loss=f"{recent[-1]:.4f}")
    return sum(recent) / len(recent)
