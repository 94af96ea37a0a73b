"""Optimiser construction, the lr scaling rule, and per-step lr / weight-decay schedules."""

from __future__ import annotations

import math

import torch

from ssl_zoo.config import OptimConfig
from ssl_zoo.lars import SyncFreeLARS
from ssl_zoo.schedules import cosine, warmup_cosine

FUSED_ADAMW_DEVICES = {"cpu", "cuda"}  # torch >= 2.4 has a fused AdamW kernel for both


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """Peak lr from the base lr and the global batch (all ranks, all accumulation steps)."""
    ratio = global_batch / cfg.lr_reference_batch
    if cfg.lr_scaling == "linear":
        return cfg.base_lr * ratio
    if cfg.lr_scaling == "sqrt":
        return cfg.base_lr * math.sqrt(ratio)
    return cfg.base_lr


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Groups keep `lr_scale` (layer-wise multipliers) and `wd_scale` (1 where decay applies)."""
    for g in groups:
        g.setdefault("lr_scale", 1.0)
        g["wd_scale"] = 1.0 if g.get("weight_decay", cfg.weight_decay) > 0 else 0.0
    if cfg.name == "adamw":
        # fused wherever torch has the kernel (CUDA and CPU): one kernel for all parameters, and the step
        # counters stay on the parameters' device, so the step never reads one on the host
        devices = {p.device.type for g in groups for p in g["params"]}
        fused = True if devices and devices <= FUSED_ADAMW_DEVICES else None
        return torch.optim.AdamW(groups, lr=cfg.base_lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "lars":
        # lightly's LARS rule (groups with weight_decay 0, BN and biases, keep out of the trust ratio), sync-free
        return SyncFreeLARS(groups, lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                    trust_coefficient=cfg.lars_eta)
    raise ValueError(f"optim.name: unknown optimiser {cfg.name!r}; valid choices: adamw, sgd, lars")


class Schedule:
    """lr: warm-up then cosine to min_lr; weight decay: cosine from start to end (if end >= 0)."""

    def __init__(self, cfg: OptimConfig, peak_lr: float, steps_per_epoch: float, total_steps: int) -> None:
        self.cfg, self.peak_lr, self.total_steps = cfg, peak_lr, total_steps
        self.warmup_steps = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total_steps)

    def lr(self, step: int) -> float:
        return warmup_cosine(self.peak_lr, self.cfg.min_lr, self.warmup_steps, self.total_steps, step)

    def weight_decay(self, step: int) -> float:
        if self.cfg.weight_decay_end < 0:
            return self.cfg.weight_decay
        return cosine(self.cfg.weight_decay, self.cfg.weight_decay_end, step / max(self.total_steps, 1))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> tuple[float, float]:
        lr, wd = self.lr(step), self.weight_decay(step)
        for g in optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
            g["weight_decay"] = wd * g["wd_scale"]
        return lr, wd


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float, mode: str) -> torch.Tensor:
    """Clip as the method asks; the global grad norm before clipping, as a device tensor (no host sync)."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if max_norm > 0 and mode == "global":
        return torch.nn.utils.clip_grad_norm_(grads, max_norm)
    total = torch.nn.utils.get_total_norm([p.grad for p in grads])
    if max_norm > 0:  # per-parameter tensor, as DINO's official clip_gradients
        for p in grads:
            torch.nn.utils.clip_grad_norm_([p], max_norm)
    return total
