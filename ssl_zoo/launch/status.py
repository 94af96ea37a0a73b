"""What `ssl-zoo jobs` shows: state, step, last loss and logs of submitted runs; `cancel`.

SLURM jobs are asked through sacct (accounting: it knows finished, failed and cancelled jobs).
Local and debug jobs have no scheduler to ask, so the job itself leaves `job_status.json` in the
run directory (written by ssl_zoo.launch.job); nothing here unpickles submitit's result files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ssl_zoo.config import ConfigError
from ssl_zoo.launch.submit import JOB_RECORD

STATUS_FILE = "job_status.json"


@dataclass
class JobView:
    job_id: str
    executor: str
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


def find_records(root: Path) -> list[Path]:
    root = Path(root)
    if (root / JOB_RECORD).is_file():
        return [root / JOB_RECORD]
    return sorted(root.rglob(JOB_RECORD)) if root.is_dir() else []


def last_metrics(run_dir: Path) -> tuple[int | None, float | None]:
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return None, None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
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
        return status["state"], str(status.get("exit_code", ""))
    if record["executor"] == "local" and _pid_alive(record["job_id"]):
        return "RUNNING", ""
    return "UNKNOWN", ""


def job_view(record_path: Path) -> JobView:
    record = json.loads(record_path.read_text())
    run_dir = record_path.parent
    if record["executor"] == "slurm":
        state, code = slurm_state(record["job_id"])
    else:
        state, code = local_state(record, run_dir)
    step, loss = last_metrics(run_dir)
    return JobView(record["job_id"], record["executor"], state, code, step, loss, run_dir,
                   Path(record["stdout"]), Path(record["stderr"]))


def log_tail(path: Path, lines: int = 15) -> str:
    if not path.is_file():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def cancel(target: str, root: Path = Path("runs")) -> str:
    """Cancel by SLURM/local job id or by run directory; returns what was done."""
    views = [job_view(p) for p in find_records(Path(target))] if Path(target).exists() else \
        [v for v in map(job_view, find_records(root)) if v.job_id == target or v.job_id.startswith(f"{target}_")]
    if not views:
        if target.replace("_", "").isdigit():
            subprocess.run(["scancel", target], check=True)
            return f"scancel {target}"
        raise ConfigError(f"no submitted job {target!r} (a job id, or a run directory with {JOB_RECORD})")
    done = []
    for view in views:
        if view.executor == "slurm":
            subprocess.run(["scancel", view.job_id], check=True)
            done.append(f"scancel {view.job_id}")
        elif view.executor == "local" and _pid_alive(view.job_id):
            os.kill(int(view.job_id), signal.SIGTERM)  # the trainer checkpoints and stops
            done.append(f"SIGTERM to local job {view.job_id}")
        else:
            done.append(f"job {view.job_id} ({view.executor}) is not running")
    return "; ".join(done)
