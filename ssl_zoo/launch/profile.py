"""Cluster profiles: what a SLURM cluster needs on every submission (<name>.yaml or a path).

Named profiles are looked up in ./slurm/, then each folder of $SSL_ZOO_PROFILES, then
~/.config/ssl-zoo/clusters/: the working directory, not the package, so an installed (not
editable) zoo finds them too. `local` (submitit's local executor: subprocesses on this machine)
and `debug` (in-process) are built in and need no file: the single-node debug path runs without SLURM.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ssl_zoo.config import ConfigError, bounded, build_dataclass, read_yaml_mapping

BUILTIN = ("local", "debug")


@dataclass
class ClusterProfile:
    name: str = ""
    executor: Literal["slurm", "local", "debug"] = "slurm"
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    nodes: int = bounded(1, 1)
    gpus_per_node: int = bounded(0, 0)  # one task (rank) per GPU
    tasks_per_node: int = bounded(0, 0)  # 0: gpus_per_node, or 1 without GPUs (CPU ranks in tests)
    cpus_per_task: int = bounded(1, 1)
    mem_gb: float = bounded(0.0, 0.0)  # per node; 0: the partition's default
    time_min: int = bounded(60, 1)
    signal_delay_s: int = bounded(120, 0)  # sbatch --signal=USR2@this: seconds before the time limit to checkpoint
    max_requeues: int = bounded(3, 0)  # preemptions/timeouts survived before the job gives up
    # SLURM preempts with SIGTERM (USR2 comes only before the time limit, or where PreemptParameters=
    # send_user_signal): checkpoint and requeue on it too, unless the job was cancelled (ssl_zoo.launch.preemption).
    # false where the scheduler requeues preempted jobs itself (PreemptMode=REQUEUE): then only the checkpoint.
    requeue_on_sigterm: bool = True
    sbatch_extra: dict = field(default_factory=dict)  # further #SBATCH options, e.g. {exclusive: true}
    setup: list[str] = field(default_factory=list)  # shell lines before the job: module loads, venv activation

    @property
    def ranks_per_node(self) -> int:
        return self.tasks_per_node or self.gpus_per_node or 1


def profile_dirs() -> list[Path]:
    """Where named profiles are looked up, first match wins."""
    extra = [Path(p) for p in os.environ.get("SSL_ZOO_PROFILES", "").split(os.pathsep) if p]
    return [Path("slurm"), *extra, Path.home() / ".config" / "ssl-zoo" / "clusters"]


def profile_path(name: str) -> Path | None:
    """The file of profile `name`: a path as given, else the first <name>.yaml in profile_dirs()."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    return next((d / f"{name}.yaml" for d in profile_dirs() if (d / f"{name}.yaml").is_file()), None)


def available_profiles() -> list[str]:
    return sorted({*BUILTIN, *(p.stem for d in profile_dirs() for p in d.glob("*.yaml"))})


def load_profile(name: str, overrides: dict | None = None) -> ClusterProfile:
    """The profile `name` (built-in, a named file from profile_dirs(), or a YAML path) with CLI flags applied."""
    if name in BUILTIN:
        raw: dict = {"executor": name}
    else:
        path = profile_path(name)
        if path is None or not path.is_file():
            where = path or f"{name}.yaml in {', '.join(map(str, profile_dirs()))}"
            raise ConfigError(f"unknown cluster profile {name!r}: no file {where}. "
                              f"Available: {', '.join(available_profiles())} (or a path to a YAML profile)")
        raw = read_yaml_mapping(path)
    raw = {"name": Path(name).stem, **raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return build_dataclass(ClusterProfile, raw, "profile")
