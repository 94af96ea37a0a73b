"""One writer per run directory, with real processes and real signals."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from ssl_zoo import run_lock
from ssl_zoo.experiment import load_config
from ssl_zoo.launch.local_ranks import run_ranks
from ssl_zoo.run_lock import RunDirBusyError, RunLock, hold_run_dir
from ssl_zoo.trainer import Trainer
from tests.conftest import ROOT, tiny_config
from tests.test_trainer import start_train, write_config

HOLD = """
import sys, time
from ssl_zoo.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def hold_in_another_process(run_dir) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_second_lock_names_the_holder_and_a_released_lock_is_free(tmp_path):
    first = RunLock(tmp_path / "run")
    first.acquire()
    with pytest.raises(RunDirBusyError) as e:
        RunLock(tmp_path / "run").acquire()
    assert f"({os.getpid()}@{socket.gethostname()} since " in str(e.value) and "\n" not in str(e.value)
    first.release()
    second = RunLock(tmp_path / "run")
    second.acquire()
    second.release()


def test_sigkilled_holder_does_not_block_the_next_run(tmp_path, one_thread):
    cfg = tiny_config("simclrv2", tmp_path, train={"max_steps": 2, "name": "run"})
    holder = hold_in_another_process(tmp_path / "runs" / "run")
    try:
        with pytest.raises(RunDirBusyError, match=f"in use by another training run \\({holder.pid}@"):
            Trainer(load_config(cfg), progress_bar=False).fit()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    result = Trainer(load_config(cfg), progress_bar=False).fit()
    assert result.status == "completed" and result.step == 2


def test_two_train_processes_on_one_run_directory(tmp_path):
    """The second `ssl-zoo train` exits with one line naming the first, which trains on undisturbed."""
    cfg = tiny_config("simclrv2", tmp_path, train={"max_steps": 10000, "ckpt_every": 10000, "name": "shared",
                                                   "threads": 1})
    config = write_config(tmp_path, cfg, "shared")
    metrics = tmp_path / "runs" / "shared" / "metrics.jsonl"
    first = start_train(config)
    try:
        deadline = time.time() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        second = start_train(config)
        out, _ = second.communicate(timeout=120)
        assert second.returncode == 2, out
        errors = [line for line in out.splitlines() if line.startswith("ssl-zoo: error:")]
        assert len(errors) == 1 and out.rstrip().endswith(errors[0]), out
        assert f"in use by another training run ({first.pid}@{socket.gethostname()} since " in errors[0]
        assert first.poll() is None
        steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
        assert steps == list(range(1, len(steps) + 1))  # only the first run's records
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


DDP_WORKER = """
import json, sys
from ssl_zoo import distributed
from ssl_zoo.experiment import load_config
from ssl_zoo.run_lock import RunDirBusyError
from ssl_zoo.trainer import Trainer
trainer = Trainer(load_config(json.loads(sys.argv[1])), progress_bar=False)
try:
    trainer.fit()
except RunDirBusyError as e:
    print(f"rank {trainer.dist.rank}: {e}", flush=True)
    distributed.cleanup()
    sys.exit(3)
"""


def test_every_rank_of_a_ddp_job_stops_when_the_run_directory_is_held(tmp_path):
    """Only rank 0 tries the lock; the other ranks learn it failed instead of waiting for rank 0 forever."""
    cfg = tiny_config("simclrv2", tmp_path, train={"max_steps": 2, "name": "ddp", "device": "cpu"})
    holder = hold_in_another_process(tmp_path / "runs" / "ddp")
    try:
        results = run_ranks(["-c", DDP_WORKER, json.dumps(cfg)], 2, ROOT, timeout=180)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert [r.returncode for r in results] == [3, 3], [r.output for r in results]
    assert f"rank 0: {tmp_path / 'runs' / 'ddp'} is in use by another training run ({holder.pid}@" in results[0].output
    assert "rank 1: " in results[1].output and "(see rank 0)" in results[1].output


def test_other_ranks_never_take_the_lock(tmp_path):
    holder = hold_in_another_process(tmp_path / "run")
    try:
        with hold_run_dir(tmp_path / "run", is_main=False, device=torch.device("cpu")):
            pass
        with pytest.raises(RunDirBusyError):
            with hold_run_dir(tmp_path / "run", is_main=True, device=torch.device("cpu")):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_a_filesystem_without_flock_runs_with_a_warning(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(run_lock.fcntl, "flock", no_flock)
    with pytest.warns(UserWarning, match="nothing stops a second run"):
        lock = RunLock(tmp_path / "run")
        lock.acquire()
    lock.release()
