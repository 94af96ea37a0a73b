"""Linear probe: logistic regression, the validation split, the sweep, caching, CLI and hub metrics."""

import json

import pytest
import torch

from ssl_zoo.cli import main as cli_main
from ssl_zoo.config import ConfigError
from ssl_zoo.experiment import load_config
from ssl_zoo.eval.linear import linear_probe, validation_split
from ssl_zoo.trainer import Trainer
from tests.conftest import tiny_config


def separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 classes around far-apart centres in 16-d: linearly separable by construction."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.eye(16)[:3] * 10.0
    return centres[labels] + 0.5 * torch.randn(n, 16, generator=g), labels


def test_separable_features_reach_100_percent():
    (tr_f, tr_l), (te_f, te_l) = separable(600, 0), separable(300, 1)
    result = linear_probe(tr_f, tr_l, te_f, te_l, lrs=(1e-2,), weight_decays=(0.0, 1e-4), epochs=60)
    assert result.test_top1 == 100.0 and result.val_top1 == 100.0


def test_random_labels_stay_near_chance():
    (tr_f, _), (te_f, _) = separable(600, 0), separable(300, 1)
    g = torch.Generator().manual_seed(3)
    result = linear_probe(tr_f, torch.randint(0, 3, (600,), generator=g), te_f,
                          torch.randint(0, 3, (300,), generator=g), lrs=(1e-2,), weight_decays=(0.0,), epochs=5)
    assert result.test_top1 < 50.0


def test_validation_split_is_seeded_disjoint_and_complete():
    a_tr, a_val = validation_split(1000, 0.1, seed=5)
    b_tr, b_val = validation_split(1000, 0.1, seed=5)
    assert torch.equal(a_tr, b_tr) and torch.equal(a_val, b_val) and len(a_val) == 100
    assert sorted(torch.cat([a_tr, a_val]).tolist()) == list(range(1000))
    assert not torch.equal(validation_split(1000, 0.1, seed=6)[1], a_val)


def test_sweep_covers_the_grid_and_keeps_the_best_validation_score():
    (tr_f, tr_l), (te_f, te_l) = separable(300, 0), separable(90, 1)
    result = linear_probe(tr_f, tr_l, te_f, te_l, lrs=(1e-4, 1e-2), weight_decays=(0.0, 1e-3), epochs=2)
    assert [(lr, wd) for lr, wd, _ in result.sweep] == [(1e-4, 0.0), (1e-4, 1e-3), (1e-2, 0.0), (1e-2, 1e-3)]
    assert result.val_top1 == max(score for _, _, score in result.sweep)
    with pytest.raises(ConfigError, match="validation fraction"):
        linear_probe(tr_f, tr_l, te_f, te_l, val_fraction=1.5)


def test_eval_linear_cli_caches_features_and_feeds_the_hub(tmp_path, capsys, monkeypatch):
    cfg = load_config(tiny_config("simclrv2", tmp_path, train={"max_steps": 2}))
    run_dir = Trainer(cfg, progress_bar=False).fit().run_dir
    args = ["eval", "linear", str(run_dir), "--epochs", "3", "--lr", "1e-2", "--wd", "0"]
    assert cli_main(args) == 0
    assert "linear probe top-1 on the test set" in capsys.readouterr().out
    result = json.loads((run_dir / "eval/linear_probe.json").read_text())
    assert result["step"] == 2 and 0.0 <= result["test_top1"] <= 100.0
    assert len(list((run_dir / "eval").glob("features_*.pt"))) == 2

    import ssl_zoo.eval.frozen as frozen

    def no_extraction(*args, **kwargs):
        raise AssertionError("features should come from the cache")

    monkeypatch.setattr(frozen, "extract_features", no_extraction)
    assert cli_main(args) == 0
    assert json.loads((run_dir / "eval/linear_probe.json").read_text())["test_top1"] == result["test_top1"]

    from ssl_zoo.hub.export import export

    export(run_dir, "probed", tmp_path / "hub")
    index = json.loads((tmp_path / "hub/index.json").read_text())
    assert index["models"]["probed"]["metrics"]["linear_top1"] == result["test_top1"]
    assert cli_main([*args, "--val-fraction", "0"]) == 2
    assert "validation fraction" in capsys.readouterr().err


def test_knn_and_linear_accept_hub_models_with_the_same_result(tmp_path, monkeypatch):
    from ssl_zoo.eval.frozen import evaluate_knn, evaluate_linear
    from ssl_zoo.hub.export import export

    monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path / "cache"))
    cfg = load_config(tiny_config("simclrv2", tmp_path, train={"max_steps": 2}))
    run_dir = Trainer(cfg, progress_bar=False).fit().run_dir
    export(run_dir, "tiny", tmp_path / "hub")
    assert evaluate_knn(str(run_dir)) == evaluate_knn("tiny", hub=str(tmp_path / "hub"))
    probe = dict(lrs=(1e-2,), weight_decays=(0.0,), epochs=3)
    from_run, run_out = evaluate_linear(str(run_dir), **probe)
    from_hub, hub_out = evaluate_linear("tiny", hub=str(tmp_path / "hub"), **probe)
    assert from_hub.test_top1 == pytest.approx(from_run.test_top1, abs=0.5)
    assert run_out.parent == run_dir / "eval" and hub_out.is_relative_to(tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "hub/tiny").iterdir()) == ["README.md", "config.json",
                                                                      "model.safetensors"]  # hub untouched


def test_missing_eval_source_is_a_clear_error(tmp_path):
    from ssl_zoo.checkpoint import CheckpointError
    from ssl_zoo.eval.frozen import evaluate_knn

    with pytest.raises(CheckpointError, match="no such run directory, checkpoint or hub model folder"):
        evaluate_knn(str(tmp_path / "runs/typo"))
