"""Why a SLURM job got SIGTERM: a preemption or time limit (requeue it) or a user's scancel (let it end).

SIGTERM is what SLURM sends on preemption (PreemptMode=CANCEL or REQUEUE: SIGCONT + SIGTERM, SIGKILL
after GraceTime), at the time limit and on `scancel`. `--signal=USR2@<delay>` warns only before the time
limit, and before a preemption only where the site set PreemptParameters=send_user_signal. So a job
that requeues on USR2 alone loses everything since its last periodic checkpoint whenever it is
preempted. But a job that requeued on every SIGTERM would also requeue when its user cancels it
(`scontrol requeue` even revives finished jobs), so the scheduler is asked how the job is ending:

- the queue (squeue) still shows it RUNNING: the signal came without the job being ended (a site's
  preemption notice, `scancel --signal=TERM`): requeue;
- accounting (sacct, the only place that keeps the reason while the job is COMPLETING) says PREEMPTED,
  TIMEOUT or NODE_FAIL: requeue; CANCELLED (by a user): do not;
- anything else, or no answer (no accounting): do not, and say so. A missed requeue costs a resubmission
  (the checkpoint is kept); a wrong one revives a job its user cancelled.
"""

from __future__ import annotations

import subprocess
import time

REQUEUE_STATES = ("PREEMPTED", "TIMEOUT", "NODE_FAIL")


def _ask(command: list[str]) -> str:
    """First word of the command's output ('' if the command is missing, fails or says nothing)."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out[0] if out else ""


def queue_state(job_id: str) -> str:
    """squeue's state: RUNNING while SLURM is not ending the job, COMPLETING once it is (whatever the cause)."""
    return _ask(["squeue", "-h", "-j", job_id, "-o", "%T"])


def accounted_state(job_id: str) -> str:
    """sacct's state of the job's allocation (CANCELLED, PREEMPTED, TIMEOUT, RUNNING...); '' without accounting."""
    return _ask(["sacct", "-n", "-X", "-j", job_id, "-o", "State%40"])


def requeue_after_sigterm(job_id: str, attempts: int = 5, wait_s: float = 0.5) -> tuple[bool, str]:
    """(requeue?, why) for a SLURM job that received SIGTERM. Accounting learns why a job ends a moment after
    the queue shows it ending, so an ending job whose accounting still says RUNNING is asked again."""
    queued = accounted = ""
    for attempt in range(attempts):
        queued, accounted = queue_state(job_id), accounted_state(job_id)
        if accounted.startswith("CANCELLED"):
            return False, "the job was cancelled (scancel)"
        if accounted in REQUEUE_STATES:
            return True, f"SLURM ends the job as {accounted}"
        if queued == "RUNNING":
            return True, "SIGTERM while SLURM keeps the job running (a preemption notice)"
        if attempt + 1 < attempts:
            time.sleep(wait_s)
    return False, (f"SLURM ends the job (queue: {queued or '?'}, accounting: {accounted or '?'}) and cannot tell "
                   "a preemption from a cancel")
