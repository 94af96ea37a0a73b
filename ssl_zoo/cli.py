"""`ssl-zoo` command line: methods, train, config show, eval knn."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssl_zoo.checkpoint import CheckpointError
from ssl_zoo.config import ConfigError

EPILOG = "Overrides are dotted keys with YAML values, e.g. optim.base_lr=0.1 train.max_steps=200 data.path=/data"


def cmd_methods(args: argparse.Namespace) -> int:
    from ssl_zoo.registry import available_methods

    methods = available_methods()
    width = max(map(len, methods))
    for name, cls in methods.items():
        print(f"{name:<{width}}  {cls.description}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from ssl_zoo.config import dump_yaml, load_config

    print(dump_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ssl_zoo.config import load_config
    from ssl_zoo.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg, progress_bar=not args.no_progress)
    result = trainer.fit()
    if trainer.dist.is_main:
        print(f"run: {result.run_dir}  status: {result.status}  steps: {result.step}")
        if result.knn_top1 is not None:
            print(f"k-NN top-1 (k={cfg.eval.knn_k}, T={cfg.eval.knn_temperature}) on the test set: {result.knn_top1:.2f}%")
        print(f"checkpoint: {result.checkpoint}")
        print(f"tensorboard logs: {result.tb_dir}  (tensorboard --logdir {result.tb_dir})")
    return 0


def cmd_eval_knn(args: argparse.Namespace) -> int:
    from ssl_zoo.evaluate import evaluate_knn

    top1 = evaluate_knn(Path(args.source), args.overrides, k=args.k, temperature=args.temperature,
                        device=args.device)
    print(f"k-NN top-1 (k={args.k}, T={args.temperature}): {top1:.2f}%")
    return 0


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
    q.add_argument("config")
    q.add_argument("overrides", nargs="*")
    q.set_defaults(func=cmd_config_show)

    p = sub.add_parser("eval", help="evaluate a trained backbone")
    esub = p.add_subparsers(dest="eval_command", required=True, metavar="SUBCOMMAND")
    q = esub.add_parser("knn", help="weighted cosine k-NN top-1 on the run's labelled test split", epilog=EPILOG)
    q.add_argument("source", help="run directory or checkpoint file (.pt)")
    q.add_argument("overrides", nargs="*", help="config overrides, e.g. data.path=...")
    q.add_argument("--k", type=int, default=20)
    q.add_argument("--temperature", type=float, default=0.07)
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    q.set_defaults(func=cmd_eval_knn)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ssl_zoo.data import DataError
    from ssl_zoo.trainer import NonFiniteLossError

    parser = build_parser()
    # overrides may come before or after options: collect leftover key=value words into them
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(word.startswith("-") for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides.extend(extra)
    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError, NonFiniteLossError) as e:
        print(f"ssl-zoo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssl-zoo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
