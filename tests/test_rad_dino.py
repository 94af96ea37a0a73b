"""RAD-DINO (DINOv2 recipe) against its method sheet (METHODS.md): block masks, iBOT / DINO / KoLeo
losses, centring, 518/14 grid, optimiser groups, grayscale input, continued pretraining, a real run."""

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss

from ssl_zoo.config import ConfigError, OptimConfig
from ssl_zoo.experiment import load_config
from ssl_zoo.masking import block_masks
from ssl_zoo.methods.base import build_method
from ssl_zoo.methods.rad_dino import RADDINO, TeacherTargets, cross_view_loss, masked_patch_loss
from ssl_zoo.schedules import Progress
from ssl_zoo.trainer import Trainer
from tests.conftest import ROOT, fit_losses, logged_losses, random_images, tiny_config, tiny_method


def progress(step: int = 0) -> Progress:
    return Progress(step=step, total_steps=1000, epoch=step // 100, steps_per_epoch=100)


def tiny(tmp_path, **method):
    return tiny_method("rad_dino", tmp_path, **method)


# ----------------------------------------------------------------------------- masks


def test_half_the_global_crops_get_block_masks_of_growing_ratio():
    torch.manual_seed(0)
    n, side = 2 * 13, 37  # 2B global crops of 518 px at p = 14
    masks = block_masks(n, side, side)
    counts = masks.flatten(1).sum(1)
    assert masks.shape == (n, 37, 37) and masks.dtype == torch.bool
    assert int((counts > 0).sum()) == int(n * 0.5) == 13
    masked = counts[counts > 0].sort().values
    edges = torch.linspace(0.1, 0.5, 14)
    # the k-th masked image aims at int(N * U(r_k, r_k+1)) patches and never overshoots its aim
    assert torch.all(masked <= (side * side * edges[1:]).long())
    assert torch.all(masked >= 4)  # at least one block of >= 4 patches
    assert masked.float().mean() / (side * side) > 0.2
    # blocks: a masked patch almost always has a masked 4-neighbour (random patches would rarely)
    m = masks.float()
    neighbours = F.conv2d(m[:, None], torch.tensor([[[[0, 1, 0], [1, 0, 1], [0, 1, 0]]]]).float(), padding=1)[:, 0]
    assert ((neighbours > 0) & masks).sum() / masks.sum() > 0.95


def test_method_masks_int_2b_half_of_its_global_crops(tmp_path):
    # seeded: on a 4 x 4 grid a chosen crop aiming at 1 patch can find no place for it and stay unmasked,
    # as in DINOv2's MaskingGenerator, so the count depends on the draws
    torch.manual_seed(0)
    method = tiny(tmp_path)
    for batch in (3, 5):
        views = method.views(random_images(batch))
        masks = views.patch_masks
        assert masks.shape == (2 * batch, 4, 4)  # 28 px / 7 px patches
        assert int((masks.flatten(1).sum(1) > 0).sum()) == int(2 * batch * 0.5)


# ----------------------------------------------------------------------------- losses


def test_ibot_loss_averages_per_image_then_divides_by_all_2b_images():
    torch.manual_seed(1)
    masks = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)  # 2B = 4
    teacher_logits, student = torch.randn(3, 8), torch.randn(3, 8)
    teacher = F.softmax(teacher_logits / 0.04, dim=-1)
    ce = -(teacher * F.log_softmax(student / 0.1, dim=-1)).sum(-1)
    expected = (ce[0] + (ce[1] + ce[2]) / 2) / 4  # unmasked images add 0 but count
    loss = masked_patch_loss(teacher, student, masks, 0.1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() != pytest.approx(((ce[0] + (ce[1] + ce[2]) / 2) / 2).item(), rel=1e-3)
    reference = IBOTPatchLoss(output_dim=8, teacher_temp=0.04)(teacher_logits, student, masks.view(4, 2, 2))
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)


def test_dino_loss_pairs_student_globals_with_the_swapped_teacher_and_matches_lightly():
    torch.manual_seed(2)
    teacher_logits = [torch.randn(3, 16) for _ in range(2)]
    student = [torch.randn(3, 16) for _ in range(4)]  # 2 global + 2 local
    teacher = [F.softmax(t / 0.04, dim=-1) for t in teacher_logits]

    def ce(t, s):
        return -(t * F.log_softmax(s / 0.1, dim=-1)).sum(-1).mean()

    pairs = [(0, 1), (1, 0), (0, 2), (0, 3), (1, 2), (1, 3)]  # teacher i vs student v != i: 6 terms
    expected = sum(ce(teacher[i], student[v]) for i, v in pairs) / 6
    loss = cross_view_loss(teacher, student, 0.1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    lightly = DINOLoss(output_dim=16, warmup_teacher_temp=0.04, teacher_temp=0.04)(teacher_logits, student)
    assert loss.item() == pytest.approx(lightly.item(), rel=1e-5)


def test_total_is_dino_plus_ibot_plus_a_tenth_of_koleo_on_student_cls(tmp_path, one_thread):
    assert RADDINO.Config().koleo_weight == 0.1
    method = tiny(tmp_path)
    cls_tokens = {}
    method.student.backbone.vit.norm.register_forward_hook(  # first call: the global crops
        lambda m, i, o: None if "globals" in cls_tokens else cls_tokens.__setitem__("globals", o[:, 0].detach()))
    torch.manual_seed(3)
    out = method.training_step(method.views(random_images(6)), progress())
    koleo = sum(KoLeoLoss()(c) for c in cls_tokens["globals"].chunk(2))
    assert out["koleo"].item() == pytest.approx(koleo.item(), rel=1e-5)
    total = out["dino"] + out["ibot"] + 0.1 * out["koleo"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    assert out["ibot"] > 0 and out["dino"] > 0


def test_ema_centre_and_sinkhorn_knopp_targets():
    torch.manual_seed(4)
    logits = torch.randn(64, 16) + 3 * torch.arange(16) / 16  # softmax favours the last prototypes
    sk = TeacherTargets(16, "sinkhorn_knopp", 0.9, 3)(logits, 1.0)
    assert torch.allclose(sk.sum(1), torch.ones(64), atol=1e-5)  # each sample: a distribution
    assert torch.allclose(sk.sum(0), torch.full((16,), 64 / 16), rtol=0.02)  # prototypes balanced
    softmax_rows = F.softmax(logits, dim=-1).sum(0)
    assert softmax_rows.max() / softmax_rows.min() > 3
    assert not hasattr(TeacherTargets(16, "sinkhorn_knopp", 0.9, 3), "center")

    ema = TeacherTargets(16, "ema", 0.9, 3)
    first = ema(logits, 0.04)  # centre 0 in the first step, then 0.1 x mean logit
    assert torch.allclose(first, F.softmax(logits / 0.04, dim=-1))
    assert torch.allclose(ema.center.value.flatten(), 0.1 * logits.mean(0), atol=1e-6)


def test_sinkhorn_knopp_training_step(tmp_path):
    method = tiny(tmp_path, centering="sinkhorn_knopp")
    torch.manual_seed(5)
    out = method.training_step(method.views(random_images(4)), progress())
    assert torch.isfinite(out["loss"]) and "dino_targets.center.center" not in method.state_dict()
    with pytest.raises(ConfigError, match="sinkhorn_knopp"):
        tiny(tmp_path, centering="sinkhorn")


# ----------------------------------------------------------------------------- networks


def test_518_px_at_patch_14_is_a_37_by_37_grid(tmp_path):
    from ssl_zoo.backbones import build_backbone

    cfg = load_config(tiny_config("rad_dino", tmp_path))
    cfg.method.global_views = [RADDINO.Config().global_views[0]] * 2
    cfg.method.n_local = 0
    cfg.model.backbone, cfg.model.patch_size, cfg.model.img_size = "vit_small_patch14_dinov2", 0, 518
    vit = build_backbone(cfg.model, img_size=518, depth=1, embed_dim=32, num_heads=2)  # tiny width, paper grid
    method = RADDINO(cfg.method, vit)
    assert method.patch_size == 14
    torch.manual_seed(6)
    views = method.views(random_images(2, size=64))
    assert views.crops[0].shape[-2:] == (518, 518) and views.patch_masks.shape == (4, 37, 37)
    cls, patches = method.student.tokens(torch.cat(views.crops[:2]), views.patch_masks.flatten(1))
    assert patches.shape == (4, 37 * 37, 32)


def test_teacher_sees_unmasked_crops_and_gets_no_gradient(tmp_path, one_thread):
    method = tiny(tmp_path)
    with torch.no_grad():
        method.teacher.backbone.mask_token.fill_(float("nan"))  # any use of it would poison the loss
    seen = {}
    method.teacher.backbone.vit.norm.register_forward_hook(lambda m, i, o: seen.__setitem__("t", o.detach()))
    torch.manual_seed(7)
    views = method.views(random_images(4))
    out = method.training_step(views, progress())
    assert torch.isfinite(out["loss"])
    with torch.no_grad():  # the teacher's tokens are the plain ViT's on the unmasked crops
        plain = method.teacher.backbone.vit.forward_features(torch.cat(views.crops[:2]))
    assert torch.allclose(seen["t"], plain, atol=1e-5)
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert method.student.backbone.mask_token.grad.abs().sum() > 0  # the student uses the mask token


def test_layer_decay_patch_embed_multiplier_and_weight_decay_exclusions(tmp_path):
    from ssl_zoo.backbones import build_backbone

    cfg = load_config(tiny_config("rad_dino", tmp_path))
    vit = build_backbone(cfg.model, img_size=28, init_values=1e-5)  # with layer scale (gamma) as DINOv2's ViT
    method = RADDINO(cfg.method, vit)
    groups = method.param_groups(OptimConfig(weight_decay=0.04))
    where = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(method.student.named_parameters())
    depth = len(vit.blocks)  # 12
    scale = {name: where[id(p)][0] for name, p in named.items()}
    decay = {name: where[id(p)][1] for name, p in named.items()}
    assert len(where) == len(named)  # every student parameter, no teacher one
    assert not set(where) & {id(p) for p in method.teacher.parameters()}
    for i in range(depth):
        assert scale[f"backbone.vit.blocks.{i}.attn.qkv.weight"] == pytest.approx(0.9 ** (depth - i))
    for name in ("backbone.vit.cls_token", "backbone.vit.pos_embed", "backbone.mask_token"):
        assert scale[name] == pytest.approx(0.9 ** (depth + 1)) and decay[name] == 0.04
    assert scale["backbone.vit.patch_embed.proj.weight"] == pytest.approx(0.2 * 0.9 ** (depth + 1))
    assert scale["backbone.vit.norm.weight"] == 1.0 and scale["dino_head.layers.0.weight"] == 1.0
    for name in ("backbone.vit.blocks.0.attn.qkv.bias", "backbone.vit.blocks.3.norm1.weight",
                 "backbone.vit.blocks.5.ls1.gamma", "backbone.vit.norm.bias", "ibot_head.layers.0.bias"):
        assert decay[name] == 0.0, name
    for name in ("backbone.vit.blocks.0.mlp.fc1.weight", "dino_head.last_layer.weight_v", "ibot_head.layers.2.weight"):
        assert decay[name] == 0.04, name


def test_both_last_layers_are_frozen_during_the_first_epoch(tmp_path, one_thread):
    method = tiny(tmp_path, freeze_last_layer_epochs=1.0)
    torch.manual_seed(8)
    method.training_step(method.views(random_images(4)), progress(50))["loss"].backward()
    method.after_backward(progress(50))
    for head in (method.student.dino_head, method.student.ibot_head):
        assert all(p.grad is None for p in head.last_layer.parameters())
        assert head.layers[0].weight.grad is not None
    assert method.schedule_values(progress(0))["momentum"] == pytest.approx(0.992)


# ----------------------------------------------------------------------------- grayscale input


def test_intensity_minmax_makes_features_invariant_to_the_xray_intensity_range(tmp_path):
    method = tiny(tmp_path).eval()
    assert method.cfg.normalize == "rad_dino"
    assert method.normalize.mean.flatten().tolist() == pytest.approx([0.5307])
    assert method.normalize.std.flatten().tolist() == pytest.approx([0.2583])
    gray = torch.randint(0, 256, (3, 1, 28, 28), generator=torch.Generator().manual_seed(9)).float()
    narrow = 40 + gray * 0.3  # the same image in a narrow intensity window
    rgb = lambda x: x.expand(-1, 3, -1, -1)  # noqa: E731  data.channels=3 replicates the channel
    assert torch.allclose(method.embed(rgb(gray)), method.embed(rgb(narrow)), atol=1e-3)
    torch.manual_seed(10)
    crop = method.augment.views[0](rgb(method.intensity(narrow)))[0]
    assert torch.allclose(crop[:, 0], crop[:, 1]) and torch.allclose(crop[:, 1], crop[:, 2])  # stays gray


def test_log_images_has_views_and_the_masked_global_crop(tmp_path):
    method = tiny(tmp_path)
    torch.manual_seed(11)
    views = method.views(random_images(4))
    views.patch_masks.zero_()
    views.patch_masks[0, 0, 0] = True  # image 0 of global crop 0: its top-left 7 x 7 patch
    grids = method.log_images(views)
    plain, masked = grids["views/0"], grids["masks/global_0"]
    assert masked.shape == plain.shape == (3, 32, 122)  # 4 images of 28 px, 2 px padding
    changed = (masked != plain).any(0).nonzero()
    assert changed.min(0).values.tolist() == [2, 2] and changed.max(0).values.tolist() == [8, 8]
    assert torch.allclose(masked[:, 2:9, 2:9], 0.25 * plain[:, 2:9, 2:9])


# ----------------------------------------------------------------------------- configs and runs


def test_paper_config_is_the_dinov2_recipe_at_518_px():
    cfg = load_config(ROOT / "configs/rad_dino/vit_base_p14_518_radiographs.yaml")
    m, o = cfg.method, cfg.optim
    assert cfg.model.backbone == "vit_base_patch14_dinov2" and cfg.model.img_size == 518
    assert cfg.model.drop_path_rate == 0.3 and m.global_views[0].size // 14 == 37
    assert (m.out_dim, m.hidden_dim, m.bottleneck_dim, m.n_local) == (65536, 2048, 256, 8)
    assert m.global_views[0].scale == (0.32, 1.0) and m.local_view.scale == (0.05, 0.32)
    assert all(v.jitter[2:] == (0.0, 0.0) and v.gray_p == 0 for v in [*m.global_views, m.local_view])
    assert (m.koleo_weight, m.mask_fraction, m.mask_ratio, m.layer_decay, m.patch_embed_lr_mult) == \
        (0.1, 0.5, (0.1, 0.5), 0.9, 0.2)
    assert (m.momentum.start, m.teacher_temp.start, m.teacher_temp.end) == (0.992, 0.04, 0.07)
    assert (o.base_lr, o.lr_scaling, o.lr_reference_batch, o.betas) == (4e-3, "sqrt", 1024, (0.9, 0.999))
    assert (o.weight_decay, o.weight_decay_end, o.clip_grad) == (0.04, 0.4, 3.0)
    assert cfg.data.channels == 3 and m.intensity_minmax and m.normalize == "rad_dino"
    paper = load_config({"method": {"name": "rad_dino"}})  # the dataclass defaults are the same recipe
    assert paper.method == m and paper.optim == o
    tiny_cfg = load_config(ROOT / "configs/rad_dino/vit_tiny_fashion_mnist.yaml")
    assert tiny_cfg.data.kind == "fashion_mnist" and tiny_cfg.method.koleo_weight == 0.1


def test_continued_pretraining_from_a_dinov2_layout_state_dict(tmp_path, monkeypatch, one_thread):
    """A state dict in DINOv2's released layout (timm's names + mask_token, ../shared/official-layouts
    §3) made from the zoo's own ViT-S/14, imported as format dinov2 and named in model.init_from."""
    from ssl_zoo.hub.official import import_official

    def raw(name: str, **model) -> dict:
        return tiny_config("rad_dino", tmp_path / name, train={"max_steps": 1, "batch_size": 4},
                           model={"backbone": "vit_small_patch14_dinov2", "patch_size": 0, "img_size": 28, **model})

    source = build_method(load_config(raw("source"))).backbone()
    official = {**{k: v + 0.01 * torch.randn_like(v) for k, v in source.state_dict().items()},
                "mask_token": torch.zeros(1, source.embed_dim)}
    torch.save(official, tmp_path / "dinov2_vits14_pretrain.pth")
    import_official(tmp_path / "dinov2_vits14_pretrain.pth", "dinov2", "dinov2-s14-tiny", tmp_path / "hub")
    monkeypatch.setenv("SSL_ZOO_HUB", str(tmp_path / "hub"))

    trainer = Trainer(load_config(raw("init", init_from="dinov2-s14-tiny")), progress_bar=False)
    weights = {k: v for k, v in official.items() if k != "mask_token"}
    for vit in (trainer.method.student.backbone.vit, trainer.method.teacher.backbone.vit):
        assert all(torch.equal(vit.state_dict()[k], v) for k, v in weights.items())
    assert not torch.equal(source.pos_embed, weights["pos_embed"])  # not the random init by chance
    initialised = logged_losses(trainer.fit().run_dir)[0]
    by_hand = Trainer(load_config(raw("by_hand")), progress_bar=False)  # (each Trainer reseeds the RNG)
    for vit in (by_hand.method.student.backbone.vit, by_hand.method.teacher.backbone.vit):
        vit.load_state_dict(weights, strict=True)
    assert initialised == logged_losses(by_hand.fit().run_dir)[0]


def test_short_fashion_mnist_grayscale_run_lowers_the_loss(tmp_path, one_thread):
    """The real trainer on Fashion-MNIST as 1-channel images min-max scaled and replicated to 3.
    Sizes cut for speed (14 px patches: 2 x 2 tokens per global crop, 1 per local crop) and the centres
    move slower (0.99), as in DINO's test: with 0.9 the centres flatten the teacher within ~20 steps
    and the loss first climbs towards ln(out_dim) before learning brings it down."""
    raw = tiny_config("rad_dino", tmp_path, data="fashion_mnist",
                      train={"max_steps": 24, "batch_size": 16, "log_every": 1},
                      model={"patch_size": 14}, optim={"base_lr": 4e-2})
    raw["data"]["channels"] = 3
    raw["method"].update(center_momentum=0.99, local_view=dict(raw["method"]["local_view"], size=14))
    losses = fit_losses(raw, 24)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, losses


@pytest.mark.parametrize("side", [4, 16, 37])  # 37: RAD-DINO's 518 px / 14 px patches
def test_block_masks_default_rounds_leave_no_image_growing(side):
    """A fixed round count replaces "while any image grows" (a host sync per round): the default gives the
    same masks as four times as many rounds (the first rounds draw the same numbers), so no image was
    still growing when it stopped."""
    from ssl_zoo.masking import enough_rounds

    for seed in range(3):
        torch.manual_seed(seed)
        default = block_masks(256, side, side)
        torch.manual_seed(seed)
        longer = block_masks(256, side, side, rounds=4 * enough_rounds(side * side, 4))
        assert torch.equal(default, longer), seed
