"""Submit training runs through submitit: one job, or a job array over a sweep's product.

`plan` builds and checks every job's config (nothing is queued when one is invalid) and `queue` submits it;
the CLI prints the plan's summary in between.

Every submission appends one line to `jobs.jsonl` in its run directory (job id, executor, log paths,
submit time), so a resubmission into the same run directory adds to the record instead of replacing
it; `ssl-zoo jobs` and `ssl-zoo cancel` read it.
"""

from __future__ import annotations

import datetime
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import submitit

from ssl_zoo.config import ConfigError, ExperimentConfig, per_rank_batch, to_dict
from ssl_zoo.experiment import load_config
from ssl_zoo.launch.job import TrainJob
from ssl_zoo.launch.preflight import check_data_paths, summary
from ssl_zoo.launch.profile import ClusterProfile
from ssl_zoo.run_dir import run_dir_for

JOBS_FILE = "jobs.jsonl"  # append-only: one JSON line per submission


@dataclass
class Submitted:
    job_id: str
    run_dir: Path
    stdout: Path
    stderr: Path
    job: submitit.Job


def make_executor(profile: ClusterProfile, folder: Path, job_name: str) -> submitit.Executor:
    """A submitit executor carrying the profile: SLURM, local subprocesses, or in-process debug."""
    if profile.executor == "debug":
        return submitit.DebugExecutor(folder=folder)
    tasks = profile.ranks_per_node
    if profile.executor == "local":
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=profile.max_requeues)
        executor.update_parameters(timeout_min=profile.time_min, tasks_per_node=tasks, nodes=1,
                                   gpus_per_node=profile.gpus_per_node, cpus_per_task=profile.cpus_per_task)
        return executor
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=profile.max_requeues)
    params = dict(job_name=job_name, time=profile.time_min, nodes=profile.nodes, ntasks_per_node=tasks,
                  cpus_per_task=profile.cpus_per_task, signal_delay_s=profile.signal_delay_s,
                  setup=list(profile.setup), additional_parameters=dict(profile.sbatch_extra))
    if profile.gpus_per_node:
        params["gpus_per_node"] = profile.gpus_per_node
    if profile.mem_gb:
        params["mem"] = f"{int(profile.mem_gb * 1024)}M"
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(profile, key):
            params[key] = getattr(profile, key)
    executor.update_parameters(**params)
    return executor


def sweep_product(sweeps: list[str]) -> list[list[str]]:
    """['a=1,2', 'b=x,y'] -> [['a=1', 'b=x'], ['a=1', 'b=y'], ...] (one override list per array element)."""
    axes = []
    for item in sweeps:
        key, _, values = item.partition("=")
        if not key or not values:
            raise ConfigError(f"--sweep {item!r} must look like key.sub=value1,value2")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(combo) for combo in itertools.product(*axes)] if axes else [[]]


def _slug(overrides: list[str]) -> str:
    words = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in (o.split("=", 1) for o in overrides)]
    return re.sub(r"[^A-Za-z0-9=._-]+", "_", "_".join(words))[:80] or "base"


def _record(run_dir: Path, job: submitit.Job, profile: ClusterProfile, overrides: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"job_id": str(job.job_id), "executor": profile.executor, "profile": profile.name,
              "submitit_folder": str(job.paths.folder), "stdout": str(job.paths.stdout),
              "stderr": str(job.paths.stderr), "overrides": overrides,
              "submitted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    with open(run_dir / JOBS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def world_size(profile: ClusterProfile) -> int:
    """Ranks of one job: the debug executor runs one task in this process, the local one runs on one node."""
    if profile.executor == "debug":
        return 1
    return (1 if profile.executor == "local" else profile.nodes) * profile.ranks_per_node


def resolve(config: str, overrides: list[str], profile: ClusterProfile) -> ExperimentConfig:
    """The config a job of `profile` runs, built once from the file and overrides: on GPU profiles an `auto`
    device is cuda, and train.global_batch sets the per-rank batch for the profile's ranks (both as overrides,
    so the config is never changed after it is built)."""
    first = load_config(config, overrides)
    derived = []
    if profile.gpus_per_node and first.train.device == "auto":
        derived.append("train.device=cuda")
    if first.train.global_batch:
        derived.append(f"train.batch_size={per_rank_batch(first.train, world_size(profile))}")
    cfg = load_config(config, overrides + derived) if derived else first
    check_data_paths(cfg)
    return cfg


@dataclass
class Plan:
    """Everything a submission will queue, validated: one (config, overrides) per job and where submitit writes."""

    profile: ClusterProfile
    jobs: list[tuple[ExperimentConfig, list[str]]]
    folder: Path
    job_name: str

    def summary(self) -> list[str]:
        """What the user sees before queueing: per job its ranks, batch, lr and data (sweeps: each element)."""
        lines = []
        for cfg, overrides in self.jobs:
            head = f"run {cfg.train.name}" + (f" ({' '.join(overrides)})" if len(self.jobs) > 1 else "")
            lines += [head, *(f"  {line}" for line in summary(cfg, world_size(self.profile)))]
        return lines


def plan(config: str, profile: ClusterProfile, overrides: list[str], sweeps: list[str] | None = None) -> Plan:
    """Validate every config of the submission (a bad value or an empty data path fails here, not in the queue)."""
    combos = sweep_product(sweeps or [])
    base = load_config(config, overrides)
    if len(combos) == 1:
        jobs = [(resolve(config, overrides, profile), overrides)]
        folder = run_dir_for(jobs[0][0]) / "submitit"
    else:
        jobs = [(resolve(config, overrides + combo + [f"train.name={base.train.name}/{i:03d}_{_slug(combo)}"],
                         profile), overrides + combo) for i, combo in enumerate(combos)]
        folder = run_dir_for(base) / "submitit"
    return Plan(profile, jobs, folder, base.train.name)


def queue(plan: Plan) -> list[Submitted]:
    """Submit a validated plan: one job, or one job array for a sweep; each run directory records its job."""
    executor = make_executor(plan.profile, plan.folder, plan.job_name)
    fns = [TrainJob(to_dict(cfg), plan.profile.max_requeues, plan.profile.requeue_on_sigterm) for cfg, _ in plan.jobs]
    if len(fns) == 1:
        jobs = [executor.submit(fns[0])]
    else:
        with executor.batch():
            jobs = [executor.submit(fn) for fn in fns]
    submitted = []
    for job, (cfg, overrides) in zip(jobs, plan.jobs):
        run_dir = run_dir_for(cfg)
        _record(run_dir, job, plan.profile, overrides)
        submitted.append(Submitted(str(job.job_id), run_dir, job.paths.stdout, job.paths.stderr, job))
    return submitted


def submit(config: str, profile: ClusterProfile, overrides: list[str], sweeps: list[str] | None = None) -> list[Submitted]:
    """plan() then queue(): nothing is queued unless every job's config is valid."""
    return queue(plan(config, profile, overrides, sweeps))
