"""Launching through submitit: a real single-node SLURM cluster (slurm/local-cluster.sh), local and debug executors."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from ssl_zoo.checkpoint import load_checkpoint
from ssl_zoo.cli import main as cli_main
from ssl_zoo.config import ConfigError
from ssl_zoo.launch.job import rendezvous_env
from ssl_zoo.launch.profile import load_profile
from ssl_zoo.launch.status import find_run_dirs, job_views, read_records
from ssl_zoo.launch.submit import make_executor, submit, sweep_product
from tests.conftest import ROOT, tiny_config


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Start (or reuse) the local cluster; a cluster that cannot start fails the tests with its log."""
    out = subprocess.run([str(ROOT / "slurm/local-cluster.sh"), "up"], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        pytest.fail(f"slurm/local-cluster.sh up failed:\n{out.stderr[-4000:]}")
    return out.stdout.strip()


def config_file(tmp_path: Path, name: str = "tiny", **train) -> Path:
    """The tiny SimCLRv2 config, single-threaded (the same float results in every process)."""
    cfg = tiny_config("simclrv2", tmp_path, train={"name": name, "threads": 1, "max_steps": 4, **train})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def final_weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints/last.pt")["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def wait_for_step(run_dir: Path, step: int, timeout: float = 120) -> None:
    log = run_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.is_file():
            rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            if rows and rows[-1]["step"] >= step:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{run_dir} did not reach step {step}")


def settled(run_dir: Path, timeout: float = 30):
    """The newest job's view once SLURM has recorded its end (the result file appears a moment earlier)."""
    deadline = time.time() + timeout
    view = job_views(run_dir)[-1]
    while view.state in ("RUNNING", "PENDING", "COMPLETING") and time.time() < deadline:
        time.sleep(0.2)
        view = job_views(run_dir)[-1]
    return view


# ----------------------------------------------------------------------------- no scheduler needed


def test_profiles_builtin_file_and_errors(tmp_path):
    assert load_profile("debug").executor == "debug" and load_profile("local").executor == "local"
    p = load_profile("localhost", {"nodes": 2, "partition": None})
    assert (p.executor, p.partition, p.nodes, p.ranks_per_node) == ("slurm", "debug", 2, 1)
    assert load_profile("example").ranks_per_node == 8  # one rank per GPU
    with pytest.raises(ConfigError, match=r"unknown cluster profile 'nope'.*Available: .*localhost"):
        load_profile("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("partition: x\nnodez: 2\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'profile.nodez'.*nodes"):
        load_profile(str(bad))
    bad.write_text("executor: kubernetes\n")
    with pytest.raises(ConfigError, match="kubernetes"):
        load_profile(str(bad))


def test_profile_becomes_the_sbatch_script(tmp_path):
    """Every profile key reaches sbatch (submitit's generated script; no cluster needed)."""
    executor = make_executor(load_profile("example", {"nodes": 4}), tmp_path, "myrun")
    script = executor._make_submission_file_text("python -m x", "uid")
    for line in ("--account=my-project", "--constraint=a100", "--cpus-per-task=10", "--exclusive",
                 "--gpus-per-node=8", "--job-name=myrun", "--mem=491520M", "--nodes=4", "--ntasks-per-node=8",
                 "--partition=gpu", "--qos=normal", "--signal=USR2@120", "--time=1440"):
        assert f"#SBATCH {line}\n" in script, line
    assert "module load cuda/12.4\nsource $HOME/venvs/ssl-zoo/bin/activate\n" in script
    assert "srun " in script  # one task per rank


def test_sweep_product_and_bad_sweeps():
    assert sweep_product(["a=1,2", "b=x,y"]) == [["a=1", "b=x"], ["a=1", "b=y"], ["a=2", "b=x"], ["a=2", "b=y"]]
    assert sweep_product([]) == [[]]
    with pytest.raises(ConfigError, match="key.sub=value1,value2"):
        sweep_product(["a"])


def test_rendezvous_env_from_job_environment():
    class Env:
        global_rank, num_tasks, local_rank, hostnames, job_id = 3, 4, 1, ["node7", "node8"], "1234_5"

    env = rendezvous_env(Env())
    assert env == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node7",
                   "MASTER_PORT": str(20000 + 12345 % 12000)}


def test_rendezvous_ports_stay_below_the_ephemeral_range():
    from ssl_zoo.distributed import rendezvous_port

    ports = {rendezvous_port(str(job)) for job in range(0, 200_000, 7)} | {rendezvous_port("4242_17")}
    assert min(ports) >= 20000 and max(ports) < 32768 and len(ports) > 10_000


def test_bad_config_fails_at_submit_before_queueing(tmp_path, capsys):
    path = config_file(tmp_path)
    assert cli_main(["submit", str(path), "--cluster", "debug", "optim.base_lr=-1"]) == 2
    assert "optim.base_lr" in capsys.readouterr().err
    assert not find_run_dirs(tmp_path / "runs")


def test_local_and_debug_executors_give_the_same_run(tmp_path):
    results = {}
    for executor in ("local", "debug"):
        out = tmp_path / executor
        (s,) = submit(str(config_file(tmp_path, f"{executor}_run")), load_profile(executor),
                      [f"train.output_dir={out}"])
        results[executor] = s.job.results()[0]
        assert results[executor]["status"] == "completed" and results[executor]["step"] == 4
        assert job_views(s.run_dir)[-1].state == "COMPLETED"
    assert results["local"]["weights_sha256"] == results["debug"]["weights_sha256"]
    assert_same_weights(final_weights(tmp_path / "local/local_run"), final_weights(tmp_path / "debug/debug_run"))


def test_jobs_lists_every_submission_of_a_run_dir(tmp_path, capsys):
    """A resubmission into the same run directory adds a job to jobs.jsonl; `ssl-zoo jobs` lists both."""
    path = config_file(tmp_path, "again", max_steps=2)
    first, = submit(str(path), load_profile("debug"), [])
    first.job.results()  # the debug executor runs the job when asked for its result
    second, = submit(str(path), load_profile("debug"), ["train.max_steps=3", "train.resume_changes=allow"])  # extends it
    second.job.results()
    capsys.readouterr()  # the trainer's own output
    assert first.run_dir == second.run_dir and first.job_id != second.job_id
    records = read_records(first.run_dir)
    assert [r["job_id"] for r in records] == [first.job_id, second.job_id]
    assert (first.run_dir / "jobs.jsonl").read_text().count("\n") == 2  # one line per submission, appended
    assert cli_main(["jobs", str(first.run_dir)]) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header.split()[:6] == ["job", "executor", "state", "exit", "submitted", "step"]
    assert [r.split()[0] for r in rows] == [first.job_id, second.job_id]
    assert [r.split()[4] for r in rows] == [rec["submitted"] for rec in records]
    assert rows[1].split()[1:6] == ["debug", "COMPLETED", "0", records[1]["submitted"], "3"]
    assert rows[0].split()[2] == "UNKNOWN" and rows[0].split()[5] == "-"  # its status was the run's, now superseded


def test_cancel_of_an_unknown_name_or_an_empty_run_dir_is_a_one_line_error(tmp_path, capsys):
    assert cli_main(["cancel", "not-a-job", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ssl-zoo: error: no job 'not-a-job': no run directory under")
    assert cli_main(["cancel", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"ssl-zoo: error: {tmp_path} holds no submitted job (no jobs.jsonl in it or below it)\n"


# ----------------------------------------------------------------------------- real SLURM


@pytest.mark.slurm
def test_submit_tiny_fashion_mnist_run_completes(slurm_cluster, tmp_path, capsys):
    cfg = tiny_config("simclrv2", tmp_path, data="fashion_mnist", train={"threads": 1, "max_steps": 3})
    cfg["data"]["limit"] = 256
    path = tmp_path / "fmnist.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli_main(["submit", str(path), "--cluster", "localhost", "--wait"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("run simclrv2_test\n  world size 1, global batch 32 (32 per rank; train.batch_size x ranks)")
    job_id = next(line.split()[1] for line in out.splitlines() if line.startswith("job "))
    run_dir = tmp_path / "runs/simclrv2_test"
    assert f"run dir: {run_dir}" in out and "stdout: " in out
    assert (run_dir / "checkpoints/last.pt").is_file() and (run_dir / "metrics.jsonl").is_file()
    assert load_checkpoint(run_dir / "checkpoints/last.pt")["step"] == 3
    view = settled(run_dir)
    assert (view.job_id, view.executor, view.state, view.step) == (job_id, "slurm", "COMPLETED", 3)
    assert cli_main(["jobs", str(tmp_path / "runs")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:6] == ["job", "executor", "state", "exit", "submitted", "step"]
    row = table[1].split()
    assert row[:4] == [job_id, "slurm", "COMPLETED", "0:0"] and row[5] == "3"


def logged_lr(run_dir: Path) -> list[float]:
    return [json.loads(x)["lr"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.mark.slurm
def test_two_task_job_trains_with_world_size_2_and_ranks_agree(slurm_cluster, tmp_path):
    (s,) = submit(str(config_file(tmp_path, "ddp")), load_profile("localhost", {"tasks_per_node": 2}), [])
    (single,) = submit(str(config_file(tmp_path, "single")), load_profile("debug"), [])
    rank0, rank1 = s.job.results()
    assert (rank0["rank"], rank1["rank"]) == (0, 1) and rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["weights_sha256"] == rank1["weights_sha256"]
    assert "global_rank=1(2)" in s.job.paths.stdout.parent.joinpath(f"{s.job_id}_1_log.out").read_text()
    single.job.results()
    # linear lr scaling on the global batch: 2 ranks x 32 images = twice the lr of one rank
    assert logged_lr(s.run_dir) == pytest.approx([2 * lr for lr in logged_lr(single.run_dir)])


@pytest.mark.slurm
def test_preempted_job_is_requeued_and_resumes_to_the_same_weights(slurm_cluster, tmp_path):
    profile = load_profile("localhost")
    (plain,) = submit(str(config_file(tmp_path, "plain", max_steps=24)), profile, [])
    (pre,) = submit(str(config_file(tmp_path, "preempted", max_steps=24)), profile, [])
    wait_for_step(pre.run_dir, 4)
    subprocess.run(["scancel", "--signal=USR2", pre.job_id], check=True)  # SLURM's pre-timeout/preemption signal
    result = pre.job.result()
    assert result["status"] == "completed" and result["step"] == 24 and result["restarts"] == 1
    log = pre.stdout.read_text()
    saved = int(log.split("checkpoint written at step ")[1].split(":")[0])
    assert 4 <= saved < 24 and f"at step {saved}" in log.split("resumed from")[1]
    assert plain.job.result()["weights_sha256"] == result["weights_sha256"]
    assert_same_weights(final_weights(plain.run_dir), final_weights(pre.run_dir))


@pytest.mark.slurm
def test_failing_job_is_not_requeued_and_reports_its_error(slurm_cluster, tmp_path, capsys):
    path = config_file(tmp_path, "broken")
    (s,) = submit(str(path), load_profile("localhost"),
                  ["data.kind=fashion_mnist", f"data.path={tmp_path / 'no_such_dataset'}"])
    with pytest.raises(Exception):  # submitit's FailedJobError
        s.job.result()
    view = settled(s.run_dir)
    assert view.state == "FAILED" and view.exit_code not in ("", "0:0")
    job = subprocess.run(["scontrol", "show", "job", s.job_id], capture_output=True, text=True).stdout
    assert "JobState=FAILED" in job and "Restarts=0" in job  # not requeued
    time.sleep(3)  # a requeue would have put it back in the queue by now
    assert subprocess.run(["squeue", "-h", "-j", s.job_id], capture_output=True, text=True).stdout.strip() == ""
    status = json.loads((s.run_dir / "job_status.json").read_text())
    assert status["state"] == "FAILED" and "no_such_dataset" in status["error"]
    assert cli_main(["jobs", str(s.run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"job {s.job_id} FAILED" in out and "no_such_dataset" in out


@pytest.mark.slurm
def test_sweep_array_gives_each_element_its_own_run(slurm_cluster, tmp_path, capsys):
    path = config_file(tmp_path, "sweep", max_steps=2)
    assert cli_main(["submit", str(path), "--cluster", "localhost", "--sweep", "optim.base_lr=0.3,0.1",
                     "--wait"]) == 0
    capsys.readouterr()
    run_dirs = find_run_dirs(tmp_path / "runs/sweep")
    assert len(run_dirs) == 2
    assert [d.name for d in run_dirs] == ["000_base_lr=0.3", "001_base_lr=0.1"]
    lrs = [yaml.safe_load((d / "config.yaml").read_text())["optim"]["base_lr"] for d in run_dirs]
    assert lrs == [0.3, 0.1]
    job_ids = [record["job_id"] for d in run_dirs for record in read_records(d)]
    assert len({j.split("_")[0] for j in job_ids}) == 1 and job_ids[0] != job_ids[1]  # one array, two elements
    assert all(settled(d).state == "COMPLETED" for d in run_dirs)


@pytest.mark.slurm
def test_cancel_by_run_dir_stops_the_job(slurm_cluster, tmp_path, capsys):
    (s,) = submit(str(config_file(tmp_path, "long", max_steps=100000)), load_profile("localhost"), [])
    wait_for_step(s.run_dir, 1)
    assert cli_main(["cancel", str(s.run_dir)]) == 0
    assert f"scancel {s.job_id}" in capsys.readouterr().out
    assert settled(s.run_dir).state.startswith("CANCELLED")


@pytest.mark.slurm
def test_local_cluster_status_reports_a_usable_node(slurm_cluster):
    out = subprocess.run([str(ROOT / "slurm/local-cluster.sh"), "status"], capture_output=True, text=True)
    assert out.returncode == 0 and "slurmctld: running" in out.stdout and slurm_cluster in out.stdout


@pytest.mark.slurm
def test_cancel_of_an_unknown_job_id_fails_instead_of_reporting_success(slurm_cluster, tmp_path, capsys):
    # scancel exits 0 for a job id SLURM does not know; ssl-zoo must not
    assert subprocess.run(["scancel", "999999"], capture_output=True).returncode == 0
    assert cli_main(["cancel", "999999", "--runs", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == (f"ssl-zoo: error: no job '999999': no run directory under {tmp_path} lists "
                                         "it (jobs.jsonl) and SLURM does not know it; give a job id or a run directory\n")


def test_named_profiles_are_found_from_an_installed_not_editable_package(tmp_path):
    """pip install (not -e) into a folder, run from elsewhere: a profile in $SSL_ZOO_PROFILES is found,
    and a submission to the debug executor through it trains."""
    import os
    import sys

    import shutil

    source, target = tmp_path / "source", tmp_path / "site"  # a copy: pip builds in the source tree
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "runs", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, timeout=300)
    assert (target / "ssl_zoo" / "launch" / "profile.py").is_file() and not (target / "slurm").exists()
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "mycluster.yaml").write_text("executor: debug\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "SSL_ZOO_PROFILES": str(profiles)}
    code = ("import ssl_zoo, sys; assert ssl_zoo.__file__.startswith(sys.argv[1]), ssl_zoo.__file__; "
            "from ssl_zoo.cli import main; sys.exit(main(sys.argv[2:]))")
    out = subprocess.run([sys.executable, "-c", code, str(target), "submit", str(config_file(tmp_path)),
                          "--cluster", "mycluster", f"train.output_dir={tmp_path / 'runs'}"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt")["step"] == 4
    missing = subprocess.run([sys.executable, "-c", code, str(target), "submit", str(config_file(tmp_path)),
                              "--cluster", "nocluster"], cwd=work, env=env, capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode != 0 and "nocluster.yaml in slurm, " in missing.stderr


def test_a_job_locked_out_of_a_busy_run_dir_leaves_the_running_jobs_status(tmp_path):
    """Two submissions into one run directory: the second fails on the lock and the status stays the first's."""
    from submitit.core.utils import FailedJobError

    from ssl_zoo.run_lock import RunLock

    path = config_file(tmp_path, "busy")
    run_dir = tmp_path / "runs" / "busy"
    run_dir.mkdir(parents=True)
    status = '{"state": "RUNNING", "job_id": "first"}\n'
    (run_dir / "job_status.json").write_text(status)
    lock = RunLock(run_dir)
    lock.acquire()  # the first job, training
    try:
        (s,) = submit(str(path), load_profile("local"), [])
        with pytest.raises(FailedJobError, match="is in use by another training run"):
            s.job.results()
    finally:
        lock.release()
    assert (run_dir / "job_status.json").read_text() == status
