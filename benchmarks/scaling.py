"""How one method's training throughput scales: 1 vs 2 DDP ranks, image size, batch size.

  ranks        the real trainer in 1 and then 2 processes (gloo on CPU, nccl on CUDA), launched the
               way torchrun does it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT, which
               ssl_zoo.distributed reads), each rank with the same per-rank batch and
               `--threads-per-rank` torch threads, on the method's tiny Fashion-MNIST config.
               efficiency = 2-rank img/s / (2 x 1-rank img/s); 1.0 is perfect scaling.
  image size   the trainer in this process on synthetic images of each `--sizes` side (loaded and
               viewed at that side: data.load_size and method.view.size), at the config's batch.
               scaling = (step time / first step time) / (pixels / first pixels): below 1, bigger
               images cost less than their pixel count says.
  batch size   the same at the config's view size for each `--batch-sizes`.
               scaling = (step time / first step time) / (batch / first batch).

Everything is a full `Trainer.fit()` step (loader, on-device augmentation, forward, backward,
optimiser, EMA); img/s = global batch / median step time of `--steps` steps after `--warmup`.
Rank runs alternate 1, 2, 1, 2 (`--repeats`), the table shows the median.

    .venv/bin/python benchmarks/scaling.py --method simclrv2 --steps 10 --warmup 2

Prints the machine and settings, then the markdown table (last); writes benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (RESULTS, ROOT, clock_trainer, describe, discover, img_per_s, log,  # noqa: E402
                               markdown_table, provenance, quiet_overrides, write_json)
from ssl_zoo.experiment import load_config  # noqa: E402
from ssl_zoo.launch.local_ranks import failures, run_ranks  # noqa: E402
from ssl_zoo.trainer import Trainer  # noqa: E402


def timed_fit(config: str, overrides: list[str], warmup: int) -> dict:
    """One trainer run (this process is one rank); its global batch and step times after warm-up."""
    from ssl_zoo import distributed

    trainer = Trainer(load_config(config, overrides), progress_bar=False)
    clock = clock_trainer(trainer)
    trainer.fit()
    out = {"global_batch": trainer.global_batch, "world_size": trainer.dist.world_size,
           "step_s": clock.times(warmup)}
    distributed.cleanup()
    return out


def worker(spec: str) -> int:
    """A rank launched by `launch`: run, and rank 0 writes its step times to spec['out']."""
    job = json.loads(spec)
    result = timed_fit(job["config"], job["overrides"], job["warmup"])
    if int(os.environ.get("RANK", "0")) == 0:
        Path(job["out"]).write_text(json.dumps(result))
    return 0


def launch(world: int, config: Path, overrides: list[str], warmup: int, threads: int, out: Path,
           timeout: float) -> dict:
    """`world` processes of this script in worker mode with the torchrun environment."""
    job = json.dumps({"config": str(config), "overrides": overrides, "warmup": warmup, "out": str(out)})
    report = failures(run_ranks([__file__, "--worker", job], world, ROOT, threads, timeout), tail=2000)
    if report:
        raise RuntimeError(f"{world}-rank run failed:\n{report}")
    return json.loads(out.read_text())


def rank_rows(config: Path, args: argparse.Namespace, tmp: str) -> list[dict]:
    overrides = [*quiet_overrides(args.warmup + args.steps, tmp, "scaling_ddp"),
                 f"train.threads={args.threads_per_rank}", f"train.device={args.device}", *args.set]
    cfg = load_config(config, overrides)
    view = getattr(cfg.method, "view", None)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for r in range(args.repeats):
        for world in (1, 2):  # alternating: load from other jobs hits both alike
            log(f"[ranks] repeat {r + 1}/{args.repeats}: {world} rank(s) ...")
            runs[world].append(launch(world, config, overrides, args.warmup, args.threads_per_rank,
                                      Path(tmp) / f"ranks{world}_{r}.json", args.timeout))
    rows = []
    for world, results in runs.items():
        rates = [img_per_s(res["global_batch"], res["step_s"]) for res in results]
        batch = results[0]["global_batch"] // world
        rows.append({"measure": "ranks", "ranks": world, "image_size": view.size if view else "config",
                     "batch_per_rank": batch,
                     "step_s": statistics.median(statistics.median(res["step_s"]) for res in results),
                     "img_s": statistics.median(rates), "img_s_runs": rates})
    rows[1]["scaling"] = rows[1]["img_s"] / (2 * rows[0]["img_s"])
    return rows


def sweep_row(config: Path, args: argparse.Namespace, tmp: str, size: int | None, batch: int | None) -> dict:
    cfg = load_config(config)
    size = size or cfg.method.view.size
    batch = batch or cfg.train.batch_size
    overrides = [*args.set, *quiet_overrides(args.warmup + args.steps, tmp, "scaling_sweep"),
                 f"train.device={args.device}", "data.kind=synthetic",
                 f"data.synthetic_size={batch * (args.warmup + args.steps)}", f"data.load_size={size}",
                 f"method.view.size={size}", f"train.batch_size={batch}"]  # the swept values win over --set
    if cfg.model.img_size:  # a ViT built for a fixed side
        overrides.append(f"model.img_size={size}")
    result = timed_fit(str(config), overrides, args.warmup)
    return {"ranks": 1, "image_size": size, "batch_per_rank": batch, "step_s": statistics.median(result["step_s"]),
            "img_s": img_per_s(batch, result["step_s"])}


def sweep_rows(config: Path, args: argparse.Namespace, tmp: str) -> list[dict]:
    if not hasattr(load_config(config).method, "view"):
        raise ValueError(f"the size sweep needs a method with one view recipe (method.view), not {args.method}")
    rows = []
    for measure, values in (("image size", args.sizes), ("batch size", args.batch_sizes)):
        first = None
        for value in values:
            log(f"[{measure}] {value} ...")
            size, batch = (value, None) if measure == "image size" else (None, value)
            row = {"measure": measure, **sweep_row(config, args, tmp, size, batch)}
            first = first or row
            grew = row["image_size"] ** 2 / first["image_size"] ** 2 if measure == "image size" else \
                row["batch_per_rank"] / first["batch_per_rank"]
            row["scaling"] = (row["step_s"] / first["step_s"]) / grew
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    header = ["measure", "ranks", "image size", "batch / rank", "step s", "img/s", "scaling"]
    cells = [[r["measure"], r["ranks"], r["image_size"], r["batch_per_rank"], f"{r['step_s']:.3f}",
              f"{r['img_s']:.1f}", f"{r['scaling']:.2f}" if "scaling" in r else "-"] for r in rows]
    return markdown_table(header, cells, right=(1, 3, 4, 5, 6))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(argv[1])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="simclrv2", help="a method with configs/<method>/*_fashion_mnist.yaml")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating 1-rank / 2-rank runs")
    parser.add_argument("--threads-per-rank", type=int, default=1, help="torch threads of each rank")
    parser.add_argument("--sizes", type=int, nargs="*", default=[28, 56, 112], help="image sides (none: skip)")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 64, 128], help="batch sizes (none: skip)")
    parser.add_argument("--no-ranks", action="store_true", help="skip the 1 vs 2 rank runs")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                        help="cpu: gloo ranks on the CPU (the default, as the issue asks)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per DDP launch")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--output", type=Path, default=RESULTS / "scaling.json")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.repeats < 1:
        parser.error("--steps, --warmup and --repeats must be >= 1")
    configs = discover()
    if args.method not in configs:
        parser.error(f"no configs/{args.method}/*_fashion_mnist.yaml; found: {sorted(configs)}")
    config = configs[args.method]
    meta = {**provenance(), "method": args.method, "config": str(config.relative_to(ROOT)), "steps": args.steps,
            "warmup": args.warmup, "repeats": args.repeats, "threads_per_rank": args.threads_per_rank}
    with tempfile.TemporaryDirectory(prefix="ssl_zoo_scaling_") as tmp:
        rows = [] if args.no_ranks else rank_rows(config, args, tmp)
        rows += sweep_rows(config, args, tmp) if (args.sizes or args.batch_sizes) else []
    written = write_json(args.output, {**meta, "results": rows})
    print(describe(meta))
    print(f"method: {args.method} ({meta['config']}); full Trainer.fit() steps, {args.steps} timed after "
          f"{args.warmup} warm-up; img/s = global batch / median step time")
    print(f"ranks: Fashion-MNIST, {args.threads_per_rank} thread(s) per rank, median of {args.repeats} alternating "
          "runs; scaling = 2-rank img/s / (2 x 1-rank img/s)")
    print("image size / batch size: synthetic images, one process; scaling = step-time growth / pixel (batch) growth")
    print(f"json: {written}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
