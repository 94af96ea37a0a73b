"""Count the calls that make a GPU stream finish before Python can go on, on any device.

Why a TorchFunctionMode on CPU: no GPU is lent to the project, and on CUDA these very calls are the
host syncs (`torch.cuda.set_sync_debug_mode` finds them there; benchmarks/gpu_check.py uses it). Counted:
reading a value on the host (`.item()`, `bool()`, `int()`, `float()`, `.tolist()`, `.numpy()`), shapes
that depend on data (boolean-mask indexing, `nonzero`, `masked_select`, `unique`), and tensors built from
Python data on a device inside the step (`torch.tensor(..., device=...)` and indexing with a Python
list, a host-to-device copy per call on CUDA; without `device` the tensor stays on the CPU, and a 0-dim
CPU tensor joins CUDA ops as a scalar).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

Tensor = torch.Tensor
HOST_READS = {Tensor.item, Tensor.__bool__, Tensor.__int__, Tensor.__float__, Tensor.__index__, Tensor.tolist,
              Tensor.numpy}
DATA_DEPENDENT = {torch.nonzero, Tensor.nonzero, torch.masked_select, Tensor.masked_select, torch.unique,
                  Tensor.unique, torch.argwhere, torch.where}  # torch.where: only its 1-argument form
FROM_PYTHON = {torch.tensor, torch.as_tensor}


def _is_bool_mask(index: object) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in items)


def _is_list_index(index: object) -> bool:
    """A Python list as an index becomes a CPU tensor that is copied to the device on every call."""
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, list) for i in items)


def _describe(func: object) -> str:
    return getattr(func, "__name__", repr(func))


class HostSyncCounter(TorchFunctionMode):
    """`with HostSyncCounter() as syncs: ...`, then `syncs.total` and `syncs.calls` (name -> count)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_READS:
            self.calls[_describe(func)] += 1
        elif func in DATA_DEPENDENT and (func is not torch.where or len(args) + len(kwargs) == 1):
            self.calls[_describe(func)] += 1
        elif func in FROM_PYTHON and args and not isinstance(args[0], Tensor) and kwargs.get("device") is not None:
            self.calls[_describe(func)] += 1
        elif func is Tensor.__getitem__ and len(args) > 1 and _is_bool_mask(args[1]):
            self.calls["boolean-mask indexing"] += 1
        elif func is Tensor.__getitem__ and len(args) > 1 and _is_list_index(args[1]):
            self.calls["list indexing"] += 1
        return func(*args, **kwargs)
