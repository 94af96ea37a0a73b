"""LARS without host syncs: lightly's update rule, with its per-parameter branches as `torch.where`.

Why not lightly's LARS as it is: its step asks `if p_norm != 0 and g_norm != 0` of device tensors,
two host syncs per parameter (46 per step for a ResNet-18 + head), each one stalling a GPU's queue.
The arithmetic, the defaults and the optimizer state (`momentum_buffer`) are lightly's, so checkpoints
written with lightly's class load unchanged; tests/test_optim.py checks the updates agree.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightly.utils.lars import LARS


class SyncFreeLARS(LARS):
    """lightly.utils.lars.LARS (SimCLR's LARS: trust ratio on weights with weight decay, none on BN and
    biases) whose step never reads a device value on the host."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            weight_decay, momentum = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if weight_decay != 0:  # a Python float: no sync
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d_p)
                    trust = group["trust_coefficient"] * p_norm / (g_norm + p_norm * weight_decay + group["eps"])
                    # lightly: a zero weight or gradient norm leaves the gradient as it is (no decay either)
                    adapt = (p_norm != 0) & (g_norm != 0)
                    d_p = torch.where(adapt, d_p.add(p, alpha=weight_decay) * trust, d_p)
                if momentum != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        buf = state["momentum_buffer"]
                        buf.mul_(momentum).add_(d_p, alpha=1 - group["dampening"])
                    d_p = d_p.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.add_(d_p, alpha=-group["lr"])
        return loss
