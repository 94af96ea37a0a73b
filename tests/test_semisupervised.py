"""SimCLRv2 steps 2 and 3: label subsets, fine-tuning, distillation, the classifier folder, the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch

from ssl_zoo.checkpoint import CheckpointError
from ssl_zoo.cli import main as cli_main
from ssl_zoo.config import ConfigError
from ssl_zoo.experiment import load_config
from ssl_zoo.eval.classifier import load_classifier
from ssl_zoo.eval.distill import default_temperature, distill, distill_recipe, distillation_loss
from ssl_zoo.eval.finetune import (balanced_subset, default_recipe, finetune, finetune_recipe, label_tag,
                                   parse_label_fraction)
from ssl_zoo.trainer import Trainer
from tests.conftest import tiny_config

# ----------------------------------------------------------------------------- label subsets


def test_label_subset_is_class_balanced_seeded_and_inside_the_split():
    labels = torch.arange(1000) % 10
    labels[:300] = 3  # an unbalanced split: class 3 is the largest
    subset = balanced_subset(labels, 0.1, seed=7)
    counts = torch.bincount(labels[subset], minlength=10)
    assert counts.tolist() == [10] * 10  # round(0.1 * 1000 / 10) from every class
    assert torch.equal(subset, balanced_subset(labels, 0.1, seed=7))
    assert not torch.equal(subset, balanced_subset(labels, 0.1, seed=8))
    assert len(set(subset.tolist())) == 100 and subset.min() >= 0 and subset.max() < 1000
    assert torch.equal(balanced_subset(labels, 1.0, seed=0), torch.arange(1000))  # 100%: every label
    assert torch.bincount(labels[balanced_subset(labels, 0.5, seed=0)]).tolist() == [50] * 10


def test_label_fractions_parse_and_bad_ones_name_the_valid_form():
    assert parse_label_fraction("1%") == 0.01 and parse_label_fraction("100%") == 1.0
    assert label_tag(parse_label_fraction("10%")) == "10pct" and label_tag(0.005) == "0.5pct"
    for bad in ("0%", "150%", "10", "ten%"):
        with pytest.raises(ConfigError, match=r"e\.g\. 1%, 10% or 100%"):
            parse_label_fraction(bad)


def test_finetune_recipe_follows_the_paper():
    one, ten = finetune_recipe(0.01), finetune_recipe(0.1)
    assert (one.epochs, ten.epochs) == (60, 30)
    from ssl_zoo.optim import scaled_lr

    assert scaled_lr(one.optim, 1024) == pytest.approx(0.16)  # 0.005 x sqrt(1024)
    assert one.optim.weight_decay == 0.0 and one.optim.warmup_epochs == 0.0 and one.optim.name == "sgd"
    mae = finetune_recipe(0.1, 64, "mae")
    assert mae.epochs == 30 and mae.optim.name == "adamw" and scaled_lr(mae.optim, 64) == pytest.approx(1.25e-4)
    assert (mae.optim.weight_decay, mae.optim.warmup_epochs, mae.optim.min_lr) == (0.05, 3.0, 1e-6)  # 10% of 30
    assert finetune_recipe(0.1, 64, "mae", epochs=100).optim.warmup_epochs == 5.0  # MAE's ViT-B: 5 of 100
    assert finetune_recipe(0.1, 64, "mae", epochs=10).epochs == 10
    with pytest.raises(ConfigError, match="'byol'.*simclr, mae"):
        finetune_recipe(0.1, 64, "byol")


def test_the_default_recipe_is_maes_for_vits_and_simclrs_for_convnets():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=4, num_classes=0)
    assert default_recipe(vit) == "mae" and default_recipe(timm.create_model("resnet10t", num_classes=0)) == "simclr"


# ----------------------------------------------------------------------------- distillation loss


def test_distillation_loss_equals_the_hand_computed_formula():
    teacher = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    student = torch.tensor([[1.0, 1.0, 0.0], [-2.0, 0.0, 1.0]])
    for tau in (1.0, 0.1):
        expected = 0.0
        for t_row, s_row in zip(teacher.tolist(), student.tolist()):
            zt = sum(math.exp(v / tau) for v in t_row)
            zs = sum(math.exp(v / tau) for v in s_row)
            expected -= sum(math.exp(t / tau) / zt * math.log(math.exp(s / tau) / zs) for t, s in zip(t_row, s_row))
        assert distillation_loss(teacher, student, tau).item() == pytest.approx(expected / 2, rel=1e-5)


def test_distillation_loss_is_smallest_when_the_student_copies_the_teacher():
    teacher = torch.randn(4, 10)
    student = teacher.clone().requires_grad_(True)
    loss = distillation_loss(teacher, student, 1.0)
    entropy = -(teacher.softmax(1) * teacher.log_softmax(1)).sum(1).mean()
    assert loss.item() == pytest.approx(entropy.item(), rel=1e-5)  # cross-entropy = entropy at P_S = P_T
    loss.backward()
    assert student.grad.abs().max() < 1e-6  # a minimum: zero gradient
    assert distillation_loss(teacher, torch.zeros(4, 10), 1.0) > loss


def test_default_temperature_is_paper_rule():
    assert default_temperature("resnet50", "resnet50") == 0.1  # self-distillation
    assert default_temperature("resnet152", "resnet50") == 1.0  # big -> small


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("semi")
    cfg = load_config(tiny_config("simclrv2", tmp, train={"max_steps": 2}))
    return Trainer(cfg, progress_bar=False).fit().run_dir


def tiny_recipe(recipe, epochs: float = 1):
    recipe.epochs, recipe.batch_size = epochs, 32
    return recipe


def test_a_saved_classifier_keeps_its_input_view(tmp_path):
    """Resize-whole (SatMAE++) and per-image min-max (RAD-DINO) views come back as saved: the reloaded
    classifier gives the same logits on narrow-range images larger than its input."""
    from ssl_zoo.augment import EvalView, Normalize
    from ssl_zoo.backbones import BackboneSpec, rebuild_backbone
    from ssl_zoo.eval.classifier import Classifier, save_classifier

    backbone = rebuild_backbone(BackboneSpec("resnet10t"))
    model = Classifier(backbone, None, 4, EvalView(16, Normalize("imagenet"), resize=True, minmax=True)).eval()
    torch.nn.init.normal_(model.fc.weight)
    loaded, meta = load_classifier(save_classifier(model, tmp_path / "clf", {}))
    assert (meta["view"]["resize"], meta["view"]["minmax"]) == (True, True)
    images = torch.randint(60, 120, (2, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(images), model(images), atol=1e-5)


def test_finetune_keeps_simclrv2_first_head_layer_and_saves_a_safe_classifier(tiny_run):
    from ssl_zoo.run_dir import load_method

    result, out = finetune(str(tiny_run), 0.5, tiny_recipe(finetune_recipe(0.5)), progress=False)
    assert out == tiny_run / "eval/finetune_50pct.json" and json.loads(out.read_text())["test_top1"] == result.test_top1
    assert result.labelled_images == 128 and result.step == 2  # 256 synthetic images, 4 classes x 32
    model, meta = load_classifier(Path(result.model))
    method = load_method(tiny_run).method
    hidden = method.head[0][0].out_features
    assert meta["head"] == [method.encoder.num_features, hidden] and model.fc.in_features == hidden
    assert sorted(p.name for p in Path(result.model).iterdir()) == ["classifier.json", "model.safetensors"]
    # the kept head layer was trained: it moved away from the pretrained one
    assert not torch.equal(model.head[0].weight, method.head[0][0].weight)


def test_classifier_folder_errors_are_clear(tmp_path, tiny_run):
    with pytest.raises(CheckpointError, match="not a classifier folder"):
        load_classifier(tmp_path)
    result, _ = finetune(str(tiny_run), 0.25, tiny_recipe(finetune_recipe(0.25)), progress=False)
    folder = Path(result.model)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="does not hold this classifier's weights"):
        load_classifier(folder)
    (folder / "classifier.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_classifier(folder)


def test_distill_writes_result_next_to_the_teacher_and_feeds_the_hub(tiny_run, tmp_path, capsys):
    assert cli_main(["finetune", str(tiny_run), "--labels", "50%", "--epochs", "1", "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "fine-tuned on 50% of the labels (128 images" in out and "simclr recipe (auto)" in out  # a ResNet
    teacher = tiny_run / "eval/finetune_50pct"
    assert cli_main(["distill", str(teacher), "--student", "resnet10t", "--epochs", "1", "--batch-size", "32",
                     "--unlabelled-limit", "64"]) == 0
    assert "student resnet10t distilled at tau=1 on 64 unlabelled images" in capsys.readouterr().out
    result = json.loads((tiny_run / "eval/distill_resnet10t_t1_from_finetune_50pct.json").read_text())
    assert result["teacher"] == str(teacher) and result["student"] == "resnet10t" and result["step"] == 2
    student, meta = load_classifier(tiny_run / "eval/distill_resnet10t_t1_from_finetune_50pct")
    assert meta["backbone"]["architecture"] == "resnet10t" and meta["head"] is None

    from ssl_zoo.hub.export import export

    export(tiny_run, "semi", tmp_path / "hub")
    metrics = json.loads((tmp_path / "hub/index.json").read_text())["models"]["semi"]["metrics"]
    assert metrics["finetune_50pct_top1"] == json.loads((tiny_run / "eval/finetune_50pct.json").read_text())["test_top1"]
    assert metrics["distill_resnet10t_t1_from_finetune_50pct_top1"] == result["test_top1"]
    assert "finetune 50pct top-1" in (tmp_path / "hub/semi/README.md").read_text()


def test_finetune_and_distill_accept_hub_models(tiny_run, tmp_path, monkeypatch):
    from ssl_zoo.hub.export import export

    monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path / "cache"))
    export(tiny_run, "tiny", tmp_path / "hub")
    hub_files = sorted(p.name for p in (tmp_path / "hub/tiny").iterdir())
    result, out = finetune("tiny", 0.5, tiny_recipe(finetune_recipe(0.5)), hub=str(tmp_path / "hub"), progress=False)
    assert out.is_relative_to(tmp_path / "cache") and out.name == "finetune_50pct.json"
    _, meta = load_classifier(Path(result.model))
    assert meta["head"] is None  # a hub model is the backbone only: fine-tuned from its features
    student, student_out = distill(Path(result.model), tiny_recipe(distill_recipe()), student_init="tiny",
                                   hub=str(tmp_path / "hub"), unlabelled_limit=64, progress=False)
    assert student_out.parent == out.parent and student.unlabelled_images == 64
    assert sorted(p.name for p in (tmp_path / "hub/tiny").iterdir()) == hub_files  # the hub is never written to


def test_bad_finetune_and_distill_input_is_a_clear_cli_error(tiny_run, tmp_path, capsys):
    assert cli_main(["finetune", str(tiny_run), "--labels", "200%"]) == 2
    assert "--labels '200%'" in capsys.readouterr().err
    assert cli_main(["distill", str(tmp_path)]) == 2
    assert "not a classifier folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- pretrained beats random init


@pytest.fixture(scope="module")
def pretrained_fashion_mnist(tmp_path_factory):
    """The default job's recipe, 40 steps (5120 images): enough to beat a random network."""
    from tests.conftest import FASHION_MNIST, ROOT

    if not FASHION_MNIST.is_dir():
        pytest.fail("Fashion-MNIST is missing: install Debian's dataset-fashion-mnist (make test does)")
    tmp = tmp_path_factory.mktemp("pretrained")
    cfg = load_config(ROOT / "configs/simclrv2/resnet18_fashion_mnist.yaml",
                      ["train.max_steps=40", "train.time_budget_min=0", f"train.output_dir={tmp}", "train.name=pre",
                       "eval.final_knn=false"])
    return Trainer(cfg, progress_bar=False).fit().run_dir


def test_pretraining_beats_random_init_in_linear_probe_finetuning_and_distillation(pretrained_fashion_mnist):
    from ssl_zoo.eval.frozen import evaluate_linear

    run = str(pretrained_fashion_mnist)
    top1 = {}
    for scratch in (False, True):
        probe, _ = evaluate_linear(run, from_scratch=scratch, train_limit=2000, test_limit=500,
                                   lrs=(1e-2,), weight_decays=(1e-4,), epochs=20)
        ft = finetune_recipe(0.01)
        ft.epochs, ft.batch_size, ft.test_limit, ft.crop_scale = 6, 64, 500, (0.5, 1.0)
        tuned, _ = finetune(run, 0.01, ft, from_scratch=scratch, progress=False)
        dist = distill_recipe(64)
        dist.epochs, dist.test_limit, dist.crop_scale = 1, 500, (0.5, 1.0)
        student, _ = distill(Path(tuned.model), dist, student_init=None if scratch else run,
                             unlabelled_limit=1920, progress=False)
        top1["scratch" if scratch else "pretrained"] = (probe.test_top1, tuned.test_top1, student.test_top1)
    (lin, ft, dist), (lin0, ft0, dist0) = top1["pretrained"], top1["scratch"]
    assert lin > lin0 + 5 and ft > ft0 + 5 and dist > dist0 + 5, top1  # measured: 79/70/53 vs 65/55/20
    out = pretrained_fashion_mnist / "eval"
    assert {p.name for p in out.glob("*.json")} >= {"linear_probe.json", "linear_probe_scratch.json",
                                                     "finetune_1pct.json", "finetune_1pct_scratch.json"}
