"""Process-group set-up and the few collectives the trainer and methods need.

Methods never read the world size themselves: they call these helpers, which degrade to the
single-process case when no process group exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_layout() -> DistInfo:
    """Rank layout from torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or an srun-launched SLURM step."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in env:
        return DistInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return DistInfo()


def _slurm_master_addr() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")
    import subprocess

    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return nodelist.split(",")[0]


def rendezvous_port(job_id: str) -> int:
    """A port from the job id, so jobs sharing a node don't clash: 20000-31999, below Linux's ephemeral
    range (32768-60999), where a port may already be taken by an outgoing connection."""
    return 20000 + int("".join(filter(str.isdigit, str(job_id))) or 0) % 12000


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by the environment (no-op for a single process)."""
    info = env_layout()
    if info.world_size == 1 or dist.is_initialized():
        return info if not dist.is_initialized() else DistInfo(dist.get_rank(), dist.get_world_size(), info.local_rank)
    if "MASTER_ADDR" not in os.environ:
        os.environ["MASTER_ADDR"] = _slurm_master_addr()
    os.environ.setdefault("MASTER_PORT", str(rendezvous_port(os.environ.get("SLURM_JOB_ID", "0"))))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())  # one GPU per task: device 0
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        t = t.clone()
        dist.all_reduce(t)
        t /= world_size()
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over ranks (e.g. the slowest rank's step time)."""
    if is_distributed():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def any_flags(flags: torch.Tensor | list[bool], device: torch.device) -> list[bool]:
    """Each flag true on every rank if it is true on any rank (keeps ranks in lock-step on stop/NaN):
    one all-reduce and one host sync for all of them."""
    t = torch.as_tensor(flags, dtype=torch.float32, device=device)
    return [bool(v > 0) for v in all_reduce_max(t).tolist()]


def all_gather_object(obj: object) -> list:
    if not is_distributed():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave together: a rank that tears gloo down while a peer still talks to it can make that
    peer abort at exit ("terminate called without an active exception", seen in a clean-clone run)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (e.g. counts that each rank made on its own share)."""
    if is_distributed():
        t = t.clone()
        dist.all_reduce(t)
    return t


def shard_positions(n: int) -> torch.Tensor:
    """This rank's share of n items: a block of ceil(n / W) consecutive positions (W: the world size),
    the same count on every rank, as all_gather needs. Position p reads item p % n; positions >= n
    pad the last blocks and are dropped again by `gather_shards`."""
    per = -(-n // world_size())
    return torch.arange(rank() * per, (rank() + 1) * per)


def gather_shards(local: torch.Tensor, n: int) -> torch.Tensor:
    """The n rows of every rank's `shard_positions(n)` share, in item order, on every rank. Gathered
    into one tensor, so the padding at its end is cut off without a copy."""
    if not is_distributed():
        return local[:n]
    out = local.new_empty((world_size() * local.shape[0], *local.shape[1:]))
    dist.all_gather_into_tensor(out, local.contiguous())
    return out[:n]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them before each
    forward, but each rank's forward then updates its own copy; evaluation shared over the ranks must
    embed with one set, the one rank 0 checkpoints."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
