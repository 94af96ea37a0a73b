"""Start N ranks of a command on this machine with the torchrun environment (gloo debugging, tests,
benchmarks): what `torchrun --standalone --nproc-per-node N` does, without its agent, so every rank's
output comes back to the caller."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RankResult:
    rank: int
    returncode: int | None  # None: killed at the timeout
    output: str


def run_ranks(args: list[str], world: int, cwd: Path, threads: int = 1, timeout: float = 600,
              env: dict[str, str] | None = None) -> list[RankResult]:
    """Run `python ARGS` as ranks 0..world-1 (world 1: a plain single process, no rank variables) with
    `threads` torch threads each and `cwd` on PYTHONPATH; on a timeout every rank is killed."""
    port = free_port()
    procs = []
    for rank in range(world):
        rank_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in RANK_VARIABLES}
        rank_env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                        PYTHONPATH=os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")]))
        if world > 1:
            rank_env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, *args], env=rank_env, cwd=cwd, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    results, timed_out = [], False
    for rank, p in enumerate(procs):
        try:
            output, _ = p.communicate(timeout=None if timed_out else timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            for q in procs:
                q.kill()
            output, _ = p.communicate()
        results.append(RankResult(rank, None if timed_out else p.returncode, output))
    return results


def failures(results: list[RankResult], tail: int = 4000) -> str:
    """Every rank's exit and last output when any rank failed; empty when all exited 0."""
    if all(r.returncode == 0 for r in results):
        return ""
    return "\n".join(f"--- rank {r.rank} (exit {'timeout' if r.returncode is None else r.returncode}) ---\n"
                     f"{r.output[-tail:]}" for r in results)
