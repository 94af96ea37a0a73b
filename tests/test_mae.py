"""MAE against its method sheet (METHODS.md): masking, encoder input, masked norm-pix loss, sin-cos."""

import numpy as np
import pytest
import timm
import torch
from lightly.models.utils import patchify

from ssl_zoo.config import OptimConfig
from ssl_zoo.experiment import load_config
from ssl_zoo.masking import mask_from_indices
from ssl_zoo.methods.base import build_method
from ssl_zoo.schedules import Progress
from tests.conftest import fit_losses, random_images, tiny_config, tiny_method


images = random_images


def tiny_mae(tmp_path, **method):
    return tiny_method("mae", tmp_path, **method)


def official_sincos_2d(embed_dim: int, grid_size: int) -> np.ndarray:
    """facebookresearch/mae util/pos_embed.py, with the zero CLS row."""
    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32)))
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)


@pytest.fixture(scope="module")
def vit_b_mae():
    """ViT-B/16 at 224 (one block, to stay fast) with the paper's MAE config (one decoder block)."""
    from ssl_zoo.methods.mae import MAE

    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_224", depth=1, num_classes=0, dynamic_img_size=False)
    return MAE(MAE.Config(decoder_depth=1), vit)


# ----------------------------------------------------------------------------- masking and encoder input


def test_vit_b16_at_224_encoder_sees_49_patches_plus_cls_and_147_are_masked(vit_b_mae):
    method = vit_b_mae
    assert method.cfg.mask_ratio == 0.75 and method.num_patches == 196 and method.patch_size == 16
    torch.manual_seed(1)
    views = method.views(images(2, size=224))
    keep, masked = views.idx_keep, views.idx_mask
    assert keep.shape == (2, 49) and masked.shape == (2, 147)
    mask = mask_from_indices(masked, 196)
    assert mask.sum(1).tolist() == [147.0, 147.0]
    for k, m in zip(keep, masked):  # disjoint, and together every patch
        assert sorted(torch.cat([k, m]).tolist()) == list(range(196))
    assert not torch.equal(keep[0].sort().values, keep[1].sort().values)  # per-sample masks

    seen = []
    hook = method.encoder.vit.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        pred = method.reconstruct(views.crops[0], keep)
    hook.remove()
    assert seen == [(2, 50, 768)]  # CLS + 49 visible tokens
    assert pred.shape == (2, 196, 16 * 16 * 3)


def test_masking_is_argsort_of_noise_keeping_int_n_times_one_minus_r():
    from ssl_zoo.masking import random_patch_mask

    torch.manual_seed(2)
    keep, masked = random_patch_mask(3, 49, 0.75, torch.device("cpu"))
    assert keep.shape == (3, int(49 * 0.25)) and masked.shape == (3, 49 - 12)
    torch.manual_seed(2)
    order = torch.argsort(torch.rand(3, 49), dim=1)
    assert torch.equal(keep, order[:, :12]) and torch.equal(masked, order[:, 12:])


# ----------------------------------------------------------------------------- loss


def test_loss_gradient_is_zero_at_visible_patches_and_nonzero_at_masked_ones(tmp_path):
    method = tiny_mae(tmp_path)
    torch.manual_seed(3)
    views = method.views(images(4))
    x, keep, masked = views.crops[0], views.idx_keep, views.idx_mask
    pred = method.reconstruct(x, keep).detach().requires_grad_()
    loss = method.masked_loss(pred, method.targets(x), masked)
    loss.backward()
    rows = torch.arange(4)[:, None]
    assert torch.count_nonzero(pred.grad[rows, keep]) == 0
    assert (pred.grad[rows, masked].abs().sum(-1) > 0).all()


def test_masked_loss_on_a_hand_computed_example(tmp_path):
    method = tiny_mae(tmp_path)
    pred = torch.zeros(1, 4, 2)
    target = torch.tensor([[[0.0, 0.0], [1.0, 3.0], [5.0, 5.0], [2.0, 0.0]]])
    # masked patches 1 and 3: per-patch MSE (1 + 9) / 2 = 5 and (4 + 0) / 2 = 2 -> mean 3.5;
    # the large error at visible patch 2 does not count
    loss = method.masked_loss(pred, target, torch.tensor([[1, 3]]))
    assert loss.item() == pytest.approx(3.5)
    # two images with different masks: all masked patches weigh the same
    pred2 = torch.zeros(2, 4, 2)
    target2 = torch.cat([target, torch.tensor([[[2.0, 2.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])])
    loss2 = method.masked_loss(pred2, target2, torch.tensor([[1, 3], [0, 2]]))
    assert loss2.item() == pytest.approx((5 + 2 + 4 + 0) / 4)


def test_loss_equals_the_official_mask_weighted_formula(tmp_path):
    """Official MAE: loss = (per-patch MSE * mask).sum() / mask.sum(), on norm-pix targets."""
    method = tiny_mae(tmp_path)
    torch.manual_seed(4)
    views = method.views(images(4))
    x, keep, masked = views.crops[0], views.idx_keep, views.idx_mask
    torch.manual_seed(5)
    loss = method.training_step(views, Progress(0, 10, 0, 10))["loss"]
    with torch.no_grad():
        pred = method.reconstruct(x, keep)
        target = method.targets(x)
    mask = mask_from_indices(masked, method.num_patches)
    official = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert torch.allclose(loss.detach(), official, rtol=1e-5)


def test_norm_pix_targets_have_zero_mean_and_unit_variance_per_patch(tmp_path):
    method = tiny_mae(tmp_path)
    assert method.cfg.norm_pix_loss
    torch.manual_seed(6)
    x = torch.randn(2, 3, 28, 28) * 3 + 1
    target = method.targets(x)
    assert target.shape == (2, 49, 4 * 4 * 3)
    assert torch.allclose(target.mean(-1), torch.zeros(2, 49), atol=1e-5)
    assert torch.allclose(target.var(-1), torch.ones(2, 49), atol=1e-4)
    raw = patchify(x, 4)  # official: (p - mean) / sqrt(var + 1e-6)
    expected = (raw - raw.mean(-1, keepdim=True)) / (raw.var(-1, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(target, expected, atol=1e-6)
    plain = tiny_mae(tmp_path, norm_pix_loss=False)
    assert torch.equal(plain.targets(x), raw)


def test_target_patch_k_is_the_image_region_of_token_k(tmp_path):
    """patchify's patch order matches the ViT's token order, so prediction k is scored against patch k."""
    method = tiny_mae(tmp_path)
    k = 9  # row 1, column 2 of the 7 x 7 grid of 4-px patches
    x = torch.zeros(1, 3, 28, 28)
    x[:, :, 4:8, 8:12] = torch.rand(1, 3, 4, 4) + 0.5
    patches = patchify(x, 4)  # the raw pixels the (norm-pix) targets are computed from
    assert torch.nonzero(patches.abs().sum(-1)[0]).flatten().tolist() == [k]
    with torch.no_grad():
        tokens = method.encoder.images_to_tokens(x) - method.encoder.images_to_tokens(torch.zeros_like(x))
    assert torch.nonzero(tokens.abs().sum(-1)[0] > 1e-6).flatten().tolist() == [k]


# ----------------------------------------------------------------------------- position embeddings


def test_position_embeddings_are_fixed_2d_sincos_with_a_zero_cls_row(vit_b_mae, tmp_path):
    method = vit_b_mae
    enc = method.encoder.vit.pos_embed
    assert not enc.requires_grad and enc.shape == (1, 197, 768)
    assert torch.count_nonzero(enc[0, 0]) == 0
    assert np.allclose(enc[0].numpy(), official_sincos_2d(768, 14), atol=1e-5)
    dec = method.decoder.pos_embed
    assert not dec.requires_grad and dec.shape == (1, 197, 512)
    assert np.allclose(dec[0].numpy(), official_sincos_2d(512, 14), atol=1e-5)

    tiny = tiny_mae(tmp_path)  # and the optimiser never gets them
    fixed = {id(tiny.encoder.vit.pos_embed), id(tiny.decoder.pos_embed)}
    params = {id(p) for g in tiny.param_groups(load_config(tiny_config("mae", tmp_path)).optim) for p in g["params"]}
    assert not fixed & params
    assert np.allclose(tiny.encoder.vit.pos_embed[0].numpy(), official_sincos_2d(192, 7), atol=1e-5)


def test_unused_mask_token_is_frozen_and_kept_in_the_state_dict(tmp_path):
    """MAE drops masked patches, so the wrapper's mask token never gets a gradient; trainable, it stops
    DDP (tests/test_method_matrix.py). Frozen and out of the optimiser, it keeps its state-dict key:
    checkpoints written while it was trainable still load strictly."""
    method = tiny_mae(tmp_path)
    token = method.encoder.mask_token
    assert not token.requires_grad and "encoder.mask_token" in method.state_dict()
    assert all(p is not token for group in method.param_groups(OptimConfig()) for p in group["params"])


def test_embed_accepts_load_size_images_larger_or_smaller_than_the_view(tmp_path):
    """k-NN feeds images at data.load_size (256 for the ImageNet config) to a ViT fixed at view.size."""
    raw = tiny_config("mae", tmp_path)
    raw["data"]["load_size"] = 36
    method = build_method(load_config(raw)).eval()
    big = images(2, size=36).images
    feats = method.embed(big)
    assert feats.shape == (2, 192)
    assert torch.allclose(feats, method.embed(big[..., 4:32, 4:32]), atol=1e-5)  # centre crop
    assert method.embed(images(2, size=20).images).shape == (2, 192)


# ----------------------------------------------------------------------------- images and a real run


def test_log_images_returns_input_masked_and_reconstruction_rows(tmp_path):
    method = tiny_mae(tmp_path)
    torch.manual_seed(7)
    views = method.views(images(8))
    grids = method.log_images(views)
    grid = grids["mae/input_masked_reconstruction"]
    # make_grid, 8 per row, padding 2: 3 rows (input, masked, reconstruction) of 28 px tiles
    assert grid.shape == (3, 3 * 28 + 4 * 2, 8 * 28 + 9 * 2)
    assert grid.min() >= 0 and grid.max() <= 1
    row = lambda r: grid[:, 2 + r * 30: 2 + r * 30 + 28, :]  # noqa: E731
    assert not torch.allclose(row(0), row(1)) and not torch.allclose(row(0), row(2))


def test_short_fashion_mnist_run_lowers_the_loss(tmp_path):
    """A real training run (trainer, AdamW, schedules) on Fashion-MNIST: the loss goes down."""
    raw = tiny_config("mae", tmp_path, data="fashion_mnist", train={"max_steps": 20, "batch_size": 32})
    losses = fit_losses(raw, 20)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, losses
