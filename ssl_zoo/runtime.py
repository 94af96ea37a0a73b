"""Where and how numbers are computed: device, precision, RNG. Shared by the trainer and evaluation.

Why a module of its own: the right precision depends on the hardware a run lands on, not on the
config's author's machine, so `auto` is resolved here from what the device can do natively.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`cuda`, `cpu` or `auto` (CUDA where present) as a torch.device for this rank."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available; use train.device=cpu or auto")
        # modulo: where SLURM binds one GPU per task, each task sees a single device 0
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def configure_cuda(fixed_shapes: bool = True) -> None:
    """Fast defaults for CUDA runs: TF32 for fp32 matmuls and convolutions (the autocast regions run in
    bf16/fp16 anyway), and cuDNN autotuning, which pays off when input shapes do not change."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = fixed_shapes


# oneDNN runs torch's CPU bf16 matmuls and convolutions; capped (ONEDNN_MAX_CPU_ISA) at one of these
# instruction sets it has no bf16 instructions, whatever the CPU has
_ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """AVX512-BF16 or AMX-BF16 (and oneDNN allowed to use them): bf16 autocast is ~1.3-1.6x faster than
    fp32 there. Elsewhere it is emulated: ResNet-18 measured 33x slower than fp32 on an AVX2-only EPYC."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    if cap.upper() in _ONEDNN_ISAS_WITHOUT_BF16:
        return False
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision a run uses: `auto` picks what the hardware does natively.

    CUDA: bf16 where supported, else fp16 (with the trainer's grad scaler). CPU: bf16 only with
    native bf16 instructions, else fp32. An explicit choice is kept (bf16 on a CPU without native
    support is allowed, with a warning: it is typically tens of times slower).
    """
    if requested not in ("auto", *AUTOCAST_DTYPES):
        raise ValueError(f"train.precision: invalid value {requested!r}; valid choices: auto, fp32, bf16, fp16")
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if requested == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("train.precision=bf16 on a CPU without native bf16 (avx512_bf16/amx_bf16): autocast is "
                      "emulated there and typically tens of times slower than fp32; use train.precision=auto")
    return requested


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision setting (`auto` resolved first); None means fp32."""
    return AUTOCAST_DTYPES[resolve_precision(precision, device)]


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def rng_untouched(device: torch.device) -> Iterator[None]:
    """Run side work (evaluation, image logging) without moving the training RNG streams."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Random initialisation that is the same every time (feature caches key on it), global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
