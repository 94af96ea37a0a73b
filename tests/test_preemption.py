"""Requeue on SIGTERM (SLURM's preemption signal) as well as SIGUSR2, per the cluster profile, and never after a
user's scancel: on the real local cluster (slurm/local-cluster.sh), signals sent with scancel."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from ssl_zoo.launch.preemption import requeue_after_sigterm
from ssl_zoo.launch.profile import load_profile
from ssl_zoo.launch.submit import submit
from tests.test_slurm import config_file, settled, slurm_cluster, wait_for_step  # noqa: F401  (fixture)


def wait_for_text(path: Path, text: str, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and text in (content := path.read_text()):
            return content
        time.sleep(0.2)
    raise TimeoutError(f"{text!r} not in {path}")


def not_requeued(job_id: str) -> bool:
    """SLURM counts no restart and the job is gone from the queue or on its way out (COMPLETING), not back in it."""
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    queued = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()
    return "Restarts=0" in shown.split() and queued in ("", "COMPLETING")


def test_requeue_on_sigterm_is_a_profile_setting_on_by_default(tmp_path):
    assert load_profile("localhost").requeue_on_sigterm is True
    assert load_profile("example").requeue_on_sigterm is True
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"partition": "gpu", "requeue_on_sigterm": False}))
    assert load_profile(str(path)).requeue_on_sigterm is False
    assert load_profile("localhost", {"requeue_on_sigterm": False}).requeue_on_sigterm is False


@pytest.mark.slurm
def test_sigterm_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path):
    (s,) = submit(str(config_file(tmp_path, "terminated", max_steps=24)), load_profile("localhost"), [])
    wait_for_step(s.run_dir, 4)
    subprocess.run(["scancel", "--signal=TERM", s.job_id], check=True)  # a preemption notice: the job stays RUNNING
    result = s.job.result()
    assert result["status"] == "completed" and result["step"] == 24 and result["restarts"] == 1
    log = s.stdout.read_text()
    saved = int(log.split("checkpoint written at step ")[1].split(":")[0])
    assert 4 <= saved < 24 and f"at step {saved}" in log.split("resumed from")[1]
    assert "requeued: SIGTERM while SLURM keeps the job running" in log


@pytest.mark.slurm
def test_sigterm_does_not_requeue_when_the_profile_says_so(slurm_cluster, tmp_path):
    profile = load_profile("localhost", {"requeue_on_sigterm": False})
    (s,) = submit(str(config_file(tmp_path, "kept", max_steps=100000)), profile, [])
    wait_for_step(s.run_dir, 2)
    subprocess.run(["scancel", "--signal=TERM", s.job_id], check=True)
    log = wait_for_text(s.stdout, "not requeued")
    assert "not requeued (SIGTERM, and the profile sets requeue_on_sigterm: false); the checkpoint at step" in log
    settled(s.run_dir)
    status = json.loads((s.run_dir / "job_status.json").read_text())
    assert status["state"] == "INTERRUPTED" and status["restarts"] == 0 and status["step"] >= 2
    assert not_requeued(s.job_id)


@pytest.mark.slurm
def test_scancel_is_not_taken_for_a_preemption(slurm_cluster, tmp_path):
    """A plain scancel also sends SIGTERM; the job checkpoints and ends, cancelled, instead of requeueing."""
    (s,) = submit(str(config_file(tmp_path, "cancelled", max_steps=100000)), load_profile("localhost"), [])
    wait_for_step(s.run_dir, 2)
    subprocess.run(["scancel", s.job_id], check=True)
    log = wait_for_text(s.stdout, "not requeued")
    assert "checkpoint written at step" in log and "not requeued (the job was cancelled (scancel))" in log
    assert settled(s.run_dir).state.startswith("CANCELLED")
    time.sleep(3)  # a requeue would have put it back in the queue by now
    assert not_requeued(s.job_id)


@pytest.mark.slurm
def test_a_job_slurm_does_not_know_is_not_requeued(slurm_cluster):
    requeue, why = requeue_after_sigterm("999999", attempts=2, wait_s=0.1)
    assert not requeue and why == ("SLURM ends the job (queue: ?, accounting: ?) and cannot tell a preemption "
                                   "from a cancel")
