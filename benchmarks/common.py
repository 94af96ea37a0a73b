"""What every benchmark script shares: provenance (date, commit, machine), config discovery, quiet
trainer overrides, step timing, the markdown table and the JSON result file.

Scripts import it as `benchmarks.common` after putting the repository root on sys.path.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def git_commit() -> str:
    """HEAD's sha, with '-dirty' when tracked files differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo), since platform.processor() is often empty on Linux."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_model()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def provenance() -> dict:
    """date, commit and machine: the header of every result file and table."""
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "commit": git_commit(),
            "machine": machine()}


def describe(meta: dict) -> str:
    """Two lines naming the date, commit and machine of a result."""
    m = meta["machine"]
    gpu = f", {m['cuda_device']}" if "cuda_device" in m else ""
    return (f"date: {meta['date']}  commit: {meta['commit']}\n"
            f"machine: {m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
            f"python {m['python']}{gpu}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def discover() -> dict[str, Path]:
    """method name (the configs/ folder) -> its tiny Fashion-MNIST config."""
    found: dict[str, Path] = {}
    for path in sorted(ROOT.glob("configs/*/*_fashion_mnist.yaml")):
        found.setdefault(path.parent.name, path)
    return found


# the set configs/satmae_pp/vit_tiny_fashion_mnist.yaml reads (relative to the working directory, as there)
FASHION_MULTISPECTRAL = Path("data/fashion_mnist_multispectral")


def ensure_generated_data(cfg) -> None:
    """Write the Fashion-MNIST multispectral set a config reads when it is missing (a no-op once written)."""
    from ssl_zoo.data.make_multispectral import write_fashion_multispectral

    if cfg.data.kind == "multispectral" and FASHION_MULTISPECTRAL in Path(cfg.data.path).parents:
        log(f"writing {FASHION_MULTISPECTRAL} (once; python -m ssl_zoo.data.make_multispectral) ...")
        write_fashion_multispectral(FASHION_MULTISPECTRAL)


def run_each(names: Sequence[str], configs: dict[str, Path], missing: str, doing: str,
             run: Callable[[str, Path], dict]) -> list[dict]:
    """`run(name, config)` for every method, in order: a method without a config, or whose run raises (e.g.
    out of memory), gets an error row instead of hiding the others' numbers."""
    rows = []
    for name in names:
        if name not in configs:
            rows.append({"method": name, "error": missing})
            continue
        log(f"[{name}] {configs[name].relative_to(ROOT)}: {doing} ...")
        try:
            rows.append(run(name, configs[name]))
        except Exception as e:  # noqa: BLE001 - reported in the row and the log
            log(f"[{name}] FAILED: {type(e).__name__}: {e}")
            rows.append({"method": name, "config": str(configs[name].relative_to(ROOT)),
                         "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
        gc.collect()
    return rows


def report(path: Path, meta: dict, rows: list[dict], setting: str, table: str) -> int:
    """Write the JSON record, print provenance, the setting line and the markdown table (last); the exit
    status is 1 when a method failed."""
    written = write_json(path, {**meta, "results": rows})
    print(describe(meta))
    print(setting)
    print(f"json: {written}\n")
    print(table)
    return 1 if any("error" in r for r in rows) else 0


def quiet_overrides(steps: int, out_dir: str | Path, name: str) -> list[str]:
    """Trainer overrides for a timed run of `steps` steps: no logging, checkpoints, images or k-NN in
    the way (one checkpoint is still written at the end), never resuming an earlier run."""
    return [f"train.max_steps={steps}", f"train.output_dir={out_dir}", f"train.name={name}",
            "train.log_every=1000000", "train.ckpt_every=1000000", "train.image_every=0", "train.resume=false",
            "eval.final_knn=false", "eval.knn_every=0"]


class StepClock:
    """Wall time between consecutive optimiser steps, stamped at the end of each step.

    `stamp()` after each step (device synchronised); `times(warmup)` are the durations of the steps
    after the first `warmup` ones, each from the end of the previous step to the end of its own, so
    they include fetching the batch and augmenting it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def stamp(self) -> None:
        sync(self.device)
        self.stamps.append(time.perf_counter())

    def times(self, warmup: int) -> list[float]:
        start = max(warmup, 1)
        return [self.stamps[i] - self.stamps[i - 1] for i in range(start, len(self.stamps))]


def clock_trainer(trainer) -> StepClock:
    """Stamp a Trainer's steps through a hook on `method.after_step` (called once per optimiser step)."""
    clock = StepClock(trainer.device)
    original = trainer.method.after_step

    def hook(progress) -> None:
        original(progress)
        clock.stamp()

    trainer.method.after_step = hook  # instance attribute shadows the method's own after_step
    return clock


def img_per_s(images: int, step_times: Sequence[float]) -> float:
    """Images per second from the MEDIAN step time: robust to other jobs stealing the CPU for a step."""
    return images / statistics.median(step_times)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], right: Sequence[int] = ()) -> str:
    """A markdown table; columns whose index is in `right` are right-aligned (numbers)."""
    align = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, payload: object) -> str:
    """Write the result file; returns its path relative to the repository when it lies inside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
