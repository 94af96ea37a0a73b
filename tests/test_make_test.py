"""`make test` is the one test command: without root it runs everything but the SLURM tests and says so once;
CI (.ci/run, as root) requires them, so a CI run that would skip them fails instead."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SLURM_SKIPPED, slurm_skip_reason


def never_called():
    raise AssertionError("the cluster state does not matter here")


def test_slurm_tests_run_as_root_or_with_a_running_cluster_and_always_under_require():
    assert slurm_skip_reason("auto", True, never_called) is None
    assert slurm_skip_reason("auto", False, lambda: True) is None
    assert slurm_skip_reason("auto", False, lambda: False).startswith(f"{SLURM_SKIPPED}: not root")
    assert slurm_skip_reason("require", False, never_called) is None
    assert slurm_skip_reason("skip", True, never_called) == f"{SLURM_SKIPPED}: SSL_ZOO_SLURM_TESTS=skip"
    with pytest.raises(pytest.UsageError, match="valid: auto, require, skip"):
        slurm_skip_reason("sometimes", True, never_called)


def test_skipped_slurm_tests_are_reported_once_with_how_to_run_them():
    """Two xdist workers skip them; the controller prints one line for all."""
    env = {**os.environ, "SSL_ZOO_SLURM_TESTS": "skip"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
                          "tests/test_slurm.py", "-m", "slurm"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    slurm_tests = (ROOT / "tests/test_slurm.py").read_text().count("@pytest.mark.slurm")
    assert out.stdout.count(SLURM_SKIPPED) == 1
    assert f"{slurm_tests} {SLURM_SKIPPED}: SSL_ZOO_SLURM_TESTS=skip. To run them: run them as root (`sudo make test`" \
        in out.stdout
    assert f"{slurm_tests} skipped" in out.stdout


@pytest.mark.parametrize("mode, starts_cluster", [("require", True), ("skip", False)])
def test_make_test_starts_the_cluster_when_required_and_leaves_slurm_alone_on_skip(mode, starts_cluster):
    plan = subprocess.run(["make", "-n", "test", f"SSL_ZOO_SLURM_TESTS={mode}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert ("slurm/local-cluster.sh up" in plan.stdout) == starts_cluster
    assert "-m pytest -q -n 2" in plan.stdout


def test_ci_runs_make_test_with_the_slurm_tests_required():
    lines = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[-1] == "SSL_ZOO_SLURM_TESTS=require make test"
