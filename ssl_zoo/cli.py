"""`ssl-zoo` command line: methods, train, config show, eval knn/linear, finetune, distill, submit, jobs,
cancel, hub (export, list, info, download, official, import-official; `export` is kept as an alias)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssl_zoo.errors import SslZooError

# Overrides are dotted config keys with YAML values; each command's epilog names only keys that change what it does
EPILOG = "Overrides are dotted keys with YAML values, e.g. optim.base_lr=0.1 train.max_steps=200 data.path=/data"
EVAL_EPILOG = ("Overrides are dotted keys with YAML values on the training config stored with the source; what "
               "changes the evaluation: data.* (e.g. data.path=/data/train data.eval_path=/data/val) and "
               "eval.batch_size=256")


def cmd_methods(args: argparse.Namespace) -> int:
    from ssl_zoo.registry import available_methods

    methods = available_methods()
    width = max(map(len, methods))
    for name, cls in methods.items():
        print(f"{name:<{width}}  {cls.description}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from ssl_zoo.config import dump_yaml
    from ssl_zoo.experiment import load_config

    print(dump_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ssl_zoo.config import per_rank_batch
    from ssl_zoo.distributed import env_layout
    from ssl_zoo.experiment import load_config
    from ssl_zoo.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    if cfg.train.global_batch:  # the per-rank batch of this launch's ranks (torchrun or srun), as an override
        ranks = env_layout().world_size
        cfg = load_config(args.config, [*args.overrides, f"train.batch_size={per_rank_batch(cfg.train, ranks)}"])
    trainer = Trainer(cfg, progress_bar=not args.no_progress)
    result = trainer.fit()
    if trainer.dist.is_main:
        print(f"run: {result.run_dir}  status: {result.status}  steps: {result.step}")
        if result.knn_top1 is not None:
            print(f"k-NN top-1 (k={cfg.eval.knn_k}, T={cfg.eval.knn_temperature}) on the test set: {result.knn_top1:.2f}%")
        if result.skipped_images:
            print(f"skipped: {result.skipped_images} unreadable images (replaced by readable ones; see the warnings)")
        print(f"checkpoint: {result.checkpoint}")
        print(f"tensorboard logs: {result.tb_dir}  (tensorboard --logdir {result.tb_dir})")
    return 0


def cmd_eval_knn(args: argparse.Namespace) -> int:
    from ssl_zoo.eval.frozen import evaluate_knn

    top1 = evaluate_knn(args.source, args.overrides, k=args.k, temperature=args.temperature,
                        device=args.device, hub=args.hub)
    print(f"k-NN top-1 (k={args.k}, T={args.temperature}): {top1:.2f}%")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ssl_zoo.hub.export import export

    folder = export(Path(args.source), args.name, Path(args.hub), overwrite=args.overwrite)
    print(f"exported {args.name}: {folder} (index: {Path(args.hub) / 'index.json'})")
    return 0


def print_table(rows: list[tuple[str, ...]]) -> None:
    """Left-aligned columns, two spaces apart; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _size(num_bytes: object) -> str:
    return f"{num_bytes / 2**20:.1f} MiB" if isinstance(num_bytes, (int, float)) else "?"


def cmd_hub_list(args: argparse.Namespace) -> int:
    from ssl_zoo.hub import open_hub

    source = open_hub(args.hub)
    models = source.index()["models"]
    if not models:
        print(f"hub {source} has no models")
        return 0
    rows = [("name", "architecture", "method", "dataset", "k-NN top-1", "size")]
    for name, e in sorted(models.items()):
        knn = e.get("metrics", {}).get("knn_top1")
        rows.append((name, str(e.get("architecture")), str(e.get("method")), str(e.get("dataset")),
                     f"{knn:.2f}%" if isinstance(knn, (int, float)) else "-", _size(e.get("size_bytes"))))
    print_table(rows)
    return 0


def cmd_hub_info(args: argparse.Namespace) -> int:
    import json

    from ssl_zoo.hub import read_model_config, resolve

    folder, _ = resolve(args.name, args.hub, args.cache_dir, weights=False)
    config = read_model_config(folder)
    meta = config["ssl_zoo"]
    summary = {"name": args.name, "folder": str(folder), "architecture": config["architecture"],
               "model_args": config.get("model_args", {}), "num_features": config.get("num_features"),
               "pretrained_cfg": config["pretrained_cfg"],
               **{k: meta.get(k) for k in ("method", "dataset", "steps", "stem", "timm_compatible", "metrics",
                                           "sha256", "size_bytes", "exported")}}
    print(json.dumps(summary, indent=2))
    return 0


def cmd_hub_download(args: argparse.Namespace) -> int:
    from ssl_zoo.hub.loading import read_weights
    from ssl_zoo.hub.source import resolve

    folder, expected = resolve(args.name, args.hub, args.cache_dir)
    read_weights(folder, expected)  # verified and readable, not just present
    print(folder)
    return 0


def cmd_hub_import_official(args: argparse.Namespace) -> int:
    from ssl_zoo.hub import HubError, cache_root
    from ssl_zoo.hub.official import import_official
    from ssl_zoo.hub.releases import resolve_official

    path, fmt, key, url = resolve_official(args.source, args.format, args.key, cache_root(args.cache_dir),
                                           args.mirror, args.sha256)
    name = args.name or (args.source if url else None)  # a release is named after itself by default
    if name is None:
        raise HubError("--name is required when importing a local file")
    folder = import_official(path, fmt, name, Path(args.hub), key, args.overwrite, url)
    print(f"imported {url or path} ({fmt}) as {name}: {folder}")
    return 0


def cmd_hub_official(args: argparse.Namespace) -> int:
    from ssl_zoo.hub import cache_root
    from ssl_zoo.hub.releases import RELEASES, pins_path, read_pins

    cache = cache_root(args.cache_dir)
    pins = read_pins(cache)
    rows = [("name", "format", "sha256 (pinned)", "url")]
    rows += [(name, r.format, pins.get(r.url, "-")[:16], r.url) for name, r in sorted(RELEASES.items())]
    print_table(rows)
    print(f"\npins: {pins_path(cache)} (a release's sha256 is pinned on its first download)")
    return 0


def cmd_eval_linear(args: argparse.Namespace) -> int:
    from ssl_zoo.eval.frozen import evaluate_linear

    result, out = evaluate_linear(args.source, args.overrides, device=args.device, hub=args.hub,
                                  from_scratch=args.from_scratch, train_limit=args.train_limit,
                                  test_limit=args.test_limit, lrs=tuple(args.lr), weight_decays=tuple(args.wd),
                                  epochs=args.epochs, val_fraction=args.val_fraction, seed=args.seed)
    kind = "linear probe of the random-init network" if args.from_scratch else "linear probe"
    print(f"{kind} top-1 on the test set: {result.test_top1:.2f}% (lr {result.lr:g}, weight decay "
          f"{result.weight_decay:g}, chosen on a {args.val_fraction:.0%} validation split: {result.val_top1:.2f}%)")
    print(f"result: {out}")
    return 0


def _recipe(args: argparse.Namespace, recipe):
    """Command-line values replace the recipe's defaults where given."""
    for flag, attr in (("epochs", "epochs"), ("seed", "seed"), ("test_limit", "test_limit")):
        if getattr(args, flag) is not None:
            setattr(recipe, attr, getattr(args, flag))
    if args.lr is not None:
        recipe.optim.base_lr = args.lr
    if args.crop_scale is not None:
        recipe.crop_scale = tuple(args.crop_scale)
    return recipe


def cmd_finetune(args: argparse.Namespace) -> int:
    from ssl_zoo.eval.finetune import default_recipe, finetune, finetune_recipe, parse_label_fraction
    from ssl_zoo.eval.source import load_source

    fraction = parse_label_fraction(args.labels)
    src = load_source(args.source, args.overrides, args.hub, pretrained=not args.from_scratch)
    name = default_recipe(src.backbone) if args.recipe == "auto" else args.recipe
    recipe = _recipe(args, finetune_recipe(fraction, args.batch_size, name, args.epochs))
    result, out = finetune(src, fraction, recipe, device=args.device, from_scratch=args.from_scratch)
    kind = "from random init" if args.from_scratch else "fine-tuned"
    print(f"{kind} on {result.labels} of the labels ({result.labelled_images} images, class-balanced, seed "
          f"{result.seed}), {name} recipe{' (auto)' if args.recipe == 'auto' else ''}: test top-1 "
          f"{result.test_top1:.2f}% on {result.test_images} images")
    print(f"classifier: {result.model}\nresult: {out}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from ssl_zoo.eval.distill import distill, distill_recipe

    recipe = _recipe(args, distill_recipe(args.batch_size))
    result, out = distill(Path(args.teacher), recipe, args.student, args.student_init, args.temperature,
                          args.unlabelled_limit, args.device, args.hub)
    teacher = "" if result.teacher_top1 is None else f" (teacher: {result.teacher_top1:.2f}%)"
    print(f"student {result.student} distilled at tau={result.temperature:g} on {result.unlabelled_images} unlabelled "
          f"images: test top-1 {result.test_top1:.2f}% on {result.test_images} images{teacher}")
    print(f"classifier: {result.model}\nresult: {out}")
    return 0


DEVICE_HELP = "where to run: auto (a GPU when there is one), cpu or cuda"


def _supervised_options(q: argparse.ArgumentParser, batch_size: int, lr_help: str) -> None:
    q.add_argument("--epochs", type=float, help="training epochs over the (labelled or unlabelled) images")
    q.add_argument("--batch-size", type=int, default=batch_size, help=f"images per step (default {batch_size})")
    q.add_argument("--lr", type=float, help=lr_help)
    q.add_argument("--crop-scale", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="RandomResizedCrop area range (default 0.08 1.0)")
    q.add_argument("--seed", type=int, help="seed of the label subset, the views and the order (default 0)")
    q.add_argument("--test-limit", type=int, help="score only N test images, spread over the split (default: all)")
    q.add_argument("--hub", help="hub folder or URL for hub names (default $SSL_ZOO_HUB)")
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)


def cmd_submit(args: argparse.Namespace) -> int:
    from ssl_zoo.launch.profile import load_profile
    from ssl_zoo.launch.submit import plan, queue

    profile = load_profile(args.cluster, {"nodes": args.nodes, "gpus_per_node": args.gpus_per_node,
                                          "tasks_per_node": args.tasks_per_node, "partition": args.partition,
                                          "time_min": args.time})
    planned = plan(args.config, profile, args.overrides, args.sweep)
    print("\n".join(planned.summary()), flush=True)  # before anything is queued
    submitted = queue(planned)
    for s in submitted:
        print(f"job {s.job_id} ({profile.executor}, profile {profile.name})\n  run dir: {s.run_dir}\n"
              f"  stdout: {s.stdout}\n  stderr: {s.stderr}")
    if args.wait or profile.executor == "debug":  # the debug executor runs in this process, now
        for s in submitted:
            print(f"job {s.job_id}: {s.job.results()[0]}")  # rank 0's summary
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from ssl_zoo.launch.status import find_run_dirs, job_views, log_tail

    views = [v for run_dir in find_run_dirs(Path(args.run_dir)) for v in job_views(run_dir)]
    if not views:
        print(f"no submitted runs under {args.run_dir}")
        return 0
    rows = [("job", "executor", "state", "exit", "submitted", "step", "loss", "run dir", "log")]
    for v in views:
        rows.append((v.job_id, v.executor, v.state, v.exit_code or "-", v.submitted,
                     "-" if v.step is None else str(v.step), "-" if v.loss is None else f"{v.loss:.4f}",
                     str(v.run_dir), str(v.stdout)))
    print_table(rows)
    for v in views:
        if v.failed:
            print(f"\n--- job {v.job_id} {v.state} (exit {v.exit_code}); last lines of {v.stderr}:\n{log_tail(v.stderr)}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from ssl_zoo.launch.status import cancel

    print(cancel(args.job, Path(args.runs)))
    return 0


EXPORT_HELP = "export a run's backbone into a hub folder (safetensors + timm config + card)"


def _export_parser(sub, name: str, help_text: str) -> None:
    """`hub export`, and the top-level `export` kept as its alias."""
    p = sub.add_parser(name, help=help_text, description=EXPORT_HELP,
                       epilog="A hub folder is served as is: copy it to any static file server, or upload a model "
                       "folder to the Hugging Face Hub with its CLI (`hf auth login`, then `hf upload ORG/NAME HUB/NAME .`) and "
                       "load it as hf-hub:ORG/NAME.")
    p.add_argument("source", help="run directory or checkpoint file (.pt)")
    p.add_argument("--name", required=True, help="model name in the hub (letters, digits, . _ -)")
    p.add_argument("--hub", required=True, help="hub folder; created if missing, index.json updated")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model of that name")
    p.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-zoo", description="Self-supervised vision pretraining zoo.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("methods", help="list the registered methods")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("train", help="train a config on this machine (CPU, one GPU, or under torchrun)",
                       epilog=EPILOG)
    p.add_argument("config", help="YAML experiment, e.g. configs/simclrv2/resnet18_fashion_mnist.yaml")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("config", help="inspect configs")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    q = csub.add_parser("show", help="print the resolved config (paper defaults + file + overrides)", epilog=EPILOG)
    q.add_argument("config", help="YAML experiment, e.g. configs/dino/vit_small_imagenet.yaml")
    q.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    q.set_defaults(func=cmd_config_show)

    p = sub.add_parser("eval", help="evaluate a trained backbone")
    esub = p.add_subparsers(dest="eval_command", required=True, metavar="SUBCOMMAND")
    q = esub.add_parser("knn", help="weighted cosine k-NN top-1 on the run's labelled test split", epilog=EVAL_EPILOG)
    q.add_argument("source", help="run directory, checkpoint file (.pt), or hub model (name, folder, URL, hf-hub:)")
    q.add_argument("overrides", nargs="*", help="config overrides, e.g. data.path=...")
    q.add_argument("--hub", help="hub folder or URL for hub names (default $SSL_ZOO_HUB)")
    q.add_argument("--k", type=int, default=20, help="neighbours that vote (default 20)")
    q.add_argument("--temperature", type=float, default=0.07,
                   help="T of the exp(cosine / T) vote weights (default 0.07)")
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    q.set_defaults(func=cmd_eval_knn)
    q = esub.add_parser("linear", help="linear probe on frozen features (lr x wd sweep on a validation split)",
                        epilog=EVAL_EPILOG)
    q.add_argument("source", help="run directory, checkpoint file (.pt), or hub model (name, folder, URL, hf-hub:)")
    q.add_argument("overrides", nargs="*", help="config overrides, e.g. data.path=...")
    q.add_argument("--hub", help="hub folder or URL for hub names (default $SSL_ZOO_HUB)")
    q.add_argument("--epochs", type=int, default=30, help="epochs of each logistic-regression fit (default 30)")
    q.add_argument("--lr", type=float, nargs="+", default=[1e-3, 1e-2], help="AdamW learning rates to try")
    q.add_argument("--wd", type=float, nargs="+", default=[0.0, 1e-4, 1e-2], help="weight decays to try")
    q.add_argument("--val-fraction", type=float, default=0.1, help="share of train held out to pick lr/wd")
    q.add_argument("--seed", type=int, default=0, help="seed of the validation split and the fits (default 0)")
    q.add_argument("--train-limit", type=int, default=0,
                   help="probe on N train images, spread over the split (default: all)")
    q.add_argument("--test-limit", type=int, default=0,
                   help="score N test images, spread over the split (default: all)")
    q.add_argument("--from-scratch", action="store_true", help="probe the same network with random weights")
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    q.set_defaults(func=cmd_eval_linear)

    p = sub.add_parser("finetune", help="SimCLRv2 step 2: fine-tune on a class-balanced fraction of the labels",
                       epilog=EVAL_EPILOG + ". SimCLRv2 runs fine-tune from the first projection-head layer; other "
                       "methods and hub models from the backbone. Defaults: momentum SGD at lr 0.005 x sqrt(batch), "
                       "no weight decay, 60 epochs for <= 1% of the labels, 30 otherwise.")
    p.add_argument("source", help="run directory, checkpoint file (.pt), or hub model (name, folder, URL, hf-hub:)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. data.path=...")
    p.add_argument("--labels", required=True, metavar="PCT", help="share of the labelled train split: 1%%, 10%%, 100%%")
    p.add_argument("--from-scratch", action="store_true",
                   help="same network and procedure from random weights (the baseline to beat)")
    p.add_argument("--recipe", default="auto", choices=["auto", "simclr", "mae"],
                   help="simclr: momentum SGD, lr 0.005 x sqrt(batch), no warm-up; mae: MAE's ViT fine-tuning "
                        "optimiser, AdamW 5e-4 x batch/256, weight decay 0.05, 5 warm-up epochs (at most 10%% "
                        "of the run); auto (default): mae for ViTs, simclr otherwise")
    _supervised_options(p, 1024, "base lr; the peak lr is base x sqrt(batch) (simclr, default 0.005) or "
                                 "base x batch/256 (mae, default 5e-4)")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("distill", help="SimCLRv2 step 3: distil a fine-tuned classifier into a student, no labels",
                       epilog="Loss -sum P_T log P_S at temperature tau (default 0.1 for the same architecture, "
                       "1.0 otherwise); crop + flip only; momentum SGD at peak lr 0.1 x batch/256 x tau, weight "
                       "decay 1e-4, 10 epochs.")
    p.add_argument("teacher", help="classifier folder written by `ssl-zoo finetune` (or `ssl-zoo distill`)")
    p.add_argument("--student", metavar="ARCH", help="timm architecture of a fresh student (default: the teacher's)")
    p.add_argument("--student-init", metavar="SOURCE", help="start the student from this run's or hub model's backbone")
    p.add_argument("--temperature", type=float, help="tau (default 0.1 self-distillation, 1.0 big -> small)")
    p.add_argument("--unlabelled-limit", type=int, default=0, help="use only N unlabelled images, spread over the split")
    _supervised_options(p, 256, "base lr; the peak lr is base x batch/256 x tau (default 0.1)")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("submit", help="submit training through submitit (SLURM, or local/debug on this machine)",
                       epilog=EPILOG + ". Before queueing it prints world size, global batch, peak lr and data "
                       "paths; train.global_batch keeps the global batch fixed as --nodes changes. Profiles: "
                       "slurm/<name>.yaml (copy slurm/example.yaml) or a path; built in: local, debug.")
    p.add_argument("config", help="YAML experiment, e.g. configs/dino/vit_small_imagenet.yaml")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides for every job")
    p.add_argument("--cluster", required=True, metavar="PROFILE",
                   help="slurm/<PROFILE>.yaml, a profile path, 'local' (subprocesses) or 'debug' (in-process)")
    p.add_argument("--nodes", type=int, help="override the profile's nodes")
    p.add_argument("--gpus-per-node", type=int, help="override the profile's GPUs per node (one rank per GPU)")
    p.add_argument("--tasks-per-node", type=int, help="ranks per node (default: GPUs per node, or 1)")
    p.add_argument("--partition", help="override the profile's partition")
    p.add_argument("--time", type=int, help="time limit in minutes")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="one job array over the product of all --sweep axes (repeatable)")
    p.add_argument("--wait", action="store_true", help="wait for the jobs and print their results")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="every job of submitted runs (resubmissions included): state, submit time, "
                       "step, last loss and logs")
    p.add_argument("run_dir", nargs="?", default="runs", help="a run directory or a folder of runs (default runs/)")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("cancel", help="cancel a submitted job (SLURM: scancel; local: SIGTERM, which checkpoints)")
    p.add_argument("job", help="job id or run directory")
    p.add_argument("--runs", default="runs", help="where to look up job ids (default runs/)")
    p.set_defaults(func=cmd_cancel)

    _export_parser(sub, "export", "the same as `ssl-zoo hub export`")

    p = sub.add_parser("hub", help="export, list, inspect, download and import hub models")
    hsub = p.add_subparsers(dest="hub_command", required=True, metavar="SUBCOMMAND")
    _export_parser(hsub, "export", EXPORT_HELP)
    hub_help = "hub folder or URL (file://, http(s)://); default $SSL_ZOO_HUB"
    cache_help = "download cache; default $SSL_ZOO_CACHE or ~/.cache/ssl_zoo"
    q = hsub.add_parser("list", help="table of the hub's models")
    q.add_argument("--hub", help=hub_help)
    q.set_defaults(func=cmd_hub_list)
    q = hsub.add_parser("info", help="architecture, input, provenance and metrics of one model (JSON)")
    q.add_argument("name", help="hub name, model folder, URL or hf-hub:org/name")
    q.add_argument("--hub", help=hub_help)
    q.add_argument("--cache-dir", help=cache_help)
    q.set_defaults(func=cmd_hub_info)
    q = hsub.add_parser("download", help="download and verify (sha256) a model into the cache; prints its folder",
                        epilog="The weights are installed only after their sha256 matches the hub index's, else "
                        "the one in the model's config.json; a model with neither is refused (there is no "
                        "option to skip verification). An interrupted download keeps its .part file: rerun the "
                        "same command to resume it.")
    q.add_argument("name", help="hub name, URL or hf-hub:org/name")
    q.add_argument("--hub", help=hub_help)
    q.add_argument("--cache-dir", help=cache_help)
    q.set_defaults(func=cmd_hub_download)
    q = hsub.add_parser("official", help="the index of official release downloads and their pinned sha256")
    q.add_argument("--cache-dir", help=cache_help)
    q.set_defaults(func=cmd_hub_official)
    q = hsub.add_parser("import-official", help="convert an official released checkpoint into a hub model")
    q.add_argument("source", help="a release name from `ssl-zoo hub official` (downloaded, sha256 pinned on first "
                   "download and checked after) or a released .pth/.pt/.safetensors file (read with weights_only=True)")
    q.add_argument("--format", help="which release a file is: dino, mae, dinov2, sit, gmml, pixpro, croco, satmae_pp "
                   "(required for files; a release name knows its own)")
    q.add_argument("--name", help="model name in the hub (letters, digits, . _ -); default: the release name")
    q.add_argument("--hub", required=True, help="hub folder; created if missing, index.json updated")
    q.add_argument("--key", help="network of multi-network checkpoints (DINO, SiT): teacher (default) or student")
    q.add_argument("--overwrite", action="store_true", help="replace an existing model of that name")
    q.add_argument("--cache-dir", help=cache_help)
    q.add_argument("--mirror", help="base URL serving the releases as <mirror>/<host>/<path> (offline clusters); "
                   "default $SSL_ZOO_OFFICIAL_MIRROR")
    q.add_argument("--sha256", help="expected sha256 of a release download (pinned if none is yet)")
    q.set_defaults(func=cmd_hub_import_official)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides may come before or after options: collect leftover key=value words into them
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(word.startswith("-") for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides.extend(extra)
    try:
        return args.func(args)
    except SslZooError as e:  # every error the zoo raises on purpose: one line, no traceback
        print(f"ssl-zoo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssl-zoo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
