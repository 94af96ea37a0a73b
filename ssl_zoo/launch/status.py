"""What `ssl-zoo jobs` shows: every job of a run directory (resubmissions included), its state, the run's
step, last loss and logs; `cancel`.

The jobs of a run directory are the lines of its `jobs.jsonl` (written by ssl_zoo.launch.submit; a
`job.json` from versions before it counts as one job). SLURM jobs are asked through sacct (accounting:
it knows finished, failed and cancelled jobs). Local and debug jobs have no scheduler to ask, so the
job itself leaves `job_status.json` in the run directory (written by ssl_zoo.launch.job); nothing here
unpickles submitit's result files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ssl_zoo.errors import JobError
from ssl_zoo.launch.submit import JOBS_FILE
from ssl_zoo.metrics import read_metrics

STATUS_FILE = "job_status.json"
LEGACY_RECORD = "job.json"  # one job, rewritten by each submission (before jobs.jsonl)
ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING")


@dataclass
class JobView:
    job_id: str
    executor: str
    submitted: str
    state: str
    exit_code: str
    step: int | None
    loss: float | None
    run_dir: Path
    stdout: Path
    stderr: Path

    @property
    def failed(self) -> bool:
        return self.state.split()[0] in ("FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT", "BOOT_FAIL", "DEADLINE")

    @property
    def active(self) -> bool:
        return self.state.split()[0] in ACTIVE


def read_records(run_dir: Path) -> list[dict]:
    """The run directory's submissions, oldest first; a damaged line is an error naming file and line."""
    path = run_dir / JOBS_FILE
    if not path.is_file():
        legacy = run_dir / LEGACY_RECORD
        return [json.loads(legacy.read_text())] if legacy.is_file() else []
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError as e:
            raise JobError(f"{path}:{lineno}: not a job record ({e})") from e
        if record is not None:
            records.append(record)
    return records


def find_run_dirs(root: Path) -> list[Path]:
    """`root` if it is a submitted run directory, else every one under it."""
    root = Path(root)
    if read_records(root):
        return [root]
    if not root.is_dir():
        return []
    return sorted({p.parent for name in (JOBS_FILE, LEGACY_RECORD) for p in root.rglob(name)})


def last_metrics(run_dir: Path) -> tuple[int | None, float | None]:
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return None, None
    rows = read_metrics(log)
    losses = [r for r in rows if "loss" in r]
    return (rows[-1]["step"] if rows else None), (losses[-1]["loss"] if losses else None)


def slurm_state(job_id: str) -> tuple[str, str]:
    """(state, exit code) from sacct; squeue while accounting has not seen the job yet."""
    try:
        out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State,ExitCode"],
                             capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            jid, state, code = line.split("|")
            if jid == job_id:
                return state, code
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
        return (out or "UNKNOWN"), ""
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return "UNKNOWN (no sacct/squeue here)", ""


def _pid_alive(pid: str) -> bool:
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


def local_state(record: dict, run_dir: Path) -> tuple[str, str]:
    status_file = run_dir / STATUS_FILE
    if status_file.is_file():
        status = json.loads(status_file.read_text())
        if status.get("job_id", record["job_id"]) == record["job_id"]:  # older status files name no job
            return status["state"], str(status.get("exit_code", ""))
    if record["executor"] == "local" and _pid_alive(record["job_id"]):
        return "RUNNING", ""
    return "UNKNOWN", ""


def job_views(run_dir: Path) -> list[JobView]:
    """Every job of `run_dir`, oldest first; the run's step and last loss go with the newest."""
    records = read_records(run_dir)
    step, loss = last_metrics(run_dir)
    views = []
    for i, record in enumerate(records):
        if record["executor"] == "slurm":
            state, code = slurm_state(record["job_id"])
        else:
            state, code = local_state(record, run_dir)
        newest = i == len(records) - 1
        views.append(JobView(record["job_id"], record["executor"], record.get("submitted", "?"), state, code,
                             step if newest else None, loss if newest else None, run_dir,
                             Path(record["stdout"]), Path(record["stderr"])))
    return views


def log_tail(path: Path, lines: int = 15) -> str:
    if not path.is_file():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def scancel(job_id: str) -> str:
    """`scancel job_id`; SLURM's refusal (e.g. an unknown id) is a one-line JobError."""
    try:
        out = subprocess.run(["scancel", job_id], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise JobError(f"cannot cancel SLURM job {job_id}: scancel failed ({e})") from e
    if out.returncode != 0:
        reason = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        raise JobError(f"cannot cancel SLURM job {job_id}: {reason}")
    return f"scancel {job_id}"


def cancel(target: str, root: Path = Path("runs")) -> str:
    """Cancel by SLURM/local job id or by run directory (its jobs still queued or running); returns what
    was done. A job id found in no run directory is looked up in SLURM; an id nobody knows is an error."""
    if Path(target).exists():
        views = [v for d in find_run_dirs(Path(target)) for v in job_views(d)]
        if not views:
            raise JobError(f"{target} holds no submitted job (no {JOBS_FILE} in it or below it)")
    else:
        views = [v for d in find_run_dirs(root) for v in job_views(d)
                 if v.job_id == target or v.job_id.startswith(f"{target}_")]
        if not views:  # perhaps a SLURM job submitted some other way; scancel itself accepts unknown ids silently
            state = slurm_state(target)[0] if target.replace("_", "").isdigit() else "UNKNOWN"
            if state.startswith("UNKNOWN"):
                raise JobError(f"no job {target!r}: no run directory under {root} lists it ({JOBS_FILE}) and SLURM "
                               "does not know it; give a job id or a run directory")
            return scancel(target) if state.split()[0] in ACTIVE else f"job {target} (slurm) is not running ({state})"
    done = []
    for view in views:
        if not view.active:
            done.append(f"job {view.job_id} ({view.executor}) is not running ({view.state})")
        elif view.executor == "slurm":
            done.append(scancel(view.job_id))
        elif view.executor == "local" and _pid_alive(view.job_id):
            os.kill(int(view.job_id), signal.SIGTERM)  # the trainer checkpoints and stops
            done.append(f"SIGTERM to local job {view.job_id}")
        else:
            done.append(f"job {view.job_id} ({view.executor}) is not running")
    return "; ".join(done)
