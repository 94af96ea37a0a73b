"""SiT against its method sheet (METHODS.md): latest (EMA teacher, MoCo-v3 contrastive + masked L1)
and v1 (rotation + contrastive tokens, labelled rotations, uncertainty-weighted losses, L1 on all pixels)."""

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_zoo.augment import Normalize, to_unit
from ssl_zoo.config import ConfigError
from ssl_zoo.contrastive import nt_xent_loss
from ssl_zoo.corruption import V1Distortion, v1_distort
from ssl_zoo.experiment import load_config
from ssl_zoo.methods.sit import SiT, SiTLatest, SiTV1, moco_v3_loss, rotate90, uncertainty_weighted
from ssl_zoo.schedules import Progress
from ssl_zoo.trainer import Trainer
from tests.conftest import logged_losses, random_images, tiny_config, tiny_method

pytestmark = pytest.mark.usefixtures("one_thread")


STEP = Progress(0, 10, 0, 10)


images = random_images


def tiny_sit(tmp_path, **method):
    return tiny_method("sit", tmp_path, **method)


def keep_output_grad(module: torch.nn.Module, index: int | None = None) -> dict:
    """Forward hook that keeps the gradient of the module's output (or output[index])."""
    captured = {}

    def hook(m, args, out):
        t = out if index is None else out[index]
        t.retain_grad()
        captured["out"] = t

    module.register_forward_hook(hook)
    return captured


# ----------------------------------------------------------------------------- variants and config


def test_the_variant_selects_one_class_per_algorithm(tmp_path):
    assert type(tiny_sit(tmp_path)) is SiTLatest and type(tiny_sit(tmp_path, variant="v1")) is SiTV1
    assert type(tiny_sit(tmp_path, variant="latest")) is SiTLatest


def test_variant_defaults_are_the_two_recipes():
    latest, v1 = SiTLatest.Config(), SiTV1.Config()
    assert latest.variant == "latest" and (latest.temperature, latest.out_dim, latest.hidden_dim) == (0.2, 256, 4096)
    assert [(v.scale, v.blur_p, v.solarize_p, v.jitter_p, v.gray_p) for v in latest.views] == [
        ((0.2, 1.0), 1.0, 0.0, 0.8, 0.2), ((0.2, 1.0), 0.1, 0.2, 0.8, 0.2)]
    c = latest.corruption
    assert (c.coverage, c.fill, c.paste_p, c.paste_coverage, c.align) == (0.5, "zeros", 0.5, 0.3, 1)
    assert (latest.momentum.start, latest.momentum.end, latest.recon_weight) == (0.996, 1.0, 1.0)
    assert (v1.temperature, v1.out_dim) == (0.5, 512)
    assert [(v.scale, v.jitter, v.jitter_p, v.blur_p) for v in v1.views] == [((0.08, 1.0), (0.4, 0.4, 0.4, 0.0), 1.0, 0.0)] * 2
    optim = SiT.paper_optim()
    assert (optim.base_lr, optim.min_lr, optim.warmup_epochs, optim.weight_decay, optim.weight_decay_end,
            optim.clip_grad, optim.clip_mode) == (5e-4, 1e-6, 10, 0.04, 0.1, 3.0, "per_parameter")


def test_v1_paper_config_uses_the_v1_optimiser():
    from pathlib import Path

    from ssl_zoo.methods.sit import V1_OPTIM

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs/sit/vit_small_v1_imagenet.yaml")
    assert cfg.method.variant == "v1" and cfg.optim == V1_OPTIM


def test_losses_stay_fp32_under_bf16_autocast(tmp_path):
    """GPU runs use bf16 autocast: the contrastive logits (divided by tau = 0.2) and the L1 are fp32."""
    from ssl_zoo.methods.gmml import masked_l1

    method = tiny_sit(tmp_path)
    torch.manual_seed(10)
    s, t = torch.randn(8, 32), torch.randn(8, 32)
    pred, target, mask = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.ones(2, 1, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        contrastive = method.contrastive_loss(s.bfloat16(), t.bfloat16())
        l1 = masked_l1(pred.bfloat16(), target, mask)
    assert contrastive.dtype == l1.dtype == torch.float32
    assert contrastive.item() == pytest.approx(method.contrastive_loss(s.bfloat16().float(), t.bfloat16().float()).item())


@pytest.mark.parametrize("method, match", [
    ({"variant": "v3"}, r"method.variant.*'v3'.*'latest', 'v1'"),
    ({"temperature": 0.0}, r"method.temperature.*0.0.*out of range"),
    ({"views": [{"size": 28}] * 3}, r"exactly 2 views, got 3"),
    ({"corruption": {"fill": "ones"}}, r"method.corruption.fill.*'ones'.*'noise', 'zeros'"),
    ({"variant": "v1", "distortion": {"blur_kernel": 1}}, r"method.distortion.blur_kernel.*1.*\[3, inf\]"),
])
def test_bad_config_values_raise_config_error(tmp_path, method, match):
    raw = tiny_config("sit", tmp_path)
    raw["method"].update(method)
    with pytest.raises(ConfigError, match=match):
        load_config(raw)


# ----------------------------------------------------------------------------- v1


def test_v1_token_layout_and_head_shapes(tmp_path):
    method = tiny_sit(tmp_path, variant="v1").eval()  # no drop-path
    vit = method.net.vit
    x = torch.randn(3, 3, 28, 28)
    tokens = vit.forward_features(x)
    assert vit.num_prefix_tokens == 2 and tokens.shape == (3, 2 + 16, 192)  # 2 extra tokens + 4 x 4 patches
    assert vit.pos_embed.shape == (1, 2 + 16, 192)  # both extra tokens have position embeddings
    rot, z, recon = method.net(x)
    assert rot.shape == (3, 4) and z.shape == (3, 32) and recon.shape == x.shape
    assert torch.allclose(method.backbone()(x), tokens[:, 0], atol=1e-6)  # the exported ViT pools the contrastive token


def test_rotate90_turns_counter_clockwise_per_image():
    x = torch.zeros(4, 1, 5, 5)
    x[:, :, 0, 4] = 1.0  # top-right corner
    out = rotate90(x, torch.tensor([0, 1, 2, 3]))
    corners = [tuple(torch.nonzero(o[0])[0].tolist()) for o in out]
    assert corners == [(0, 4), (0, 0), (4, 0), (4, 4)]  # 90 degrees CCW takes top-right to top-left
    y = torch.randn(6, 3, 8, 8)
    k = torch.tensor([3, 0, 2, 1, 1, 3])
    assert torch.equal(rotate90(y, k), torch.stack([torch.rot90(y[i], int(k[i]), (1, 2)) for i in range(6)]))


def test_v1_views_are_rotated_by_their_labels_then_distorted(tmp_path):
    plain = {"size": 28, "scale": [1.0, 1.0], "ratio": [1.0, 1.0], "interpolation": "bilinear", "flip_p": 0.0,
             "jitter_p": 0.0, "gray_p": 0.0}
    method = tiny_sit(tmp_path, variant="v1", views=[plain, plain])
    batch = images(64)
    torch.manual_seed(1)
    views = method.views(batch)
    upright = Normalize("imagenet")(to_unit(batch.images))  # the un-rotated view: the whole image
    for crop, k in zip(views.crops, views.rotations):
        assert k.shape == (64,) and set(k.tolist()) == {0, 1, 2, 3}
        expected = torch.stack([torch.rot90(upright[i], int(k[i]), (1, 2)) for i in range(64)])
        assert torch.allclose(crop, expected, atol=1e-5)
    for crop, corrupted, mask in zip(views.crops, views.corrupted, views.corruption_masks):
        keep = mask.expand_as(crop) == 0
        assert torch.equal(corrupted[keep], crop[keep]) and not torch.equal(corrupted, crop)


def test_v1_distortion_changes_a_plausible_share_of_pixels():
    torch.manual_seed(2)
    x = torch.randn(64, 3, 28, 28)
    out, mask = v1_distort(x, V1Distortion())
    assert out.shape == x.shape and mask.shape == (64, 1, 28, 28)
    keep = mask.expand_as(x) == 0
    assert torch.equal(out[keep], x[keep])
    assert 0.2 < mask.mean() < 0.8  # grey box + blur box + up to 30% noise + up to 30% pasted


def test_v1_loss_is_the_uncertainty_weighted_sum_with_l1_on_all_pixels(tmp_path):
    method = tiny_sit(tmp_path, variant="v1")
    with torch.no_grad():
        method.log_vars.copy_(torch.tensor([0.5, -0.2, 1.5]))
    torch.manual_seed(3)
    views = method.views(images(8))
    recon = keep_output_grad(method.net.recon)
    out = method.training_step(views, STEP)
    losses = torch.stack([out["rotation_loss"], out["contrastive_loss"], out["reconstruction_loss"]])
    s = torch.tensor([0.5, -0.2, 1.5])
    expected = sum(math.exp(-a * si) * li + si / 2 for a, si, li in zip((1.0, 1.0, 0.5), s.tolist(), losses.tolist()))
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert uncertainty_weighted(losses, s, torch.tensor([1.0, 1.0, 0.5])).item() == pytest.approx(expected, rel=1e-5)
    out["loss"].backward()
    assert method.log_vars.grad is not None and torch.all(method.log_vars.grad != 0)
    clean = torch.cat(views.crops)
    assert out["reconstruction_loss"].item() == pytest.approx(F.l1_loss(recon["out"], clean).item(), rel=1e-5)
    assert (recon["out"].grad != 0).float().mean() > 0.99  # every pixel counts, corrupted or not


def test_v1_uncertainty_weighting_is_the_july_2021_revision_by_hand():
    """exp(-adj s) L + s / 2 per task, adj 1 (CE, NT-Xent) and 0.5 (L1); d/ds = -adj exp(-adj s) L + 1 / 2."""
    losses = torch.tensor([2.0, 3.0, 0.4])
    s = torch.tensor([0.5, -0.2, 1.5], requires_grad=True)
    total = uncertainty_weighted(losses, s, torch.tensor([1.0, 1.0, 0.5]))
    # 2 e^-0.5 + 0.25 = 1.4630613, 3 e^0.2 - 0.1 = 3.5642083, 0.4 e^-0.75 + 0.75 = 0.9389466
    assert total.item() == pytest.approx(5.9662162, abs=1e-6)
    total.backward()
    # -2 e^-0.5 + 0.5, -3 e^0.2 + 0.5, -0.2 e^-0.75 + 0.5
    assert torch.allclose(s.grad, torch.tensor([-0.7130613, -3.1642083, 0.4055267]), atol=1e-6)
    # not the first revision (adj e^-s L + s / 2), whose L1 term is 0.2 e^-1.5 + 0.75 = 0.7946260: total 5.8218956
    assert total.item() != pytest.approx(5.8218956, abs=1e-3)


def test_v1_contrastive_is_the_official_nt_xent(tmp_path):
    """losses.py ContrastiveLoss: -log(exp(sim_pos / t) / sum_{k != i} exp(sim_ik / t)), mean over 2B."""
    method = tiny_sit(tmp_path, variant="v1")
    torch.manual_seed(4)
    z1, z2 = torch.randn(5, 32), torch.randn(5, 32)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / 0.5
    total = 0.0
    for i in range(10):
        pos = sim[i, (i + 5) % 10]
        total += -(pos - torch.logsumexp(sim[i][torch.arange(10) != i], 0))
    assert method.cfg.temperature == 0.5
    assert nt_xent_loss(z1, z2, method.cfg.temperature).item() == pytest.approx((total / 10).item(), rel=1e-5)


# ----------------------------------------------------------------------------- latest


def test_moco_v3_loss_against_a_hand_computed_reference():
    torch.manual_seed(5)
    q, k = torch.randn(4, 8), torch.randn(4, 8)
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    tau = 0.2
    ref = sum(-math.log(math.exp(float(qn[i] @ kn[i]) / tau) / sum(math.exp(float(qn[i] @ kn[j]) / tau) for j in range(4)))
              for i in range(4)) / 4 * 2 * tau
    assert moco_v3_loss(q, k, tau).item() == pytest.approx(ref, rel=1e-5)


def test_latest_contrastive_is_symmetric_student_against_the_other_teacher_view(tmp_path):
    method = tiny_sit(tmp_path)
    torch.manual_seed(6)
    s, t = torch.randn(8, 32), torch.randn(8, 32)
    expected = moco_v3_loss(s[:4], t[4:], 0.2) + moco_v3_loss(s[4:], t[:4], 0.2)
    assert method.contrastive_loss(s, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_latest_teacher_sees_clean_views_and_gets_no_gradient(tmp_path):
    method = tiny_sit(tmp_path)
    seen = {}
    method.teacher.vit.register_forward_pre_hook(lambda m, a: seen.__setitem__("teacher", a[0]))
    method.student.vit.patch_embed.register_forward_pre_hook(lambda m, a: seen.__setitem__("student", a[0]))
    torch.manual_seed(7)
    views = method.views(images(8))
    method.training_step(views, STEP)["loss"].backward()
    assert torch.equal(seen["teacher"], torch.cat(views.crops))
    assert torch.equal(seen["student"], torch.cat(views.corrupted))
    assert all(not p.requires_grad and p.grad is None for p in method.teacher.parameters())
    assert all(p.grad is not None for p in method.student.parameters())
    optimised = {id(p) for g in method.param_groups(load_config(tiny_config("sit", tmp_path)).optim) for p in g["params"]}
    assert not optimised & {id(p) for p in method.teacher.parameters()}
    assert all(m.drop_prob == 0 for m in method.teacher.modules() if hasattr(m, "drop_prob"))


def test_latest_l1_counts_only_corrupted_pixels(tmp_path):
    method = tiny_sit(tmp_path)
    recon = keep_output_grad(method.student.recon)
    torch.manual_seed(8)
    views = method.views(images(8))
    method.training_step(views, STEP)["loss"].backward()
    grad = recon["out"].grad
    mask = torch.cat(views.corruption_masks).expand_as(grad)
    assert torch.count_nonzero(grad[mask == 0]) == 0
    assert (grad[mask == 1] != 0).float().mean() > 0.99
    fraction = torch.cat(views.corruption_masks).mean((1, 2, 3))
    assert fraction.min() >= 0.3 and fraction.max() < 0.7  # 50% zeros or 30% pasted


def test_latest_ema_update_follows_the_cosine_momentum(tmp_path):
    method = tiny_sit(tmp_path)
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(0.1 * torch.randn_like(p))
    before = [t.clone() for t in method.teacher.parameters()]
    student = [s.detach().clone() for s in method.student.parameters()]
    p = Progress(100, 1000, 1, 100)
    m = method.cfg.momentum(p)
    assert 0.996 < m < 1.0 and method.schedule_values(p) == {"momentum": m}
    method.after_step(p)
    for t0, s, t1 in zip(before, student, method.teacher.parameters()):  # heads included
        assert torch.allclose(t1, m * t0 + (1 - m) * s, atol=1e-6)
    assert method.backbone() is method.teacher.vit


def test_log_images_rows(tmp_path):
    for variant in ("latest", "v1"):
        method = tiny_sit(tmp_path, variant=variant)
        torch.manual_seed(9)
        grids = method.log_images(method.views(images(8)))
        (name, grid), = grids.items()
        assert name == f"sit_{variant}/clean_corrupted_reconstruction_mask"
        assert grid.shape == (3, 4 * 28 + 5 * 2, 8 * 28 + 9 * 2)


# ----------------------------------------------------------------------------- real runs


def run_losses(tmp_path, steps: int, **method) -> list[float]:
    """A real Fashion-MNIST run (trainer, AdamW, per-parameter clipping, EMA). 14 px patches (2 x 2 tokens)
    and one thread keep it short on a shared 2-core machine."""
    raw = tiny_config("sit", tmp_path, data="fashion_mnist", train={"max_steps": steps, "batch_size": 16, "threads": 1},
                      model={"patch_size": 14}, optim={"base_lr": 3e-2})
    raw["method"].update(method)
    result = Trainer(load_config(raw), progress_bar=False).fit()
    assert result.status == "completed" and result.step == steps
    losses = logged_losses(result.run_dir)
    assert len(losses) == steps and all(math.isfinite(v) for v in losses)
    return losses


def test_short_fashion_mnist_run_lowers_the_loss_latest(tmp_path):
    """lambda = 5, the authors' suggestion for small datasets (Fashion-MNIST is one)."""
    losses = run_losses(tmp_path, 20, recon_weight=5.0)
    assert sum(losses[-4:]) / 4 < 0.9 * sum(losses[:4]) / 4, losses


def test_short_fashion_mnist_run_lowers_the_loss_v1(tmp_path):
    """The total carries + (s1 + s2 + s3) / 2 = 1.5 at the start, which the losses cannot lower: a 5% drop
    of the total is a ~10% drop of the weighted losses."""
    losses = run_losses(tmp_path, 20, variant="v1")
    assert sum(losses[-4:]) / 4 < 0.95 * sum(losses[:4]) / 4, losses
