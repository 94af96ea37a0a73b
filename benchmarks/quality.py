"""Representation quality of every method at an equal wall-clock budget, next to two baselines.

For every registered method with a `configs/<method>/*_fashion_mnist.yaml`: pretrain that config for
`--minutes` of wall time (the trainer's `train.time_budget_min`: it times its first steps and plans the
step count that fits; `--steps` caps it; steps reached are reported), then measure on the test set

  k-NN top-1     weighted cosine k-NN (k=20, T=0.07) over L2-normalised frozen features
  linear top-1   logistic regression on the same features, lr x weight-decay picked on a validation
                 split of the train features (ssl_zoo.eval.linear.linear_probe)

with the zoo's evaluation code (`ssl_zoo.eval.source.load_source`: the backbone and evaluation view a
run is evaluated with by `ssl-zoo eval`), on `--train-limit` train and `--test-limit` test images spread
evenly over each split. Baselines measured in the same run: the randomly initialised backbone of each method (the
exact starting point of its pretraining, `pretrained=False`), and raw pixels (the 28x28 images
flattened, as features).

Methods whose paper evaluates by fine-tuning (FINETUNED; `--finetune` changes the list) are also
fine-tuned end to end, as `ssl-zoo finetune --labels 10%` does, next to the same network and recipe from
random weights (`--from-scratch`): what their papers report, since a reconstruction objective need not
make the frozen features linearly separable.

    .venv/bin/python benchmarks/quality.py [--minutes 15] [--methods simclrv2 mae] [--train-limit 10000]

Prints the date, machine, commit and budget, then the markdown table (last); writes
benchmarks/results/quality.json.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (RESULTS, ROOT, discover, ensure_generated_data, log, markdown_table,  # noqa: E402
                               provenance, quiet_overrides, report, run_each)
from ssl_zoo.config import DataConfig  # noqa: E402
from ssl_zoo.experiment import load_config  # noqa: E402
from ssl_zoo.data import build_dataset  # noqa: E402
from ssl_zoo.eval.features import extract_features  # noqa: E402
from ssl_zoo.eval.finetune import finetune, finetune_recipe, parse_label_fraction  # noqa: E402
from ssl_zoo.eval.knn import knn_accuracy  # noqa: E402
from ssl_zoo.eval.linear import linear_probe  # noqa: E402
from ssl_zoo.eval.source import labelled_splits, load_source  # noqa: E402
from ssl_zoo.registry import available_methods  # noqa: E402
from ssl_zoo.runtime import pick_device  # noqa: E402
from ssl_zoo.trainer import Trainer  # noqa: E402


# --steps 0: the time budget alone decides, and the config's epoch-counted schedules stretch with the run (the
# Trainer scales them to the steps the budget allows, keeping each its share of the config's own length)
STEP_CAP = 10**7
# the methods whose papers report fine-tuning, not frozen features: GMML (fine-tuning on ImageNet and small
# sets; its loss reconstructs pixels, nothing trains the class token) and SatMAE++ (fine-tuning on fMoW and
# the land-cover sets)
FINETUNED = ("gmml", "satmae_pp")


def probe(embed, train_set, test_set, device: torch.device, args: argparse.Namespace) -> dict:
    """k-NN and linear-probe top-1 (%) of `embed` features on the limited train/test images."""
    tr = extract_features(embed, train_set, device, args.eval_batch, args.train_limit, progress=False)
    te = extract_features(embed, test_set, device, args.eval_batch, args.test_limit, progress=False)
    knn = knn_accuracy(*tr, *te, k=args.k, temperature=args.temperature)
    linear = linear_probe(*tr, *te, epochs=args.linear_epochs)
    return {"knn_top1": knn, "linear_top1": linear.test_top1, "linear_lr": linear.lr,
            "linear_weight_decay": linear.weight_decay, "feature_dim": tr[0].shape[1],
            "train_images": len(tr[0]), "test_images": len(te[0])}


def evaluate_run(run_dir: Path, pretrained: bool, device: torch.device, args: argparse.Namespace) -> dict:
    """Probe a finished run's backbone, or (pretrained=False) the same network as initialised."""
    src = load_source(str(run_dir), pretrained=pretrained).to(device)
    src.backbone.eval()
    train_set, test_set = labelled_splits(src.cfg.data, "quality")
    return probe(src.embed, train_set, test_set, device, args)


def eval_data(data: DataConfig) -> str:
    """The labelled images a method is evaluated on: its own config's (not every tiny config trains
    on Fashion-MNIST itself, e.g. SatMAE++'s multispectral one)."""
    return data.pairs_source if data.kind == "synthetic_pairs" else data.kind


def run_method(name: str, config: Path, args: argparse.Namespace, out_dir: str, device: torch.device) -> dict:
    cfg = load_config(config, [*quiet_overrides(args.steps or STEP_CAP, out_dir, f"quality_{name}"),
                               f"train.time_budget_min={args.minutes}", f"train.device={args.device}", *args.set])
    ensure_generated_data(cfg)
    trainer = Trainer(cfg, progress_bar=False)
    start = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - start
    del trainer
    gc.collect()
    row = {"method": name, "config": str(config.relative_to(ROOT)), "backbone": cfg.model.backbone,
           "eval_data": eval_data(cfg.data), "steps": result.step, "batch_size": cfg.train.batch_size,
           "pretrain_s": seconds}
    row["pretrained"] = evaluate_run(result.run_dir, True, device, args)
    row["random_init"] = evaluate_run(result.run_dir, False, device, args)
    if name in args.finetune:
        row["finetune"] = {which: finetune_run(result.run_dir, which == "scratch", args)
                           for which in ("pretrained", "scratch")}
    return row


def finetune_run(run_dir: Path, from_scratch: bool, args: argparse.Namespace) -> dict:
    """`ssl-zoo finetune RUN --labels <args.labels> [--from-scratch]`: test top-1 and what it trained on."""
    fraction = parse_label_fraction(args.labels)
    recipe = finetune_recipe(fraction, args.finetune_batch, args.finetune_recipe, args.finetune_epochs or None)
    recipe.test_limit = args.test_limit
    result, _ = finetune(str(run_dir), fraction, recipe, device=args.device, from_scratch=from_scratch,
                         progress=False)
    return {"test_top1": result.test_top1, "labels": result.labels, "labelled_images": result.labelled_images,
            "epochs": result.epochs, "test_images": result.test_images}


def raw_pixels(device: torch.device, args: argparse.Namespace) -> dict:
    """The baseline every feature must beat: Fashion-MNIST's 28x28 grey pixels, flattened."""
    data = DataConfig(kind="fashion_mnist", load_size=28, channels=1, path=args.data_path)
    train_set, test_set = build_dataset(data, "train"), build_dataset(data, "test")
    scores = probe(lambda images: images.float().flatten(1) / 255.0, train_set, test_set, device, args)
    return {"method": "raw pixels", "backbone": "28×28 pixels", "eval_data": "fashion_mnist", "steps": 0,
            "pretrain_s": 0.0, "pretrained": scores}


def table(rows: list[dict]) -> str:
    header = ["method", "backbone", "eval data", "steps", "pretrain s", "k-NN top-1", "linear top-1",
              "random-init k-NN", "random-init linear", "Δ k-NN", "Δ linear"]
    cells = []
    for r in rows:
        if "error" in r:
            cells.append([r["method"], f"failed: {r['error'][:80]}"] + [""] * (len(header) - 2))
            continue
        p, rnd = r["pretrained"], r.get("random_init")
        scores = [f"{p['knn_top1']:.2f}", f"{p['linear_top1']:.2f}"]
        if rnd:
            scores += [f"{rnd['knn_top1']:.2f}", f"{rnd['linear_top1']:.2f}",
                       f"{p['knn_top1'] - rnd['knn_top1']:+.2f}", f"{p['linear_top1'] - rnd['linear_top1']:+.2f}"]
        else:
            scores += ["-"] * 4
        cells.append([r["method"], r["backbone"], r["eval_data"], r["steps"], f"{r['pretrain_s']:.0f}", *scores])
    return markdown_table(header, cells, right=tuple(range(3, len(header))))


def finetune_table(rows: list[dict]) -> str:
    """Fine-tuned from the pretrained weights vs from random weights, same network and recipe."""
    header = ["method", "labels", "epochs", "fine-tuned top-1", "from scratch top-1", "Δ"]
    cells = []
    for r in rows:
        if "finetune" in r:
            p, s = r["finetune"]["pretrained"], r["finetune"]["scratch"]
            cells.append([r["method"], f"{p['labels']} ({p['labelled_images']} images)", f"{p['epochs']:g}",
                          f"{p['test_top1']:.2f}", f"{s['test_top1']:.2f}", f"{p['test_top1'] - s['test_top1']:+.2f}"])
    return markdown_table(header, cells, right=(2, 3, 4, 5)) if cells else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0,
                        help="wall-clock pretraining budget per method (train.time_budget_min), set-up excluded")
    parser.add_argument("--steps", type=int, default=0, help="at most this many steps per method (0: no cap)")
    parser.add_argument("--methods", nargs="*", default=None, help="subset of registered methods (default: all)")
    parser.add_argument("--train-limit", type=int, default=10000, help="N train images (spread over the split) for k-NN/probe (0: all)")
    parser.add_argument("--test-limit", type=int, default=10000, help="N test images, spread over the split (0: all 10000)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--linear-epochs", type=int, default=30)
    parser.add_argument("--eval-batch", type=int, default=512)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data-path", default="", help="Fashion-MNIST folder for the raw-pixel baseline")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--finetune", nargs="*", default=list(FINETUNED), metavar="METHOD",
                        help=f"also fine-tune these methods' runs and the same network from scratch "
                             f"(default: {' '.join(FINETUNED)}, whose papers evaluate so; no names: none)")
    parser.add_argument("--labels", default="10%", help="fine-tuning's share of the labelled train split")
    parser.add_argument("--finetune-epochs", type=float, default=0,
                        help="fine-tuning epochs (0: the recipe's, 30 for 10%% of the labels)")
    # 64, not the recipe's 1024: 10% of a 10,000-image split is 1,000 images, one step per epoch at 1024 (30 in
    # all; SatMAE++'s loss was 2.29 after 16 of them, ln 10 = 2.30); at 64 the same images make 15 steps per epoch
    parser.add_argument("--finetune-batch", type=int, default=64, help="fine-tuning batch (lr 0.005 x sqrt(batch))")
    # MAE's AdamW, not SimCLR's SGD: the fine-tuned methods are ViTs, and SGD without warm-up diverged on SatMAE++'s
    parser.add_argument("--finetune-recipe", default="mae", choices=["simclr", "mae"],
                        help="ssl-zoo finetune --recipe (default mae: the ViT fine-tuning optimiser of MAE, "
                             "GMML, SatMAE++)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides (all methods)")
    parser.add_argument("--output", type=Path, default=RESULTS / "quality.json")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="keep the runs (checkpoint, metrics.jsonl with the collapse diagnostics) here "
                             "instead of a temporary folder; add --set train.log_every=N to log them")
    args = parser.parse_args(argv)
    if args.steps < 0 or args.minutes <= 0:
        parser.error(f"--steps must be >= 0 (got {args.steps}) and --minutes > 0 (got {args.minutes})")
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = discover()
    registered = list(available_methods())
    names = args.methods or registered
    unknown = [n for n in [*names, *args.finetune] if n not in registered]
    if unknown:
        parser.error(f"unknown methods {unknown}; registered: {registered}")
    device = pick_device(args.device)
    meta = {**provenance(), "minutes": args.minutes, "steps": args.steps, "train_limit": args.train_limit, "test_limit": args.test_limit,
            "k": args.k, "temperature": args.temperature, "linear_epochs": args.linear_epochs,
            "finetune": [n for n in args.finetune if n in names], "labels": args.labels,
            "finetune_epochs": args.finetune_epochs, "finetune_batch": args.finetune_batch,
            "finetune_recipe": args.finetune_recipe}
    with tempfile.TemporaryDirectory(prefix="ssl_zoo_quality_") as tmp:
        out_dir = str(args.runs_dir or tmp)
        rows = run_each(names, configs, "no configs/<method>/*_fashion_mnist.yaml",
                        f"{args.minutes:g} minutes, then k-NN and linear probe",
                        lambda name, config: run_method(name, config, args, out_dir, device))
    log("[raw pixels] ...")
    rows.append(raw_pixels(device, args))
    limits = " / ".join(f"{n} spread over the split" if n else "all" for n in (args.train_limit, args.test_limit))
    cap = f", at most {args.steps} steps" if args.steps else ""
    setting = (f"budget: {args.minutes:g} minutes of pretraining per method{cap} (its tiny Fashion-MNIST config; "
               f"steps reached and wall time in the table); evaluation on Fashion-MNIST train / test images: "
               f"{limits}; k-NN k={args.k}, T={args.temperature}; linear probe {args.linear_epochs} epochs, "
               f"lr x wd picked on a 10% validation split of train")
    tuned = finetune_table(rows)
    if tuned:
        setting += (f"\nfine-tuning (ssl-zoo finetune --labels {args.labels} --batch-size {args.finetune_batch} "
                    f"--recipe {args.finetune_recipe}, and --from-scratch), test top-1 on the same test images:"
                    f"\n\n{tuned}")
    return report(args.output, meta, rows, setting, table(rows))

if __name__ == "__main__":
    raise SystemExit(main())
