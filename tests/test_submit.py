"""`ssl-zoo submit` checks and shows the recipe before queueing: empty data paths fail naming the key, and
world size, global batch, peak lr and data paths are printed first; train.global_batch keeps the global
batch as the node count changes. No scheduler is needed: SLURM profiles are only planned, never queued."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ssl_zoo.cli import main as cli_main
from ssl_zoo.config import ConfigError, dump_yaml
from ssl_zoo.experiment import load_config
from ssl_zoo.launch.profile import load_profile
from ssl_zoo.launch.submit import plan
from tests.conftest import ROOT, tiny_config

CLUSTER_CONFIGS = sorted((ROOT / "configs").glob("*/*imagenet*.yaml"))


def imagenet(tmp_path: Path) -> list[str]:
    train, val = tmp_path / "train", tmp_path / "val"
    train.mkdir(exist_ok=True)
    val.mkdir(exist_ok=True)
    return [f"data.path={train}", f"data.eval_path={val}", f"train.output_dir={tmp_path / 'runs'}"]


@pytest.mark.parametrize("config", CLUSTER_CONFIGS, ids=lambda p: p.stem)
def test_cluster_configs_ship_no_data_path_and_submit_names_the_missing_key(config, tmp_path, capsys):
    key = "data.pairs_file" if load_config(config).data.kind == "pairs" else "data.path"
    assert cli_main(["submit", str(config), "--cluster", "debug", f"train.output_dir={tmp_path}"]) == 2
    out = capsys.readouterr()
    assert out.out == ""  # no summary, nothing queued
    assert out.err.startswith(f"ssl-zoo: error: {key} is empty: ") and out.err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_eval_path_is_required_while_knn_is_on(tmp_path):
    profile = load_profile("debug")
    config = str(ROOT / "configs/dino/vit_small_imagenet.yaml")
    with pytest.raises(ConfigError, match=r"^data.eval_path is empty: .*eval.final_knn=false eval.knn_every=0\)$"):
        plan(config, profile, [f"data.path={tmp_path}"])
    plan(config, profile, [f"data.path={tmp_path}", "eval.final_knn=false", "eval.knn_every=0"])  # no k-NN: fine


@pytest.mark.parametrize("nodes, per_rank", [(1, 128), (2, 64), (4, 32)])
def test_global_batch_stays_the_papers_as_nodes_change(nodes, per_rank, tmp_path):
    """DINO on 8-GPU nodes: 1024 images per step and lr 2e-3 on any node count; only the per-rank share moves."""
    planned = plan(str(ROOT / "configs/dino/vit_small_imagenet.yaml"), load_profile("example", {"nodes": nodes}),
                   imagenet(tmp_path))
    (cfg, overrides), = planned.jobs
    assert (cfg.train.batch_size, cfg.train.global_batch, cfg.train.device) == (per_rank, 1024, "cuda")
    assert overrides == imagenet(tmp_path)  # what jobs.jsonl records: the user's overrides, not the derived ones
    # built once from the file and overrides, never edited afterwards (issue 18)
    derived = ["train.device=cuda", f"train.batch_size={per_rank}"]
    assert dump_yaml(cfg) == dump_yaml(load_config(ROOT / "configs/dino/vit_small_imagenet.yaml", overrides + derived))
    head, ranks, data, train, val = planned.summary()
    assert head == "run dino_vit_small_imagenet"
    assert ranks == (f"  world size {8 * nodes}, global batch 1024 ({per_rank} per rank; train.global_batch), "
                     "peak lr 0.002 (base 0.0005, linear scaling on 1024/256)")
    assert (data, train, val) == ("  data: image_folder", f"    data.path: {tmp_path / 'train'}",
                                  f"    data.eval_path: {tmp_path / 'val'}")


def test_a_global_batch_that_does_not_divide_into_the_ranks_fails_at_submit(tmp_path):
    with pytest.raises(ConfigError, match=r"^train.global_batch=1024 does not divide into 24 ranks; "):
        plan(str(ROOT / "configs/dino/vit_small_imagenet.yaml"), load_profile("example", {"nodes": 3}),
             imagenet(tmp_path))


def test_without_global_batch_the_lr_follows_the_ranks_and_the_summary_says_so(tmp_path):
    planned = plan(str(ROOT / "configs/dino/vit_small_imagenet.yaml"), load_profile("example", {"nodes": 2}),
                   [*imagenet(tmp_path), "train.global_batch=0", "train.batch_size=64", "data.eval_path=/nowhere/val"])
    lines = planned.summary()
    assert lines[1] == ("  world size 16, global batch 1024 (64 per rank; train.batch_size x ranks), peak lr 0.002 "
                        "(base 0.0005, linear scaling on 1024/256)")
    assert lines[-1] == "    data.eval_path: /nowhere/val  (not found on this machine)"


def test_submit_prints_the_plan_before_the_job_and_the_job_runs_the_per_rank_batch(tmp_path, capsys):
    raw = tiny_config("simclrv2", tmp_path, train={"name": "planned", "threads": 1, "max_steps": 2,
                                                   "global_batch": 16})
    path = tmp_path / "planned.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli_main(["submit", str(path), "--cluster", "debug"]) == 0
    out = capsys.readouterr().out
    summary = ("run planned\n  world size 1, global batch 16 (16 per rank; train.global_batch), peak lr 0.01875 "
               "(base 0.3, linear scaling on 16/256)\n  data: synthetic\njob ")
    assert summary in out and out.index(summary) < out.index("status")
    ran = yaml.safe_load((tmp_path / "runs/planned/config.yaml").read_text())["train"]
    assert (ran["batch_size"], ran["global_batch"]) == (16, 16)


def test_train_takes_the_per_rank_batch_from_the_launch_and_refuses_one_that_does_not_divide(tmp_path):
    raw = tiny_config("simclrv2", tmp_path, train={"name": "torchrun", "threads": 1, "max_steps": 1})
    path = tmp_path / "torchrun.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}  # as torchrun --nproc_per_node 3 sets
    out = subprocess.run([sys.executable, "-m", "ssl_zoo", "train", str(path), "train.global_batch=64"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr == ("ssl-zoo: error: train.global_batch=64 does not divide into 3 "
                                                  "ranks; use a rank count that divides it, or train.global_batch=0 "
                                                  "to set train.batch_size per rank\n")
    assert not (tmp_path / "runs").exists()
    assert cli_main(["train", str(path), "train.global_batch=16", "--no-progress"]) == 0  # one rank: all 16
    assert yaml.safe_load((tmp_path / "runs/torchrun/config.yaml").read_text())["train"]["batch_size"] == 16
