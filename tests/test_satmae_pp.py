"""SatMAE++ against its method sheet (METHODS.md) and the official layout; multispectral data."""

import numpy as np
import pytest
import torch

from ssl_zoo.augment import ViewAugment, ViewSpec
from ssl_zoo.backbones import rebuild_backbone, spec_of
from ssl_zoo.backbones.satmae import GroupChannelDecoder, GroupChannelViT, MultiScaleHead
from ssl_zoo.config import ConfigError, DataConfig
from ssl_zoo.experiment import load_config
from ssl_zoo.data import Batch, DataError, build_dataset
from ssl_zoo.methods.base import build_method
from ssl_zoo.methods.satmae_pp import SatMAEPP, SatMAEPPRGB, group_masked_mse
from ssl_zoo.schedules import Progress
from tests.conftest import fit_losses, tiny_config

MS_DATA = {"kind": "synthetic_multispectral", "channels": 5, "load_size": 48, "synthetic_size": 256}


def ms_config(tmp_path, **method):
    raw = tiny_config("satmae_pp", tmp_path)
    raw["data"] = dict(MS_DATA)
    raw["method"].update({"groups": [[0, 1, 2], [3, 4]], **method})
    return raw


def uint8_images(n: int, channels: int, size: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g),
                 torch.zeros(n, dtype=torch.long), torch.arange(n))


@pytest.fixture(scope="module")
def sentinel_96():
    """The paper's geometry (10 bands in the official 3 groups, 96 px input, p = 8, 384 crop), narrow and
    one block deep: token counts do not depend on width."""
    torch.manual_seed(0)
    vit = GroupChannelViT(img_size=96, patch_size=8, in_chans=10, embed_dim=64, depth=1, num_heads=4,
                          group_embed_dim=32)
    cfg = SatMAEPP.Config(decoder_dim=32, decoder_depth=1, decoder_heads=4, decoder_group_embed_dim=16)
    return SatMAEPP(cfg, vit)


# ----------------------------------------------------------------------------- tokens and masking


def test_3_groups_x_144_tokens_mask_keeps_108_of_432_and_the_encoder_sees_109(sentinel_96):
    method = sentinel_96
    assert method.encoder.groups == [[0, 1, 2, 6], [3, 4, 5, 7], [8, 9]] and method.num_tokens == 3 * 144
    torch.manual_seed(1)
    views = method.views(uint8_images(2, 10, 120))
    assert [tuple(c.shape[-2:]) for c in views.crops] == [(96, 96), (192, 192), (384, 384)]
    keep, masked = views.idx_keep, views.idx_mask
    assert keep.shape == (2, 108) and masked.shape == (2, 324)
    for k, m in zip(keep, masked):
        assert sorted(torch.cat([k, m]).tolist()) == list(range(432))
    per_group = [[int(((k >= 144 * g) & (k < 144 * (g + 1))).sum()) for g in range(3)] for k in keep]
    assert per_group[0] != [36, 36, 36] or per_group[1] != [36, 36, 36]  # independent: counts vary by group
    seen = []
    hook = method.encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        pred = method.reconstruct(views.crops[0], keep)
    hook.remove()
    assert seen == [(2, 109, 64)]
    assert pred.shape == (2, 10, 144, 64)  # every band, location and pixel predicted


def test_consistent_masking_hides_the_same_locations_in_every_group(sentinel_96):
    method = sentinel_96
    method.cfg.mask_mode = "consistent"
    try:
        torch.manual_seed(2)
        keep, masked = method.mask(3, torch.device("cpu"))
    finally:
        method.cfg.mask_mode = "independent"
    assert keep.shape == (3, 108) and masked.shape == (3, 324)
    for k in keep:
        locations = [set((k[(k >= 144 * g) & (k < 144 * (g + 1))] - 144 * g).tolist()) for g in range(3)]
        assert len(locations[0]) == 36 and locations[0] == locations[1] == locations[2]


# ----------------------------------------------------------------------------- encodings and layout


def official_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", positions.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def test_group_embedding_is_concatenated_1d_sincos_and_group_0_is_zeros_then_ones():
    vit = GroupChannelViT(embed_dim=320, depth=1, num_heads=4, in_chans=10)  # paper group width 256
    group = vit.channel_embed[0]
    assert group.shape == (3, 256) and not vit.channel_embed.requires_grad
    assert torch.equal(group[0], torch.cat([torch.zeros(128), torch.ones(128)]))
    assert np.allclose(group.numpy(), official_1d(256, np.arange(3)), atol=1e-6)
    assert vit.pos_embed.shape == (1, 145, 64) and torch.count_nonzero(vit.pos_embed[0, 0]) == 0
    with torch.no_grad():  # token g*144 + l = patch embedding + [pos(l) | group(g)]
        images = torch.zeros(1, 10, 96, 96)
        patches = torch.cat([pe(images[:, g]) for pe, g in zip(vit.patch_embed, vit.groups)], 1)
        codes = vit.tokens(images)[0] - patches[0]
    assert torch.allclose(codes[144 + 5], torch.cat([vit.pos_embed[0, 6], group[1]]), atol=1e-6)
    assert torch.allclose(codes[2 * 144 + 143], torch.cat([vit.pos_embed[0, 144], group[2]]), atol=1e-6)


def test_encoder_parameters_have_the_official_names_and_shapes():
    vit = GroupChannelViT(depth=1, in_chans=10)  # ViT-L width, one block
    shapes = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    assert shapes["cls_token"] == (1, 1, 1024) and shapes["pos_embed"] == (1, 145, 768)
    assert shapes["channel_embed"] == (1, 3, 256)
    assert [shapes[f"patch_embed.{g}.proj.weight"] for g in range(3)] == [(1024, 4, 8, 8), (1024, 4, 8, 8),
                                                                          (1024, 2, 8, 8)]
    assert shapes["blocks.0.attn.qkv.weight"] == (3072, 1024) and shapes["blocks.0.mlp.fc1.weight"] == (4096, 1024)
    assert shapes["norm.weight"] == (1024,) and vit.num_features == 1024


def test_multi_scale_head_gives_192_and_384_from_96_with_official_names():
    head = MultiScaleHead(10, blocks=2)
    with torch.no_grad():
        x2, x4 = head(torch.randn(1, 10, 96, 96))
    assert x2.shape == (1, 10, 192, 192) and x4.shape == (1, 10, 384, 384)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes["proj_up_conv.weight"] == (40, 10, 1, 1) and shapes["up_block1.up_conv.weight"] == (40, 40, 4, 4)
    assert shapes["up_block2.res_block.conv2.weight"] == (40, 40, 3, 3)
    assert shapes["up_block2.proj_out.weight"] == (10, 40, 3, 3) and "up_block2.res_norm.bias" in shapes
    assert "up_block.up_conv.weight" in MultiScaleHead(3, blocks=1).state_dict()  # the RGB variant's name


def test_decoder_sends_each_group_prediction_to_its_own_bands():
    dec = GroupChannelDecoder([[0, 2], [1]], grid=2, enc_dim=8, dim=16, depth=1, heads=2, group_embed_dim=4,
                              patch_size=1)
    with torch.no_grad():
        for head in dec.pred:
            head.weight.zero_()
        dec.pred[0].bias.copy_(torch.tensor([10.0, 20.0]))  # group 0 = bands (0, 2)
        dec.pred[1].bias.copy_(torch.tensor([30.0]))  # group 1 = band 1
        out = dec(torch.randn(1, 1 + 3, 8), torch.tensor([[0, 5, 7]]))
    assert out.shape == (1, 3, 4, 1)
    assert out[0, :, :, 0].tolist() == [[10.0] * 4, [30.0] * 4, [20.0] * 4]


# ----------------------------------------------------------------------------- loss


def test_masked_mse_is_averaged_over_group_bands_then_masked_tokens():
    groups = [[0, 2], [1]]
    pred = torch.zeros(1, 3, 2, 2, requires_grad=True)  # 3 bands, 2 locations, p^2 = 2
    target = torch.tensor([[[[1.0, 3.0], [2.0, 2.0]],      # band 0
                            [[4.0, 0.0], [9.0, 9.0]],      # band 1
                            [[0.0, 0.0], [6.0, 0.0]]]])    # band 2
    # tokens (group-major): g0l0, g0l1, g1l0, g1l1. Masked: g0l1 and g1l0.
    # g0l1 = mean(band 0 loc 1: (4+4)/2 = 4, band 2 loc 1: 36/2 = 18) = 11; g1l0 = band 1 loc 0: 16/2 = 8
    loss = group_masked_mse(pred, target, lambda err: [err[:, g] for g in groups], torch.tensor([[1, 2]]))
    assert loss.item() == pytest.approx((11 + 8) / 2)
    loss.backward()
    visible = pred.grad[0, [0, 2], 0].abs().sum() + pred.grad[0, 1, 1].abs().sum()  # g0l0 and g1l1
    assert visible == 0 and pred.grad[0, 1, 0].abs().sum() > 0 and pred.grad[0, 2, 1].abs().sum() > 0


def test_total_loss_is_0_6_mse_plus_0_4_mean_of_the_two_l1s(tmp_path):
    method = build_method(load_config(ms_config(tmp_path)))
    torch.manual_seed(3)
    views = method.views(build_dataset(load_config(ms_config(tmp_path)).data).__getitems__(list(range(4))))
    out = method.training_step(views, Progress(0, 10, 0, 10))
    with torch.no_grad():
        pred = method.reconstruct(views.crops[0], views.idx_keep)
        x2, x4 = method.head(method.as_image(pred))
        l1 = 0.5 * (x2 - views.crops[1]).abs().mean() + 0.5 * (x4 - views.crops[2]).abs().mean()
        mse = group_masked_mse(pred, method.targets(views.crops[0]), method.encoder.split_groups, views.idx_mask)
    assert torch.allclose(out["loss"].detach(), 0.6 * mse + 0.4 * l1, rtol=1e-5)


def test_short_synthetic_multispectral_run_lowers_the_loss(tmp_path, one_thread):
    raw = ms_config(tmp_path)
    raw["train"].update(max_steps=24, batch_size=32)
    losses = fit_losses(raw, 24)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, losses


# ----------------------------------------------------------------------------- variants, eval, images


def test_rgb_variant_is_mae_plus_one_upsample_block(tmp_path):
    raw = tiny_config("satmae_pp", tmp_path)
    raw["method"].update(variant="rgb", normalize="fmow_rgb", view={"size": 56, "jitter_p": 0.0, "gray_p": 0.0})
    raw["model"] = {"backbone": "vit_tiny_patch16_224", "patch_size": 4}
    method = build_method(load_config(raw))
    assert type(method) is SatMAEPPRGB and type(build_method(load_config(tiny_config("satmae_pp", tmp_path)))) is SatMAEPP
    torch.manual_seed(4)
    views = method.views(uint8_images(4, 3, 28))
    assert [tuple(c.shape[-2:]) for c in views.crops] == [(28, 28), (56, 56)]
    assert views.idx_keep.shape == (4, 12)  # int(49 * 0.25) of 7 x 7
    assert type(method.backbone()).__name__ == "VisionTransformer" and method.head.names == ["up_block"]
    out = method.training_step(views, Progress(0, 10, 0, 10))
    assert torch.isfinite(out["loss"]) and set(out) == {"loss", "mse", "l1", "embeddings"}
    assert set(method.log_images(views)) == {"satmae_pp/input_masked_reconstruction", "satmae_pp/x2_target_prediction"}


def test_log_images_previews_three_bands(tmp_path):
    method = build_method(load_config(ms_config(tmp_path)))
    torch.manual_seed(5)
    views = method.views(uint8_images(8, 5, 48))
    grids = method.log_images(views)
    assert grids["satmae_pp/input_masked_reconstruction"].shape == (3, 3 * 12 + 4 * 2, 8 * 12 + 9 * 2)
    assert grids["satmae_pp/x2_target_prediction"].shape == (3, 2 * 24 + 3 * 2, 8 * 24 + 9 * 2)
    assert grids["satmae_pp/x4_target_prediction"].shape == (3, 2 * 48 + 3 * 2, 8 * 48 + 9 * 2)
    grid = grids["satmae_pp/input_masked_reconstruction"]
    assert grid.min() >= 0 and grid.max() <= 1
    assert not torch.allclose(grid[:, 2:14], grid[:, 16:28])  # masked row differs from the input row


def test_embed_resizes_load_size_images_and_the_hub_rebuilds_the_encoder(tmp_path):
    method = build_method(load_config(ms_config(tmp_path))).eval()
    images = uint8_images(2, 5, 48).images
    assert method.embed(images).shape == (2, 192)
    backbone = method.backbone()
    twin = rebuild_backbone(spec_of(backbone)).eval()
    twin.load_state_dict(backbone.state_dict(), strict=True)
    x = torch.rand(2, 5, 12, 12)
    with torch.no_grad():
        assert torch.allclose(twin(x), backbone(x), atol=1e-6)


# ----------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("method, data, match", [
    ({"groups": [[0, 1], [2, 3]]}, {}, r"missing \[4\]"),
    ({"groups": [[0, 1, 2], [3, 4, 5]]}, {}, r"\[0, 5\)"),
    ({"groups": [[0, 1, 2], [2, 3, 4]]}, {}, r"repeated \[2\]"),
    ({"view": {"size": 40}}, {}, "multiple of 4"),
    ({"view": {"size": 48, "jitter_p": 0.8}}, {}, "jitter_p"),
    ({"mask_mode": "blocks"}, {}, "'independent', 'consistent'"),
    ({"preview_bands": [2, 1, 7]}, {}, "preview_bands"),
    ({}, {"bands": [0, 1, 2]}, "data.channels=5"),
    ({}, {"band_mean": [1.0, 2.0]}, "one per kept band"),
])
def test_bad_config_values_raise_config_errors_naming_them(tmp_path, method, data, match):
    raw = ms_config(tmp_path, **method)
    raw["data"].update(data)
    with pytest.raises(ConfigError, match=match):
        build_method(load_config(raw))


def test_view_augment_crops_any_band_count_but_refuses_colour_ops_on_them():
    images = uint8_images(3, 7, 20).images
    view, boxes, flips = ViewAugment(ViewSpec(size=16, jitter_p=0.0, gray_p=0.0))(images)
    assert view.shape == (3, 7, 16, 16) and boxes.shape == (3, 4)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        ViewAugment(ViewSpec(size=16))(images)


# ----------------------------------------------------------------------------- multispectral files


def write_folder(root, arrays: dict) -> None:
    for name, arr in arrays.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".npz"):
            np.savez(path, image=arr)
        else:
            np.save(path, arr)


def test_npy_and_npz_files_are_band_selected_scaled_to_uint8_and_labelled(tmp_path):
    value = np.arange(4, dtype=np.float32)[:, None, None] * 100 + np.zeros((4, 8, 8), np.float32)  # band b = 100 b
    write_folder(tmp_path, {"a/0.npy": value, "a/1.npz": value, "b/2.npy": value * 2})
    cfg = DataConfig(kind="multispectral", path=str(tmp_path), load_size=8, channels=2, bands=[3, 1],
                     band_mean=[300.0, 100.0], band_std=[50.0, 100.0])
    ds = build_dataset(cfg)
    batch = ds.__getitems__([0, 1, 2])
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (3, 2, 8, 8)
    assert batch.labels.tolist() == [0, 0, 1]
    # (x - (mean - 2 std)) / (4 std) * 255: band 3 = 300 -> 127.5 -> 127; band 1 = 100 -> 127; doubled:
    # band 3 = 600 -> (600 - 200) / 200 * 255 clipped 255; band 1 = 200 -> (200 + 100) / 400 * 255 = 191.25
    assert batch.images[0, :, 0, 0].tolist() == [127, 127] and batch.images[1].equal(batch.images[0])
    assert batch.images[2, :, 0, 0].tolist() == [255, 191]


def test_band_statistics_are_estimated_when_not_given(tmp_path):
    g = np.random.default_rng(0)
    write_folder(tmp_path, {f"{i}.npy": g.normal(1000, 200, (3, 16, 16)).astype(np.float32) for i in range(4)})
    with pytest.warns(UserWarning, match="band_mean"):
        ds = build_dataset(DataConfig(kind="multispectral", path=str(tmp_path), load_size=16, channels=3))
    assert torch.allclose(ds.mean, torch.full((3,), 1000.0), rtol=0.02)
    assert torch.allclose(ds.std, torch.full((3,), 200.0), rtol=0.05)
    assert ds.__getitems__([0]).images.float().mean().item() == pytest.approx(127.5, abs=3)


def test_bad_files_raise_a_data_error_naming_them_or_are_skipped(tmp_path):
    good = np.ones((4, 8, 8), np.float32)
    write_folder(tmp_path, {"0_good.npy": good, "1_three_bands.npy": good[:3]})
    (tmp_path / "2_corrupt.npz").write_bytes(b"not a zip")
    base = dict(kind="multispectral", path=str(tmp_path), load_size=8, channels=4, band_mean=[1.0] * 4,
                band_std=[1.0] * 4)
    strict = build_dataset(DataConfig(**base, on_bad_image="error"))
    with pytest.raises(DataError, match="1_three_bands.npy.*3 bands"):
        strict.__getitems__([1])
    with pytest.raises(DataError, match="2_corrupt.npz"):
        strict.__getitems__([2])
    lenient = build_dataset(DataConfig(**base, on_bad_image="skip"))
    with pytest.warns(UserWarning, match="skipping"):
        batch = lenient.__getitems__([1, 2])
    assert batch.indices.tolist() == [0, 0]
    selecting = build_dataset(DataConfig(**{**base, "channels": 1, "band_mean": [1.0], "band_std": [1.0]},
                                         bands=[3], on_bad_image="error"))
    with pytest.raises(DataError, match="1_three_bands.npy.*index 3"):
        selecting.__getitems__([1])


def test_geotiff_without_tifffile_or_rasterio_names_the_packages(tmp_path, monkeypatch):
    import sys

    (tmp_path / "scene.tif").write_bytes(b"II*\x00")
    monkeypatch.setitem(sys.modules, "tifffile", None)
    monkeypatch.setitem(sys.modules, "rasterio", None)
    ds = build_dataset(DataConfig(kind="multispectral", path=str(tmp_path), load_size=8, channels=1,
                                  band_mean=[0.0], band_std=[1.0], on_bad_image="error"))
    with pytest.raises(DataError, match="scene.tif.*tifffile.*rasterio"):
        ds.__getitems__([0])


def test_synthetic_multispectral_is_uint8_with_correlated_bands(tmp_path):
    ds = build_dataset(DataConfig(**MS_DATA))
    images = ds.__getitems__(list(range(16))).images
    assert images.dtype == torch.uint8 and images.shape == (16, 5, 48, 48)
    flat = images.float().flatten(2)
    corr = torch.stack([torch.corrcoef(f)[0, 1] for f in flat])
    assert corr.mean() > 0.5  # bands share the spatial pattern
