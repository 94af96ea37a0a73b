"""One short check of every method on one GPU, for the day a GPU is lent: speed, memory, host syncs, MFU.

For every registered method, its GPU-sized paper config (ViT-S/16, ViT-B or ResNet-50 at 224, the
config's per-rank batch; `GPU_CONFIGS`) trains `--warmup` + `--steps` steps through the real
`Trainer.fit()` in bf16 on synthetic images of the config's load size (no data set, nothing from
the internet; pretrained weights are never fetched), and reports

  img/s          the batch over the median step time (loader, views, forward/backward, optimiser, EMA)
  peak memory    torch.cuda.max_memory_allocated over the run
  syncs / step   host syncs (`torch.cuda.set_sync_debug_mode("warn")` warnings) over the timed steps,
                 per step: the trainer's one stop/NaN flag is expected, every other one stalls the GPU
  views share    the share of the step spent in `method.views` (on-device augmentation), synchronised
  MFU            MAE ViT-B/16 only: FLOPs of one step (forward + backward, counted by
                 `torch.utils.flop_counter.FlopCounterMode`) x steps/s / H200_BF16_DENSE_PEAK

and prints the markdown table last. 3 + 10 steps per method keep the whole check well under the
10 minutes one GPU is lent for (on an H200: about 3 minutes for all ten; table in docs/benchmarks.md).

    .venv/bin/python benchmarks/gpu_check.py [--methods mae dino] [--steps 10] [--warmup 3]
    .venv/bin/python benchmarks/gpu_check.py --dry     # CPU: tiny configs, batch 8, 1 + 2 steps, same code path

`--dry` runs each method's tiny Fashion-MNIST config on the CPU in fp32 instead (what the tests run);
the memory and sync columns are '-' there (they are CUDA counters) and MFU is against the same GPU peak.
Writes benchmarks/results/gpu_check.json (gpu_check_dry.json for --dry).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (RESULTS, ROOT, clock_trainer, discover, img_per_s, markdown_table,  # noqa: E402
                               provenance, quiet_overrides, report, run_each, sync)
from ssl_zoo.config import ExperimentConfig  # noqa: E402
from ssl_zoo.experiment import load_config
from ssl_zoo.registry import available_methods  # noqa: E402
from ssl_zoo.schedules import Progress  # noqa: E402
from ssl_zoo.trainer import Trainer  # noqa: E402

# NVIDIA H200 SXM, dense BF16 tensor-core peak (the datasheet's 1,979 TFLOPS is with 2:4 sparsity):
# https://www.nvidia.com/en-us/data-center/h200/ (H200 SXM: "BFLOAT16 Tensor Core 1,979 teraFLOPS*",
# *with sparsity), i.e. 989.5 TFLOP/s dense, the same as the H100 SXM.
H200_BF16_DENSE_PEAK = 989.5e12

# the paper-sized config each method is checked with (ViT-S/16 or ResNet-50 at 224 where the method has one)
GPU_CONFIGS = {
    "simclrv2": "configs/simclrv2/resnet50_imagenet.yaml",
    "dino": "configs/dino/vit_small_imagenet.yaml",
    "mae": "configs/mae/vit_base_imagenet.yaml",  # ViT-B/16: the MFU row
    "gmml": "configs/gmml/vit_small_imagenet.yaml",
    "sit": "configs/sit/vit_small_imagenet.yaml",
    "selfie": "configs/selfie/resnet50_imagenet.yaml",
    "pixpro": "configs/pixpro/resnet50_imagenet.yaml",
    "croco": "configs/croco/vit_base_imagenet.yaml",  # the paper's smallest encoder
    "satmae_pp": "configs/satmae_pp/vit_large_sentinel.yaml",  # the paper's only group-channel model
    "rad_dino": "configs/rad_dino/vit_base_p14_518_radiographs.yaml",  # the paper's only size
}
MFU_METHOD = "mae"
DRY_BATCH, DRY_STEPS, DRY_WARMUP = 8, 2, 1
SYNC_WARNING = "called a synchronizing CUDA operation"
SYNTHETIC_KIND = {"pairs": "synthetic_pairs", "synthetic_pairs": "synthetic_pairs",
                  "multispectral": "synthetic_multispectral", "synthetic_multispectral": "synthetic_multispectral"}


def synthetic_overrides(cfg: ExperimentConfig, batch: int) -> list[str]:
    """The config's data swapped for in-memory synthetic images of the same kind, size and channels."""
    kind = SYNTHETIC_KIND.get(cfg.data.kind, "synthetic")
    extra = ["data.pairs_source=synthetic"] if kind == "synthetic_pairs" else []
    return [f"data.kind={kind}", f"data.synthetic_size={2 * batch}", "data.num_workers=0", "data.path=",
            "data.eval_path=", "data.band_mean=[]", "data.band_std=[]", "data.bands=[]", *extra]


def run_overrides(name: str, config: Path, args: argparse.Namespace, out_dir: str) -> list[str]:
    """The config's overrides for the check: bf16 on CUDA (fp32 on the CPU with --dry), the per-rank batch on
    one device (the paper configs' global batch is for many GPUs), synthetic data."""
    base = load_config(config, args.set)
    batch = args.batch_size or (DRY_BATCH if args.dry else base.train.batch_size)
    device = ["train.device=cpu", "train.precision=fp32"] if args.dry else ["train.device=cuda",
                                                                          "train.precision=bf16"]
    return [*quiet_overrides(args.warmup + args.steps, out_dir, f"gpu_check_{name}"), *device,
            f"train.batch_size={batch}", "train.global_batch=0", "train.accumulate=1", "model.init_from=",
            *synthetic_overrides(base, batch), *args.set]


def build(name: str, config: Path, args: argparse.Namespace, out_dir: str) -> Trainer:
    return Trainer(load_config(config, run_overrides(name, config, args, out_dir)), progress_bar=False)


def time_views(trainer: Trainer) -> list[float]:
    """Synchronised wall time of every `method.views` call (a hook shadowing the method's own)."""
    spent: list[float] = []
    original = trainer.method.views

    def views(batch):
        sync(trainer.device)
        start = time.perf_counter()
        out = original(batch)
        sync(trainer.device)
        spent.append(time.perf_counter() - start)
        return out

    trainer.method.views = views
    return spent


def count_syncs(trainer: Trainer, warmup: int, caught: list) -> list[int]:
    """Turn CUDA's sync debug mode on after the warm-up steps and off after the last step (so the final
    checkpoint's copies are not counted); returns [warnings recorded when it went on, ... when off]."""
    marks: list[int] = []
    if trainer.device.type != "cuda":
        return marks
    original = trainer.method.after_step

    def after_step(progress: Progress) -> None:
        original(progress)
        if progress.step + 1 == warmup:
            torch.cuda.synchronize()
            marks.append(len(caught))
            torch.cuda.set_sync_debug_mode("warn")
        if progress.step + 1 == trainer.total_steps:
            torch.cuda.set_sync_debug_mode("default")
            marks.append(len(caught))

    trainer.method.after_step = after_step  # runs inside clock_trainer's hook: the stamp comes after it
    return marks


def step_flops(trainer: Trainer) -> int:
    """FLOPs of one optimiser step's forward + backward (views excluded), counted by FlopCounterMode."""
    method = trainer.method
    trainer.sampler.set_position(0, 0)
    batch = next(iter(trainer.loader)).to(trainer.device)
    with torch.no_grad():
        views = method.views(batch)
    progress = Progress(0, trainer.total_steps, 0, trainer.steps_per_epoch)
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast(trainer.device.type, dtype=trainer.amp_dtype, enabled=trainer.amp_dtype is not None):
            loss = method.training_step(views, progress)["loss"]
        loss.float().backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def run_method(name: str, config: Path, args: argparse.Namespace, out_dir: str) -> dict:
    trainer = build(name, config, args, out_dir)
    cuda = trainer.device.type == "cuda"
    flops = step_flops(trainer) if name == MFU_METHOD else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    views_s = time_views(trainer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        marks = count_syncs(trainer, args.warmup, caught)
        clock = clock_trainer(trainer)
        trainer.fit()
    syncs = [w for w in caught[marks[0]:marks[1]] if SYNC_WARNING in str(w.message)] if len(marks) == 2 else None
    steps = clock.times(args.warmup)
    step_s = statistics.median(steps)
    row = {"method": name, "config": str(config.relative_to(ROOT)), "backbone": trainer.cfg.model.backbone,
           "load_size": trainer.cfg.data.load_size, "batch_size": trainer.micro_batch,
           "device": str(trainer.device), "precision": str(trainer.amp_dtype or torch.float32).replace("torch.", ""),
           "img_s": img_per_s(trainer.micro_batch, steps), "step_s": steps,
           "views_share": statistics.median(views_s[args.warmup:]) / step_s,
           "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
           "syncs_per_step": len(syncs) / len(steps) if syncs is not None else None,
           "sync_sites": sorted({str(w.filename) + ":" + str(w.lineno) for w in syncs})[:20] if syncs else []}
    if flops is not None:
        row["step_flops"] = flops
        row["tflop_s"] = flops / step_s / 1e12
        row["mfu"] = flops / step_s / H200_BF16_DENSE_PEAK
    del trainer
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def table(rows: list[dict]) -> str:
    header = ["method", "backbone", "load size", "batch", "device", "img/s", "peak memory GiB", "syncs / step",
              "views share", "MFU"]
    cells = []
    for r in rows:
        if "error" in r:
            cells.append([r["method"], f"failed: {r['error'][:80]}", "", "", "", "", "", "", "", ""])
            continue
        memory = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        syncs = f"{r['syncs_per_step']:.1f}" if r["syncs_per_step"] is not None else "-"
        mfu = f"{100 * r['mfu']:.1f}% ({r['tflop_s']:.1f} TFLOP/s)" if "mfu" in r else ""
        cells.append([r["method"], r["backbone"], r["load_size"], r["batch_size"], r["device"], f"{r['img_s']:.1f}",
                      memory, syncs, f"{100 * r['views_share']:.0f}%", mfu])
    return markdown_table(header, cells, right=(2, 3, 5, 6, 7, 8, 9))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="*", default=None, help="subset of registered methods (default: all)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"timed steps per method (default 10; --dry {DRY_STEPS})")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"untimed steps first, cuDNN/allocator warm-up (default 3; --dry {DRY_WARMUP})")
    parser.add_argument("--batch-size", type=int, default=0,
                        help=f"per-GPU batch (0: each config's own; --dry {DRY_BATCH})")
    parser.add_argument("--dry", action="store_true", help="CPU, tiny configs, fp32: checks the script itself")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides (all methods)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    args.steps = args.steps or (DRY_STEPS if args.dry else 10)
    args.warmup = args.warmup or (DRY_WARMUP if args.dry else 3)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1")
    if not args.dry and not torch.cuda.is_available():
        parser.error("no CUDA device here: run with --dry (CPU, tiny configs) or on a GPU machine")
    registered = list(available_methods())
    names = args.methods or registered
    unknown = [n for n in names if n not in registered]
    if unknown:
        parser.error(f"unknown methods {unknown}; registered: {registered}")
    configs = discover() if args.dry else {n: ROOT / p for n, p in GPU_CONFIGS.items()}
    output = args.output or RESULTS / ("gpu_check_dry.json" if args.dry else "gpu_check.json")
    meta = {**provenance(), "dry": args.dry, "steps": args.steps, "warmup": args.warmup,
            "peak_flop_s": H200_BF16_DENSE_PEAK}
    with tempfile.TemporaryDirectory(prefix="ssl_zoo_gpu_check_") as tmp:
        rows = run_each(names, configs, "no config for this check", f"{args.warmup} + {args.steps} steps",
                        lambda name, config: run_method(name, config, args, tmp))
    mode = "dry run (CPU, tiny configs, fp32)" if args.dry else "bf16 on " + torch.cuda.get_device_name(0)
    return report(output, meta, rows, f"{mode}: {args.warmup} warm-up + {args.steps} timed steps per method; MFU "
                  f"against {H200_BF16_DENSE_PEAK / 1e12:.1f} TFLOP/s (H200 dense bf16)", table(rows))

if __name__ == "__main__":
    raise SystemExit(main())
