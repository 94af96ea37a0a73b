"""The callable submitit runs on every task: one rank of a training run, requeued on SLURM's warning.

Rank layout and the rendezvous address come from submitit's JobEnvironment and are handed to the
trainer as torchrun-style variables. On SIGUSR2 (`--signal=USR2@signal_delay_s` before the time limit,
or a preemption where the site sends it) and, with the profile's `requeue_on_sigterm` (default), on
SIGTERM (what SLURM sends on preemption), the trainer writes its checkpoint at the next step boundary;
rank 0 then calls submitit's own USR2 handler, which calls `checkpoint()` (a fresh job on the same run
directory) and requeues the job. The requeued job resumes from that checkpoint: same step, same data
position.

Why the signals go through the trainer and not straight to submitit: submitit's handlers (installed
before this callable runs, submitit/core/job_environment.py) requeue on USR2 at once, from inside
whatever the process is doing (mid-step, mid-collective on one rank only), and merely log SIGTERM
("bypass"): SIGTERM also arrives on `scancel` and, after submitit's own `scontrol requeue`, at the
old job's end, so submitit cannot requeue on it. Here `StopSignal` replaces both handlers while
training, every rank stops at the same step boundary (the flag is all-reduced), the checkpoint is
written, and only then is submitit's handler called by hand. For SIGTERM the scheduler is first asked
whether the job is being preempted or cancelled (ssl_zoo.launch.preemption), so a user's scancel
still ends the job. After `fit()` submitit's handlers are back, so the SIGTERM that follows a requeue is
only logged.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import signal
import traceback
from pathlib import Path

import submitit
import torch

from ssl_zoo.checkpoint import atomic_write_json, atomic_write_text
from ssl_zoo.experiment import load_config
from ssl_zoo.distributed import rendezvous_port
from ssl_zoo.errors import RunDirBusyError
from ssl_zoo.launch.preemption import requeue_after_sigterm
from ssl_zoo.run_dir import run_dir_for


def rendezvous_env(env: submitit.JobEnvironment) -> dict[str, str]:
    """torchrun-style variables for this task (the job id picks a port, so jobs on one node don't clash)."""
    return {
        "RANK": str(env.global_rank), "WORLD_SIZE": str(env.num_tasks), "LOCAL_RANK": str(env.local_rank),
        "MASTER_ADDR": env.hostnames[0] if env.hostnames else "127.0.0.1",
        "MASTER_PORT": str(rendezvous_port(env.job_id)),
    }


def write_status(folder: Path, job_id: str, state: str, **extra) -> None:
    """job_status.json: what `ssl-zoo jobs` shows for executors without a scheduler to ask; `job_id` says
    which of the run directory's jobs (resubmissions share the folder) it describes."""
    record = {"state": state, "job_id": job_id,
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **extra}
    atomic_write_json(record, folder / "job_status.json")


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's parameters: equal on every rank of a correct DDP run, cheap to compare.

    Buffers are left out: without SyncBatchNorm (CPU/gloo) each rank keeps its own BN running stats.
    """
    digest = hashlib.sha256()
    for key, value in sorted(module.named_parameters()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TrainJob:
    """Train `config` (a resolved config as plain data) under submitit; resumable by construction."""

    def __init__(self, config: dict, max_requeues: int = 3, requeue_on_sigterm: bool = True) -> None:
        self.config = config
        self.max_requeues = max_requeues
        self.requeue_on_sigterm = requeue_on_sigterm

    def __call__(self) -> dict:
        from ssl_zoo.trainer import Trainer

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            os.environ.update(rendezvous_env(env))
        cfg = load_config(self.config)
        run_dir = run_dir_for(cfg)
        main, job_id = env.global_rank == 0, str(env.job_id)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        status_file = run_dir / "job_status.json"
        previous = status_file.read_text() if main and status_file.is_file() else None
        if main:
            write_status(run_dir, job_id, "RUNNING", restarts=restarts)
        try:
            trainer = Trainer(cfg, progress_bar=False)
            result = trainer.fit()
        except RunDirBusyError:
            if main and previous is not None:  # another job trains here: the status is that job's again
                atomic_write_text(previous, status_file)
            elif main:
                status_file.unlink(missing_ok=True)
            raise  # submitit records the error for this job
        except BaseException as e:
            if main:
                write_status(run_dir, job_id, "FAILED", exit_code=1, error=f"{type(e).__name__}: {e}",
                             traceback=traceback.format_exc()[-4000:])
            raise  # submitit records the error; the job ends FAILED and is not requeued
        summary = {"run_dir": str(result.run_dir), "status": result.status, "step": result.step,
                   "knn_top1": result.knn_top1, "restarts": restarts, "rank": env.global_rank,
                   "world_size": trainer.dist.world_size, "weights_sha256": weights_digest(trainer.method)}
        if result.status == "completed":
            if main:
                write_status(run_dir, job_id, "COMPLETED", exit_code=0, **summary)
            return summary
        if main:
            requeue, reason = self.requeue_verdict(env, result.signal, restarts)
            handler = signal.getsignal(signal.SIGUSR2)  # submitit's: checkpoint() -> requeue -> exit
            if requeue and not callable(handler):
                requeue, reason = False, f"{reason}, but no submitit handler to requeue with"
            if requeue:
                print(f"requeued: {reason}", flush=True)
                write_status(run_dir, job_id, "REQUEUED", **summary)
                handler(result.signal, None)
            print(f"not requeued ({reason}); the checkpoint at step {result.step} is kept", flush=True)
            write_status(run_dir, job_id, "INTERRUPTED", **summary)
        return summary

    def requeue_verdict(self, env: submitit.JobEnvironment, received: int | None, restarts: int) -> tuple[bool, str]:
        """(requeue?, why) for a run stopped by signal `received`."""
        if received == signal.SIGTERM and not self.requeue_on_sigterm:
            return False, "SIGTERM, and the profile sets requeue_on_sigterm: false"
        if received not in (signal.SIGUSR2, signal.SIGTERM):
            return False, f"signal {received} is not a requeue signal (SIGUSR2, SIGTERM)"
        if restarts >= self.max_requeues:
            return False, f"{restarts} requeues used (max_requeues={self.max_requeues})"
        if received == signal.SIGUSR2:
            return True, "SIGUSR2 (time limit or preemption warning)"
        if env.cluster != "slurm":
            return False, f"SIGTERM under the {env.cluster} executor: no scheduler preempts it"
        return requeue_after_sigterm(str(env.job_id))

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Requeue the same run: the trainer resumes from its newest checkpoint (train.resume)."""
        return submitit.helpers.DelayedSubmission(TrainJob(self.config, self.max_requeues, self.requeue_on_sigterm))
