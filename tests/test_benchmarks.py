"""Smoke runs of the benchmark scripts in a tiny mode: they run end to end, write JSON of the stated
shape and print a table whose derived numbers (ratios, efficiencies) come from the row's own
numbers. No timing assertions: the numbers themselves are for an idle machine."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def table_of(out: str) -> list[list[str]]:
    """The markdown table printed last: header + rows, cells stripped (the alignment line dropped)."""
    lines = out.strip().splitlines()
    start = max(i for i, line in enumerate(lines) if not line.startswith("|")) + 1
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start:]]
    return [rows[0]] + rows[2:]


@pytest.mark.slow
def test_lightly_baselines_mirror_the_zoo_configs_and_train(one_thread):
    """Each lightly-side recipe makes the config's views and a finite loss that reaches the backbone."""
    from PIL import Image

    from ssl_zoo.experiment import load_config

    vs = script("vs_lightly")
    configs = vs.discover()
    image = Image.fromarray((torch.rand(40, 40, 3) * 255).to(torch.uint8).numpy())
    expected = {"simclrv2": [40, 40], "dino": [28, 28] + [14] * 8, "mae": [28]}
    for name, sizes in expected.items():
        cfg = load_config(configs[name])
        base = vs.BASELINES[name](cfg)
        views = [torch.stack(v) for v in zip(*[base.transform(image) for _ in range(4)])]
        assert [v.shape[-1] for v in views] == sizes, name
        loss = base.loss(views)
        loss.backward()
        base.after_backward()
        assert torch.isfinite(loss), name
        grads = [p.grad for n, p in base.model.named_parameters() if "backbone" in n or n.startswith("0.")]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


@pytest.mark.slow
def test_vs_lightly_smoke(tmp_path, capsys, one_thread):
    out = tmp_path / "vs.json"
    vs = script("vs_lightly")
    code = vs.main(["--methods", "mae", "--steps", "1", "--warmup", "1", "--repeats", "2", "--batch-size", "8",
                    "--workers", "0", "--aug-batch", "4", "--aug-load-size", "32", "--aug-size", "24",
                    "--output", str(out), "--set", "data.kind=synthetic", "data.synthetic_size=32"])
    assert code == 0
    result = json.loads(out.read_text())
    assert {"date", "commit", "machine", "steps", "repeats", "workers"} <= set(result)
    rows = result["results"]
    assert [r["what"] for r in rows] == ["mae", "augmentation only"]
    for r in rows:
        assert len(r["zoo_img_s_runs"]) == len(r["lightly_img_s_runs"]) == 2
        assert r["zoo_img_s"] == statistics.median(r["zoo_img_s_runs"])
        assert r["lightly_img_s"] == statistics.median(r["lightly_img_s_runs"])
        assert math.isclose(r["ratio"], r["zoo_img_s"] / r["lightly_img_s"])
    assert rows[0]["batch_size"] == 8 and rows[0]["backbone"] == "vit_tiny_patch16_224"
    table = table_of(capsys.readouterr().out)
    assert table[0] == ["what", "backbone", "image size", "batch", "device", "optimiser", "zoo img/s",
                        "lightly / torchvision img/s", "zoo / lightly"]
    assert [row[0] for row in table[1:]] == ["mae", "augmentation only"]
    assert [row[-1] for row in table[1:]] == [f"{r['ratio']:.2f}" for r in rows]


@pytest.mark.slow
def test_quality_smoke(tmp_path, capsys, one_thread):
    out = tmp_path / "quality.json"
    quality = script("quality")
    code = quality.main(["--methods", "simclrv2", "--minutes", "0.05", "--steps", "2", "--train-limit", "64", "--test-limit", "40",
                         "--linear-epochs", "2", "--output", str(out), "--runs-dir", str(tmp_path / "runs"),
                         "--set", "data.kind=synthetic", "data.synthetic_size=160", "train.batch_size=16",
                         "train.log_every=1", "--finetune", "simclrv2", "--labels", "50%", "--finetune-epochs", "1"])
    assert code == 0
    metrics = [json.loads(line) for line in (tmp_path / "runs/quality_simclrv2/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "collapse/embedding_std" in m] == [1, 2]  # the run kept, diagnostics in it
    result = json.loads(out.read_text())
    assert result["minutes"] == 0.05 and result["steps"] == 2 and result["train_limit"] == 64 and result["test_limit"] == 40
    rows = result["results"]
    assert [r["method"] for r in rows] == ["simclrv2", "raw pixels"]
    sim, raw = rows
    assert sim["steps"] == 2 and sim["pretrain_s"] > 0
    for scores in (sim["pretrained"], sim["random_init"], raw["pretrained"]):
        assert 0.0 <= scores["knn_top1"] <= 100.0 and 0.0 <= scores["linear_top1"] <= 100.0
        assert scores["test_images"] == 40
    assert sim["pretrained"]["feature_dim"] == 512 and raw["pretrained"]["feature_dim"] == 784
    assert sim["pretrained"]["train_images"] == 64  # the synthetic train split, limited
    printed = capsys.readouterr().out
    table = table_of(printed)
    assert table[0] == ["method", "backbone", "eval data", "steps", "pretrain s", "k-NN top-1", "linear top-1",
                        "random-init k-NN", "random-init linear", "Δ k-NN", "Δ linear"]
    assert [row[0] for row in table[1:]] == ["simclrv2", "raw pixels"]
    assert float(table[1][9]) == pytest.approx(sim["pretrained"]["knn_top1"] - sim["random_init"]["knn_top1"], abs=0.01)
    assert table[1][2] == "synthetic" and table[2][2] == "fashion_mnist"
    assert float(table[1][5]) == pytest.approx(sim["pretrained"]["knn_top1"], abs=0.01)
    # fine-tuned from the run and from scratch, as `ssl-zoo finetune --labels 50% [--from-scratch]` writes them
    tuned = sim["finetune"]
    assert tuned["pretrained"]["labelled_images"] == tuned["scratch"]["labelled_images"] == 80
    assert tuned["pretrained"]["test_images"] == 40 and tuned["pretrained"]["epochs"] == 1
    evaluated = tmp_path / "runs/quality_simclrv2/eval"
    assert json.loads((evaluated / "finetune_50pct_scratch.json").read_text())["test_top1"] == tuned["scratch"]["test_top1"]
    assert json.loads((evaluated / "finetune_50pct.json").read_text())["test_top1"] == tuned["pretrained"]["test_top1"]
    assert result["finetune"] == ["simclrv2"] and "| simclrv2 | 50% (80 images) | 1 |" in printed


def test_quality_rejects_unknown_method(capsys):
    with pytest.raises(SystemExit):
        script("quality").main(["--methods", "simclr_v9"])
    assert "registered" in capsys.readouterr().err


@pytest.mark.slow
def test_scaling_smoke(tmp_path, capsys, one_thread):
    out = tmp_path / "scaling.json"
    scaling = script("scaling")
    code = scaling.main(["--steps", "1", "--warmup", "1", "--repeats", "1", "--sizes", "24", "32",
                         "--batch-sizes", "4", "8", "--output", str(out),
                         "--set", "data.kind=synthetic", "data.synthetic_size=32", "train.batch_size=4",
                         "train.threads=1"])
    assert code == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["measure"], r["ranks"]) for r in rows] == [("ranks", 1), ("ranks", 2)] + [("image size", 1)] * 2 \
        + [("batch size", 1)] * 2
    one, two = rows[:2]
    assert one["batch_per_rank"] == two["batch_per_rank"] == 4
    assert math.isclose(two["scaling"], two["img_s"] / (2 * one["img_s"]))
    sizes, batches = rows[2:4], rows[4:]
    assert [r["image_size"] for r in sizes] == [24, 32] and [r["batch_per_rank"] for r in batches] == [4, 8]
    assert math.isclose(sizes[1]["scaling"], (sizes[1]["step_s"] / sizes[0]["step_s"]) / (32**2 / 24**2))
    assert math.isclose(batches[1]["scaling"], (batches[1]["step_s"] / batches[0]["step_s"]) / 2)
    for r in rows:
        assert math.isclose(r["img_s"] * r["step_s"], r["batch_per_rank"] * r["ranks"], rel_tol=1e-9)
    table = table_of(capsys.readouterr().out)
    assert table[0] == ["measure", "ranks", "image size", "batch / rank", "step s", "img/s", "scaling"]
    assert len(table) == 1 + len(rows)


@pytest.mark.slow
def test_gpu_check_dry_runs_the_same_path_on_the_cpu(tmp_path, capsys, one_thread):
    out = tmp_path / "gpu.json"
    gpu = script("gpu_check")
    assert gpu.main(["--dry", "--methods", "mae", "simclrv2", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dry"] is True and (result["steps"], result["warmup"]) == (2, 1)
    assert result["peak_flop_s"] == gpu.H200_BF16_DENSE_PEAK
    mae, sim = result["results"]
    assert (mae["method"], sim["method"]) == ("mae", "simclrv2")
    for r in (mae, sim):
        assert r["device"] == "cpu" and r["batch_size"] == 8 and len(r["step_s"]) == 2
        assert r["img_s"] == pytest.approx(8 / statistics.median(r["step_s"]))
        assert 0 < r["views_share"] < 1
        assert r["peak_memory_gib"] is None and r["syncs_per_step"] is None  # CUDA counters
    # MFU: the counted FLOPs of one step at the measured speed, against the named H200 peak. The tiny MAE
    # (ViT-Tiny, 28 px, 4 px patches: 49 patches, 12 visible + CLS) does at least its encoder's linear layers:
    # 13 tokens x 12 blocks x 12 d^2 (qkv, proj, 2 MLP) x 2 (multiply-add) x 3 (fwd + 2 x bwd) per image
    assert mae["step_flops"] > 8 * 13 * 12 * 12 * 192**2 * 2 * 3
    assert mae["mfu"] == pytest.approx(mae["step_flops"] / statistics.median(mae["step_s"]) / gpu.H200_BF16_DENSE_PEAK)
    assert "mfu" not in sim
    table = table_of(capsys.readouterr().out)
    assert table[0] == ["method", "backbone", "load size", "batch", "device", "img/s", "peak memory GiB",
                        "syncs / step", "views share", "MFU"]
    assert table[1][:5] == ["mae", "vit_tiny_patch16_224", "28", "8", "cpu"] and table[1][6:8] == ["-", "-"]
    assert table[1][9].startswith(f"{100 * mae['mfu']:.1f}%") and table[2][9] == ""


@pytest.mark.parametrize("name", sorted(script("gpu_check").GPU_CONFIGS))
def test_gpu_check_configs_pass_the_one_rank_batch_check(name, tmp_path):
    """The paper configs fix a global batch for many GPUs; the check trains their per-rank batch on one GPU,
    which the trainer refuses unless the check lifts the global batch (it did not, the first time a GPU came)."""
    from ssl_zoo.experiment import load_config
    from ssl_zoo.trainer import _check_global_batch

    gpu = script("gpu_check")
    config = gpu.ROOT / gpu.GPU_CONFIGS[name]
    args = gpu.argparse.Namespace(dry=False, set=[], batch_size=0, warmup=1, steps=1)
    cfg = load_config(config, gpu.run_overrides(name, config, args, str(tmp_path)))
    assert cfg.train.batch_size == load_config(config).train.batch_size
    _check_global_batch(cfg.train, 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_without_cuda_asks_for_dry(capsys):
    with pytest.raises(SystemExit):
        script("gpu_check").main([])
    assert "no CUDA device here: run with --dry" in capsys.readouterr().err
