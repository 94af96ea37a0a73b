"""Training throughput of every method's tiny Fashion-MNIST config: full trainer vs bare step.

For each `configs/<method>/*_fashion_mnist.yaml` this measures images per second of

  full  the real `Trainer.fit()` loop: loader, transfer, on-device augmentation (`method.views`),
        forward/backward, NaN guard, clipping, optimiser + schedule, `after_step` (EMA), logging
        bookkeeping (metrics logging, checkpoints and k-NN pushed out of the timed window);
  bare  only the method's forward + backward + optimiser step on views made once beforehand:
        `loss = method.training_step(views, progress)["loss"]; loss.backward(); opt.step(); opt.zero_grad()`
        (same model, optimiser, device and precision as the trainer).

ratio = full / bare: the share of the model's own speed the rest of the step leaves standing.
The two are measured interleaved, one bare step after each trainer step (a hook on
`method.after_step`), so load from other jobs hits both alike; see `bench_paired`. `--steps`
pairs are timed after `--warmup` untimed ones; img/s is the batch over the MEDIAN step time (the
JSON also has the means and every step time). img/s counts source images, not views.

    .venv/bin/python benchmarks/throughput.py --steps 5 --warmup 2 [--methods simclrv2 dino]

Prints the machine, then the markdown table (last); writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (RESULTS, ROOT, discover, ensure_generated_data, img_per_s,  # noqa: E402
                               markdown_table, provenance, quiet_overrides, report, run_each, sync)
from ssl_zoo.experiment import load_config  # noqa: E402
from ssl_zoo.schedules import Progress  # noqa: E402
from ssl_zoo.trainer import Trainer  # noqa: E402


class BareStep:
    """forward + backward + optimiser step of the trainer's method on views made once."""

    def __init__(self, trainer: Trainer) -> None:
        self.method, self.opt, self.device = trainer.method, trainer.optimizer, trainer.device
        self.batch_size = trainer.micro_batch
        trainer.sampler.set_position(0, 0)
        batch = next(iter(trainer.loader)).to(self.device)
        with torch.no_grad():
            self.views = self.method.views(batch)
        if trainer.cfg.train.channels_last:
            self.views = dataclasses.replace(self.views, crops=[c.contiguous(memory_format=torch.channels_last)
                                                                for c in self.views.crops])
        self.progress = Progress(0, trainer.total_steps, 0, trainer.steps_per_epoch)
        self.autocast = ((lambda: torch.autocast(self.device.type, dtype=trainer.amp_dtype))
                         if trainer.amp_dtype is not None else contextlib.nullcontext)

    def __call__(self) -> float:
        sync(self.device)
        start = time.perf_counter()
        with self.autocast():
            loss = self.method.training_step(self.views, self.progress)["loss"]
        loss.float().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - start


def bench_paired(trainer: Trainer, warmup: int) -> tuple[list[float], list[float]]:
    """Step times of the full trainer and of the bare step, interleaved one for one.

    A hook on `method.after_step` (called by the trainer once per optimiser step) stamps the end
    of each trainer step, then runs one bare step; the full step's time runs from the end of the
    previous bare step to the end of its own `after_step`, so it covers fetching its batch,
    augmentation, the step and the trainer's bookkeeping, and never the bare step. Pairing the
    two keeps a noisy machine (other jobs) from favouring whichever of them ran in a quiet spell.
    """
    full, bare = [], []
    resumed: list[float] = []
    original = trainer.method.after_step
    bare_step = BareStep(trainer)

    def hook(progress: Progress) -> None:
        original(progress)
        sync(trainer.device)
        end = time.perf_counter()
        if progress.step >= warmup:
            full.append(end - resumed[-1])
        took = bare_step()
        if progress.step >= warmup:
            bare.append(took)
        resumed.append(time.perf_counter())

    trainer.method.after_step = hook  # instance attribute shadows the method's own after_step
    try:
        trainer.fit()
    finally:
        del trainer.method.after_step
    return full, bare


def run_method(name: str, config: Path, args: argparse.Namespace, out_dir: str) -> dict:
    overrides = [*quiet_overrides(args.warmup + args.steps, out_dir, f"bench_{name}"), *args.set]
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    cfg = load_config(config, overrides)
    ensure_generated_data(cfg)
    trainer = Trainer(cfg, progress_bar=False)
    full_times, bare_times = bench_paired(trainer, args.warmup)
    full = img_per_s(trainer.global_batch, full_times)
    bare = img_per_s(trainer.micro_batch, bare_times)
    row = {"method": name, "config": str(config.relative_to(ROOT)), "backbone": cfg.model.backbone,
           "batch_size": cfg.train.batch_size, "device": str(trainer.device),
           "precision": str(trainer.amp_dtype or torch.float32).replace("torch.", ""),
           "full_img_s": full, "bare_img_s": bare, "ratio": full / bare,
           "full_img_s_mean": trainer.global_batch * len(full_times) / sum(full_times),
           "bare_img_s_mean": trainer.micro_batch * len(bare_times) / sum(bare_times),
           "full_step_s": full_times, "bare_step_s": bare_times}
    del trainer
    gc.collect()
    return row


def table(rows: list[dict]) -> str:
    header = ["method", "backbone", "batch", "device", "full trainer img/s", "bare fwd+bwd+opt img/s", "full / bare"]
    cells = [[r["method"], f"failed: {r['error'][:80]}", "", "", "", "", ""] if "error" in r else
             [r["method"], r["backbone"], r["batch_size"], r["device"], f"{r['full_img_s']:.1f}",
              f"{r['bare_img_s']:.1f}", f"{r['ratio']:.2f}"] for r in rows]
    return markdown_table(header, cells, right=(2, 4, 5, 6))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 1)")
    parser.add_argument("--methods", nargs="*", default=None, help="subset of method names (default: all found)")
    parser.add_argument("--batch-size", type=int, default=0, help="override train.batch_size (0: the config's)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--output", type=Path, default=RESULTS / "throughput.json")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    configs = discover()
    names = args.methods or list(configs)
    missing = [n for n in names if n not in configs]
    if missing:
        parser.error(f"no configs/<method>/*_fashion_mnist.yaml for {missing}; found: {sorted(configs)}")

    meta = {**provenance(), "steps": args.steps, "warmup": args.warmup}
    with tempfile.TemporaryDirectory(prefix="ssl_zoo_bench_") as tmp:
        rows = run_each(names, configs, "no config", "timing", lambda name, config: run_method(name, config, args, tmp))

    setting = (f"steps: {args.steps} timed after {args.warmup} warm-up; img/s = batch / median step time, counting "
               "source images (not views)\nfull: Trainer.fit() step (loader, augmentation, fwd/bwd, clipping, "
               "optimiser, after_step); bare: training_step + backward + optimiser step on pre-made views")
    return report(args.output, meta, rows, setting, table(rows))

if __name__ == "__main__":
    raise SystemExit(main())
