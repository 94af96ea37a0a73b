"""Submit training runs through submitit: one job, or a job array over a sweep's product.

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

from ssl_zoo.config import ConfigError, ExperimentConfig, load_config, to_dict
from ssl_zoo.launch.job import TrainJob
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


def _resolved(config: str, overrides: list[str], name: str | None, profile: ClusterProfile) -> ExperimentConfig:
    cfg = load_config(config, overrides + ([f"train.name={name}"] if name else []))
    if profile.gpus_per_node and cfg.train.device == "auto":
        cfg.train.device = "cuda"
    return cfg


def submit(config: str, profile: ClusterProfile, overrides: list[str], sweeps: list[str] | None = None) -> list[Submitted]:
    """Validate every config first (a bad value fails here, not in the queue), then submit."""
    combos = sweep_product(sweeps or [])
    base = load_config(config, overrides)
    if len(combos) == 1:
        cfgs = [(_resolved(config, overrides + combos[0], None, profile), combos[0])]
        folder = run_dir_for(cfgs[0][0]) / "submitit"
    else:
        cfgs = [(_resolved(config, overrides + combo, f"{base.train.name}/{i:03d}_{_slug(combo)}", profile), combo)
                for i, combo in enumerate(combos)]
        folder = run_dir_for(base) / "submitit"
    executor = make_executor(profile, folder, base.train.name)
    jobs_fns = [TrainJob(to_dict(cfg), profile.max_requeues) for cfg, _ in cfgs]
    if len(jobs_fns) == 1:
        jobs = [executor.submit(jobs_fns[0])]
    else:
        with executor.batch():
            jobs = [executor.submit(fn) for fn in jobs_fns]
    submitted = []
    for job, (cfg, combo) in zip(jobs, cfgs):
        run_dir = run_dir_for(cfg)
        _record(run_dir, job, profile, overrides + combo)
        submitted.append(Submitted(str(job.job_id), run_dir, job.paths.stdout, job.paths.stderr, job))
    return submitted
