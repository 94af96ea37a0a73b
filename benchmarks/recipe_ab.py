"""Short A/B runs of the default recipe: train on a fixed number of images, then k-NN on subsets.

Used to tune configs/simclrv2/resnet18_fashion_mnist.yaml (README, "The default job"). Each variant
is a list of overrides; the lr schedule completes within the short run.

    .venv/bin/python benchmarks/recipe_ab.py --images 40960 --variant base --variant "method.temperature=0.1"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, markdown_table, provenance, write_json  # noqa: E402
from ssl_zoo.experiment import load_config  # noqa: E402
from ssl_zoo.trainer import Trainer  # noqa: E402

CONFIG = "configs/simclrv2/resnet18_fashion_mnist.yaml"


def run_variant(config: str, overrides: list[str], images: int, out: str, name: str) -> dict:
    common = [f"train.output_dir={out}", f"train.name={name}", "train.resume=false", "eval.final_knn=false",
              "eval.knn_train_limit=20000", "eval.knn_test_limit=5000", "train.ckpt_every=100000"]
    batch = load_config(config, overrides + common).train.batch_size  # the step count follows from it
    cfg = load_config(config, overrides + common + [f"train.max_steps={max(1, images // batch)}"])
    trainer = Trainer(cfg, progress_bar=False)
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    return {"variant": overrides, "steps": cfg.train.max_steps, "train_s": round(seconds, 1),
            "knn_top1_subset": round(trainer._eval_knn(full=False), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--images", type=int, default=40960, help="training images per variant")
    parser.add_argument("--variant", action="append", default=[],
                        help="space-separated overrides; 'base' for none (repeatable)")
    parser.add_argument("--output", type=Path, default=RESULTS / "recipe_ab.json")
    args = parser.parse_args()
    variants = args.variant or ["base"]
    rows = []
    for i, v in enumerate(variants):
        overrides = [] if v == "base" else v.split()
        rows.append(run_variant(args.config, overrides, args.images, "/tmp/ssl_zoo_ab", f"ab{i}"))
    write_json(args.output, {**provenance(), "config": args.config, "results": rows})
    print(markdown_table(["overrides", "steps", "train s", "k-NN top-1 (20k/5k subsets)"],
                         [[" ".join(r["variant"]) or "(config as is)", r["steps"], r["train_s"], r["knn_top1_subset"]]
                          for r in rows], right=(1, 2, 3)))


if __name__ == "__main__":
    main()
