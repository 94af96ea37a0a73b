"""CroCo against its method sheet (METHODS.md): masking counts, one shared encoder, the cross-view
decoder, masked norm-pix loss, RoPE, pair data (real files and synthetic), configs and a real run."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from ssl_zoo.backbones import adapt_stem, rebuild_backbone, spec_of
from ssl_zoo.backbones.croco import Attention, DecoderBlock, rope_embedding
from ssl_zoo.config import ConfigError, DataConfig
from ssl_zoo.experiment import load_config
from ssl_zoo.data import Batch, DataError, build_dataset
from ssl_zoo.data.pairs import SyntheticPairSpec, synthetic_pair_views
from ssl_zoo.masking import mask_from_indices
from ssl_zoo.methods.base import build_method
from ssl_zoo.schedules import Progress
from tests.conftest import fit_losses, tiny_config


def images(n: int, size: int = 32, seed: int = 0, pair: bool = False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    draw = lambda: torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)  # noqa: E731
    return Batch(draw(), torch.full((n,), -1), torch.arange(n), draw() if pair else None)


def croco_raw(tmp_path, data=None, **method) -> dict:
    raw = tiny_config("croco", tmp_path)  # synthetic pairs
    if data:
        raw["data"] = dict(data)
    raw["method"].update(method)
    if method.get("pos_embed") == "rope":  # timm's smallest RoPE ViT, 7 px patches at 28 px
        raw["model"]["backbone"] = "vit_small_patch16_rope_224"
    return raw


def tiny_croco(tmp_path, **method):
    return build_method(load_config(croco_raw(tmp_path, **method)))


@pytest.fixture(scope="module")
def vit_b_croco():
    """ViT-B/16 at 224 without CLS (one block, to stay fast) with the paper's CroCo config (one decoder block)."""
    from ssl_zoo.methods.croco import CroCo

    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_224", depth=1, num_classes=0, class_token=False, global_pool="avg",
                            fc_norm=False, dynamic_img_size=False)
    return CroCo(CroCo.Config(decoder_depth=1), vit)


# ----------------------------------------------------------------------------- masking and the shared encoder


def test_vit_b16_at_224_masks_176_of_196_and_both_images_go_through_one_encoder(vit_b_croco):
    method = vit_b_croco
    assert method.cfg.mask_ratio == 0.9 and method.num_patches == 196 and method.num_masked == 176
    torch.manual_seed(1)
    views = method.views(images(2, size=256, pair=True))
    first, second = views.crops
    assert first.shape == second.shape == (2, 3, 224, 224)
    keep, masked = views.idx_keep, views.idx_mask
    assert keep.shape == (2, 20) and masked.shape == (2, 176)
    assert mask_from_indices(masked, 196).sum(1).tolist() == [176.0, 176.0]
    for k, m in zip(keep, masked):
        assert sorted(torch.cat([k, m]).tolist()) == list(range(196))

    seen = []
    hook = method.encoder.vit.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        pred = method.reconstruct(first, second, keep)
    hook.remove()
    assert seen == [(2, 20, 768), (2, 196, 768)]  # no CLS: 20 visible of image 1, then all of image 2
    assert sum(isinstance(m, timm.layers.PatchEmbed) for m in method.modules()) == 1  # one encoder, shared
    assert pred.shape == (2, 196, 16 * 16 * 3)
    assert tuple(method.decoder.pos_embed.shape) == (1, 196, 512) and method.decoder.rope is None


def test_v1_positions_are_fixed_2d_sincos_without_a_cls_row(vit_b_croco):
    from lightly.models.utils import get_2d_sincos_pos_embed

    enc = vit_b_croco.encoder.vit.pos_embed
    assert not enc.requires_grad and enc.shape == (1, 196, 768)
    assert np.allclose(enc[0].numpy(), get_2d_sincos_pos_embed(768, 14, cls_token=False), atol=1e-6)
    assert np.allclose(vit_b_croco.decoder.pos_embed[0].numpy(), get_2d_sincos_pos_embed(512, 14, cls_token=False),
                       atol=1e-6)


# ----------------------------------------------------------------------------- decoder


def test_decoder_block_returns_y_unchanged_and_x_depends_on_y():
    torch.manual_seed(2)
    block = DecoderBlock(32, 4)
    x, y = torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    y_before = y.clone()
    out_x, out_y = block(x, y)
    assert out_y is y and torch.equal(out_y, y_before)
    other_x, _ = block(x, torch.randn(2, 9, 32))
    assert not torch.allclose(out_x, other_x)  # cross-attention reads y


# ----------------------------------------------------------------------------- loss


def test_loss_is_the_mask_weighted_norm_pix_mse_and_visible_patches_get_no_gradient(tmp_path):
    method = tiny_croco(tmp_path)
    assert method.num_masked == 14  # int(0.9 * 16): 7 px patches at 28 px
    torch.manual_seed(3)
    views = method.views(images(4))
    keep, masked = views.idx_keep, views.idx_mask
    captured = {}

    def keep_grad(module, args, out):
        out.retain_grad()
        captured["pred"] = out

    hook = method.decoder.register_forward_hook(keep_grad)
    loss = method.training_step(views, Progress(0, 10, 0, 10))["loss"]
    hook.remove()
    loss.backward()
    pred = captured["pred"]
    rows = torch.arange(4)[:, None]
    assert torch.count_nonzero(pred.grad[rows, keep]) == 0
    assert (pred.grad[rows, masked].abs().sum(-1) > 0).all()

    # official CroCo MaskedMSE(norm_pix_loss=True): (per-patch MSE * mask).sum() / mask.sum()
    patches = torch.nn.functional.unfold(views.crops[0], 7, stride=7).transpose(1, 2)  # (B, N, C*p*p)
    patches = patches.unflatten(-1, (3, 49)).transpose(-1, -2).flatten(2)  # (p, p, C) pixel order
    target = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    mask = mask_from_indices(masked, 16)
    official = (((pred.detach() - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert torch.allclose(loss.detach(), official, rtol=1e-4)


# ----------------------------------------------------------------------------- RoPE (v2)


def test_rope_attention_logits_are_invariant_to_translating_all_positions():
    torch.manual_seed(4)
    attn = Attention(64, 4)  # head dim 16
    x, ctx = torch.randn(2, 25, 64), torch.randn(2, 25, 64)
    base = rope_embedding(16, (5, 5)).get_embed()
    moved = rope_embedding(16, (5, 5), offset=3.7).get_embed()

    def logits(rope_x, rope_ctx):
        q, k, _ = attn.project(x, ctx, rope_x, rope_ctx)
        return q @ k.transpose(-1, -2)

    assert not torch.allclose(base, moved)
    assert torch.allclose(logits(base, base), logits(moved, moved), atol=1e-4)
    assert not torch.allclose(logits(base, base), logits(base, moved), atol=1e-2)  # relative positions matter
    assert not torch.allclose(logits(base, base), logits(None, None), atol=1e-2)


def test_v2_encoder_is_timm_rope_vit_base_100_without_cls_and_translation_invariant(tmp_path):
    method = tiny_croco(tmp_path, pos_embed="rope")
    vit = method.backbone()
    assert type(vit).__name__ == "Eva" and vit.cls_token is None and vit.pos_embed is None
    def croco_bands(head_dim):  # CroCo's RoPE2D: base^(-2k / (head_dim / 2)) per axis
        return 1.0 / 100.0 ** (torch.arange(0, head_dim // 2, 2) / (head_dim // 2))

    assert torch.allclose(vit.rope.bands, croco_bands(vit.embed_dim // vit.blocks[0].attn.num_heads))
    assert method.decoder.pos_embed is None
    assert torch.allclose(method.decoder.rope.bands, croco_bands(16))  # decoder 64 wide, 4 heads
    assert torch.allclose(croco_bands(16), torch.tensor([1.0, 100 ** -0.25, 0.1, 100 ** -0.75]))
    assert spec_of(vit).architecture == "vit_small_patch16_rope_224"
    # CroCo has no LayerScale (timm's RoPE ViTs default to one, and create_model ignores init_values=None)
    assert spec_of(vit).stem == "no_layer_scale" and not any("gamma" in k for k in vit.state_dict())

    # the whole encoder: all positions moved by 5 patches -> same tokens
    moved = timm.create_model("vit_small_patch16_rope_224", num_classes=0,
                              **{**spec_of(vit).model_args, "rope_grid_offset": 5.0})
    adapt_stem(moved, "no_layer_scale")
    moved.load_state_dict(vit.state_dict())
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(vit.forward_features(x), moved.forward_features(x), atol=1e-4)


def test_rope_with_a_vit_without_rope_and_bad_values_raise_config_errors(tmp_path):
    raw = croco_raw(tmp_path, pos_embed="rope")
    raw["model"]["backbone"] = "vit_base_patch16_224"
    with pytest.raises(ConfigError, match=r"pos_embed=rope needs a timm RoPE ViT.*vit_base_patch16_224"):
        build_method(load_config(raw))
    with pytest.raises(ConfigError, match=r"method.pos_embed.*'cosine', 'rope'"):
        load_config(croco_raw(tmp_path, pos_embed="sincos"))
    with pytest.raises(ConfigError, match=r"data.kind.*'pairs', 'synthetic_pairs'"):
        build_method(load_config(croco_raw(tmp_path, data={"kind": "synthetic"})))
    with pytest.raises(ConfigError, match=r"data.kind: invalid value 'pair'.*'synthetic_pairs'"):
        load_config(croco_raw(tmp_path, data={"kind": "pair"}))


# ----------------------------------------------------------------------------- pairs on disk


def write_pairs(root, colours):
    lines = ["# first,second", ""]
    for i, (a, b) in enumerate(colours):
        for name, colour in ((f"{i}a.png", a), (f"{i}b.png", b)):
            Image.new("RGB", (40, 36), colour).save(root / name)
        lines.append(f"{i}a.png,{i}b.png" if i % 2 else f"{i}a.png  {i}b.png")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    return root / "pairs.csv"


def test_pairs_file_yields_both_images_of_each_pair(tmp_path):
    pairs = write_pairs(tmp_path, [((255, 0, 0), (0, 0, 255)), ((0, 255, 0), (9, 9, 9)), ((1, 2, 3), (4, 5, 6))])
    ds = build_dataset(DataConfig(kind="pairs", pairs_file=str(pairs), load_size=16), "train")
    assert len(ds) == 3 and build_dataset(DataConfig(kind="pairs", pairs_file=str(pairs)), "test") is None
    batch = ds.__getitems__([0, 1])
    assert batch.images.shape == batch.pair_images.shape == (2, 3, 16, 16) and batch.images.dtype == torch.uint8
    assert batch.images[:, :, 5, 5].tolist() == [[255, 0, 0], [0, 255, 0]]
    assert batch.pair_images[:, :, 5, 5].tolist() == [[0, 0, 255], [9, 9, 9]]
    assert batch.labels.tolist() == [-1, -1]
    moved = batch.to(torch.device("cpu"))
    assert torch.equal(moved.pair_images, batch.pair_images)


def test_missing_and_corrupt_pair_files_name_the_file(tmp_path):
    pairs = write_pairs(tmp_path, [((255, 0, 0), (0, 0, 255)), ((0, 255, 0), (9, 9, 9)), ((1, 2, 3), (4, 5, 6))])
    (tmp_path / "0b.png").unlink()
    (tmp_path / "1a.png").write_bytes(b"not a png")
    strict = build_dataset(DataConfig(kind="pairs", pairs_file=str(pairs), load_size=16, on_bad_image="error"))
    with pytest.raises(DataError, match=r"unreadable image .*0b\.png"):
        strict.__getitems__([0])
    with pytest.raises(DataError, match=r"unreadable image .*1a\.png"):
        strict.__getitems__([1])
    lenient = build_dataset(DataConfig(kind="pairs", pairs_file=str(pairs), load_size=16))
    with pytest.warns(UserWarning) as warned:
        batch = lenient.__getitems__([0])
    assert ["0b.png" in str(w.message) for w in warned] == [True, False]  # one warning per file, naming it
    assert "1a.png" in str(warned[1].message)
    assert batch.indices.tolist() == [2] and batch.images[0, :, 0, 0].tolist() == [1, 2, 3]  # next readable pair
    assert any(p.endswith("1a.png") for p in lenient.bad_images) and len(lenient.bad_images) == 2
    (tmp_path / "bad.csv").write_text("0a.png,0b.png\nonly_one.png\n")
    with pytest.raises(DataError, match=r"bad\.csv:2: expected two image paths"):
        build_dataset(DataConfig(kind="pairs", pairs_file=str(tmp_path / "bad.csv")))
    with pytest.raises(DataError, match=r"data.pairs_file not found: .*nowhere\.csv"):
        build_dataset(DataConfig(kind="pairs", pairs_file=str(tmp_path / "nowhere.csv")))


def test_real_pairs_get_independent_random_crops_without_resizing(tmp_path):
    method = tiny_croco(tmp_path, jitter=[0.0, 0.0, 0.0, 0.0], normalize="none")
    torch.manual_seed(5)
    batch = images(6, size=32, pair=True)
    views = method.views(batch)
    for crop, box, source in zip(views.crops, views.boxes, (batch.images, batch.pair_images)):
        for i in range(6):
            x1, y1 = (box[i, :2] * 32).round().int().tolist()
            assert (box[i, 2:] - box[i, :2]).mul(32).tolist() == [28.0, 28.0]
            assert torch.allclose(crop[i] * 255, source[i, :, y1:y1 + 28, x1:x1 + 28].float(), atol=1e-2)
    assert not torch.equal(views.boxes[0], views.boxes[1])


def test_colour_jitter_is_asymmetric_with_factors_in_0_6_to_1_4(tmp_path):
    method = tiny_croco(tmp_path, normalize="none")
    gray = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    torch.manual_seed(6)
    first, second = method.views(Batch(gray, torch.full((64,), -1), torch.arange(64), gray.clone())).crops
    m1, m2 = first.mean((1, 2, 3)), second.mean((1, 2, 3))  # flat gray: only brightness changes the mean
    assert m1.min() >= 0.6 * 128 / 255 - 1e-4 and m1.max() <= 1.4 * 128 / 255 + 1e-4
    assert m1.max() - m1.min() > 0.3 * 128 / 255
    assert not torch.allclose(m1, m2)


# ----------------------------------------------------------------------------- synthetic pairs


def test_synthetic_pairs_cut_two_overlapping_views_the_second_through_a_homography():
    height = width = 40
    yy, xx = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    coords = torch.stack([xx, yy, torch.zeros_like(xx)])[None].repeat(8, 1, 1, 1)  # pixel value = position
    torch.manual_seed(7)
    spec = SyntheticPairSpec(side=(0.5, 0.8), shift=0.3, distortion=0.1)
    first, second, quads = synthetic_pair_views(coords, 24, spec)
    assert first.shape == second.shape == (8, 3, 24, 24) and quads.shape == (2, 8, 4, 2)
    for view, quad in zip((first, second), quads):  # the view's corners sample the quad's corners
        corners = torch.stack([view[:, :2, 0, 0], view[:, :2, 0, -1], view[:, :2, -1, -1], view[:, :2, -1, 0]], 1)
        assert torch.allclose(corners, quad, atol=1e-3)
    side = quads[0, :, 1, 0] - quads[0, :, 0, 0]
    assert ((side >= 0.5 * 39 - 1e-4) & (side <= 0.8 * 39 + 1e-4)).all()
    assert (quads >= 0).all() and (quads <= 39).all()
    offset = (quads[1].mean(1) - quads[0].mean(1)).abs()  # centre shift <= shift + distortion (x side)
    assert (offset <= (spec.shift + spec.distortion) * side[:, None] + 1e-4).all()
    assert not torch.allclose(quads[0], quads[1])
    edges = quads[1][:, [1, 2, 3, 0]] - quads[1]  # a homography: the second quad is not a translated square
    assert not torch.allclose(edges[:, 0, 1], torch.zeros(8))

    same = SyntheticPairSpec(side=(1.0, 1.0), shift=0.0, distortion=0.0)
    a, b, _ = synthetic_pair_views(coords, 40, same)
    assert torch.allclose(a, coords, atol=1e-4) and torch.allclose(b, coords, atol=1e-4)


def test_synthetic_pairs_dataset_is_the_source_dataset_with_its_labels(tmp_path):
    cfg = DataConfig(kind="synthetic_pairs", pairs_source="synthetic", synthetic_size=64, load_size=16)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert len(train) == 64 and test is not None and (train.labels >= 0).all()
    assert train.__getitems__([0]).pair_images is None  # the method cuts the pair on the device


# ----------------------------------------------------------------------------- export, images, configs, a real run


def test_exported_v1_backbone_is_a_plain_timm_vit_without_cls(tmp_path):
    method = tiny_croco(tmp_path)
    vit = method.backbone().eval()
    twin = rebuild_backbone(spec_of(vit)).eval()
    twin.load_state_dict(vit.state_dict())
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(twin(x), vit(x), atol=1e-5)
        assert torch.allclose(vit(x), method.encoder(x).mean(1), atol=1e-5)  # mean of the final-normed tokens
    assert vit.cls_token is None and vit(x).shape == (2, 192)
    assert method.embed(images(2).images).shape == (2, 192)  # k-NN: load size 32 centre-cropped to 28


def test_log_images_shows_masked_input_second_view_reconstruction_and_first_view(tmp_path):
    method = tiny_croco(tmp_path)
    torch.manual_seed(8)
    grid = method.log_images(method.views(images(8)))["croco/masked_second_reconstruction_first"]
    assert grid.shape == (3, 4 * 28 + 5 * 2, 8 * 28 + 9 * 2)
    assert grid.min() >= 0 and grid.max() <= 1
    row = lambda r: grid[:, 2 + r * 30: 2 + r * 30 + 28, :]  # noqa: E731
    assert not torch.allclose(row(0), row(3)) and not torch.allclose(row(1), row(3))


@pytest.mark.parametrize("name", ["vit_base_imagenet", "vit_base_rope_imagenet", "vit_tiny_fashion_mnist"])
def test_configs_load_with_the_paper_values(name):
    from tests.conftest import ROOT

    cfg = load_config(ROOT / "configs" / "croco" / f"{name}.yaml")
    assert cfg.method.mask_ratio == 0.9 and cfg.method.norm_pix_loss and cfg.method.jitter == (0.4, 0.4, 0.4, 0.0)
    assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.weight_decay == 0.05 and cfg.optim.name == "adamw"
    if name.startswith("vit_base"):
        assert cfg.optim.base_lr == 1.5e-4 and cfg.optim.warmup_epochs == 40 and cfg.train.epochs == 400
        assert cfg.data.kind == "pairs" and cfg.method.crop_size == 224 and cfg.data.load_size == 256
        dec = (768, 12, 12) if "rope" in name else (512, 8, 16)
        assert (cfg.method.decoder_dim, cfg.method.decoder_depth, cfg.method.decoder_heads) == dec
        assert cfg.method.pos_embed == ("rope" if "rope" in name else "cosine")
    else:
        assert cfg.data.kind == "synthetic_pairs" and cfg.data.pairs_source == "fashion_mnist"


def test_short_fashion_mnist_run_on_synthetic_pairs_lowers_the_loss(tmp_path):
    """A real training run (trainer, AdamW, schedules) on Fashion-MNIST synthetic pairs: the loss goes down."""
    raw = croco_raw(tmp_path, data={"kind": "synthetic_pairs", "pairs_source": "fashion_mnist", "limit": 2048,
                                    "load_size": 32})
    raw["train"].update(max_steps=20, batch_size=32)
    losses = fit_losses(raw, 20)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, losses
