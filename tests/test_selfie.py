"""Selfie against its method sheet (METHODS.md): patch grid, P per patch, attention pooling with
row + column positions, the contrastive choice among the image's masked patches, exported P."""

import math

import pytest
import timm
import torch
from lightly.models.utils import patchify

from ssl_zoo.backbones import rebuild_backbone, spec_of
from ssl_zoo.backbones.selfie import build_patch_network, per_patch
from ssl_zoo.config import ConfigError, ModelConfig
from ssl_zoo.experiment import load_config
from ssl_zoo.methods.base import build_method
from ssl_zoo.methods.selfie import Selfie, selfie_view
from tests.conftest import fit_losses, random_images, tiny_config, tiny_method


images = random_images


def tiny_selfie(tmp_path, **method) -> Selfie:
    torch.manual_seed(0)
    return tiny_method("selfie", tmp_path, **method)


def region(k: int, grid: int = 4, patch: int = 7) -> tuple:
    """Index of row-major patch k's pixels in a (B, C, H, W) batch (all images, all channels)."""
    r, c = divmod(k, grid)
    return (slice(None), slice(None), slice(r * patch, (r + 1) * patch), slice(c * patch, (c + 1) * patch))


def masked_views(method: Selfie, n: int = 3, seed: int = 1):
    torch.manual_seed(seed)
    views = method.views(images(n, size=method.cfg.view.size, seed=seed))
    return views.crops[0], views.idx_keep, views.idx_mask


@pytest.fixture(scope="module")
def paper_selfie() -> Selfie:
    """The paper's defaults: 224 px crops, 32 px patches, ResNet-50 stages 1-3."""
    torch.manual_seed(0)
    return Selfie(Selfie.Config(), build_patch_network(ModelConfig(backbone="resnet50"))).eval()


# ----------------------------------------------------------------------------- grid and masking


def test_paper_grids_224_by_32_gives_49_patches_and_32_by_8_gives_16(paper_selfie):
    big = paper_selfie
    cfg = big.cfg
    assert (cfg.view.size, cfg.patch_size, cfg.num_masked, cfg.depth) == (224, 32, 12, 3)
    assert big.num_patches == 49 and big.patch_net.num_features == 1024
    x, keep, masked = masked_views(big, n=2)
    assert keep.shape == (2, 37) and masked.shape == (2, 12)
    for k, m in zip(keep, masked):  # disjoint, together every patch
        assert sorted(torch.cat([k, m]).tolist()) == list(range(49))
    with torch.no_grad():
        assert big.logits(x, keep, masked).shape == (2, 12, 12)  # one row of M logits per masked location

    small = Selfie(Selfie.Config(patch_size=8, num_masked=4, view=selfie_view(32), heads=4),
                   build_patch_network(ModelConfig(backbone="resnet10t")))
    assert small.num_patches == 16 and small.pos.row.shape[0] == 4
    x, keep, masked = masked_views(small, n=2)
    assert keep.shape == (2, 12) and masked.shape == (2, 4)
    assert not torch.equal(masked[0].sort().values, masked[1].sort().values)  # per-image masks


def test_patch_network_runs_once_on_every_patch_folded_into_the_batch(tmp_path):
    method = tiny_selfie(tmp_path).eval()
    x, keep, masked = masked_views(method, n=3)
    seen = []
    hook = method.patch_net.register_forward_hook(lambda m, args, out: seen.append((args[0].shape, out.shape)))
    with torch.no_grad():
        method.logits(x, keep, masked)
    hook.remove()
    width = method.patch_net.num_features
    assert seen == [(torch.Size([3 * 16, 3, 7, 7]), torch.Size([3 * 16, width]))]  # B x N patches, one vector each

    with torch.no_grad():  # vector k is P of patch k alone, row-major: k = 6 is row 1, column 2
        feats = per_patch(method.patch_net, x, 7)
        alone = method.patch_net(x[region(6)])
    assert feats.shape == (3, 16, width)
    assert torch.allclose(feats[:, 6], alone, atol=1e-5)


# ----------------------------------------------------------------------------- logits and loss


def test_logits_are_dot_products_of_pooled_visible_context_plus_position_with_masked_patches(tmp_path):
    method = tiny_selfie(tmp_path).eval()
    x, keep, masked = masked_views(method, n=2)
    with torch.no_grad():
        logits = method.logits(x, keep, masked)
        g = 4
        for b in range(2):
            crops = lambda idx: torch.stack([x[region(k)][b] for k in idx.tolist()])  # noqa: E731
            h_visible, h_masked = method.patch_net(crops(keep[b])), method.patch_net(crops(masked[b]))
            tokens = torch.cat([method.pool.query[0], h_visible])[None]
            u = method.pool.transformer(tokens)[0, 0]  # the learned query's output
            rows, cols = masked[b] // g, masked[b] % g
            v = u + method.pos.row[rows] + method.pos.col[cols]
            assert torch.allclose(logits[b], v @ h_masked.T, rtol=1e-4, atol=1e-4)


def test_only_visible_patches_form_the_context_and_distractors_are_the_same_images_masked_patches(tmp_path):
    method = tiny_selfie(tmp_path).eval()
    x, keep, masked = masked_views(method, n=2)
    with torch.no_grad():
        base = method.logits(x, keep, masked)
        other = x.clone()
        other[1] = torch.randn_like(other[1])  # another image changes nothing of image 0
        assert torch.allclose(method.logits(other, keep, masked)[0], base[0], atol=1e-5)

        j = 2  # new pixels in image 0's masked patch j: only candidate column j moves, the queries v_i do not
        k = masked[0, j].item()
        edited = x.clone()
        edited[region(k)][0] += 1.0
        changed = method.logits(edited, keep, masked)[0]
        others = [c for c in range(4) if c != j]
        assert torch.allclose(changed[:, others], base[0][:, others], atol=1e-5)
        assert not torch.allclose(changed[:, j], base[0][:, j], atol=1e-3)

        k = keep[0, 0].item()  # a visible patch changes the summary u, so every query row moves
        edited = x.clone()
        edited[region(k)][0] += 1.0
        changed = method.logits(edited, keep, masked)[0]
        assert all(not torch.allclose(changed[i], base[0][i], atol=1e-4) for i in range(4))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_loss_is_invariant_to_permuting_the_masked_patches(tmp_path, mode):
    method = tiny_selfie(tmp_path).train(mode == "train")
    x, keep, masked = masked_views(method, n=3)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        logits = method.logits(x, keep, masked)
        permuted = method.logits(x, keep, masked[:, perm])
        # the order of the visible patches does not matter either (no positions on the context)
        shuffled_context = method.logits(x, keep.flip(1), masked)
    assert torch.allclose(permuted, logits[:, perm][:, :, perm], atol=1e-4)
    assert method.loss(permuted).item() == pytest.approx(method.loss(logits).item(), rel=1e-5)
    assert method.loss(shuffled_context).item() == pytest.approx(method.loss(logits).item(), rel=1e-5)


@pytest.mark.parametrize("m", [4, 12])
def test_uniform_logits_give_ln_m(m):
    assert Selfie.loss(torch.zeros(3, m, m)).item() == pytest.approx(math.log(m), rel=1e-6)
    assert Selfie.loss(torch.full((2, m, m), 7.5)).item() == pytest.approx(math.log(m), rel=1e-6)


def test_loss_is_cross_entropy_with_target_j_equal_i_on_a_hand_computed_example():
    logits = torch.tensor([[[2.0, 0.0], [1.0, 1.0]]])
    # row 0: -log(e^2 / (e^2 + 1)); row 1: -log(1/2); averaged over the masked locations
    expected = (-math.log(math.e**2 / (math.e**2 + 1)) + math.log(2)) / 2
    assert Selfie.loss(logits).item() == pytest.approx(expected, rel=1e-6)
    swapped = torch.tensor([[[0.0, 2.0], [1.0, 1.0]]])  # the right patch scored low: larger loss
    assert Selfie.loss(swapped).item() > Selfie.loss(logits).item()


# ----------------------------------------------------------------------------- positions


def test_position_embeddings_are_a_learned_row_plus_a_learned_column_vector(tmp_path):
    method = tiny_selfie(tmp_path)
    pos, width = method.pos, method.patch_net.num_features
    assert pos.row.shape == (4, width) and pos.col.shape == (4, width) and pos.row.requires_grad
    assert sum(p.numel() for p in pos.parameters()) == 2 * 4 * width  # 7 + 7 style, not 49 vectors
    idx = torch.arange(16)[None]
    with torch.no_grad():
        emb = pos(idx)[0].view(4, 4, width)  # [row, column]
        assert torch.allclose(emb, pos.row[:, None] + pos.col[None, :])
        # moving one column right changes the embedding by the same vector on every row
        step = emb[:, 2] - emb[:, 1]
        assert torch.allclose(step, (pos.col[2] - pos.col[1]).expand(4, -1), atol=1e-6)

    groups = method.param_groups(load_config(tiny_config("selfie", tmp_path)).optim)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {id(pos.row), id(pos.col), id(method.pool.query)} <= no_decay


# ----------------------------------------------------------------------------- exported backbone


def test_exported_backbone_is_a_timm_resnet50_trunk_that_fine_tuning_loads_as_stages_1_to_3(paper_selfie):
    trunk = paper_selfie.backbone()
    state = trunk.state_dict()
    assert {k.split(".")[0] for k in state} == {"conv1", "bn1", "layer1", "layer2", "layer3"}

    full = timm.create_model("resnet50", num_classes=10)  # fine-tuning: the full ResNet-50
    result = full.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert {k.split(".")[0] for k in result.missing_keys} == {"layer4", "fc"}
    full.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stages = full.layer3(full.layer2(full.layer1(full.maxpool(full.act1(full.bn1(full.conv1(x)))))))
        assert torch.allclose(trunk(x), stages.mean((2, 3)), atol=1e-5)

    twin = rebuild_backbone(spec_of(trunk))  # what the hub does: plain timm.create_model + the spec
    twin.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.equal(twin.eval()(x), trunk(x))


def test_embed_pools_the_patch_network_over_the_whole_centre_crop(tmp_path):
    method = tiny_selfie(tmp_path).eval()
    batch = images(2, size=36)
    feats = method.embed(batch.images)
    assert feats.shape == (2, method.patch_net.num_features)
    crop = method.normalize(batch.images[..., 4:32, 4:32].float() / 255)
    with torch.no_grad():
        assert torch.allclose(feats, method.patch_net(crop), atol=1e-5)


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("change, message", [
    ({"patch_size": 5}, r"patch_size=5 does not divide method.view.size=28"),
    ({"num_masked": 16}, r"num_masked=16 leaves no visible patch.*16 patches; valid: 2 .. 15"),
    ({"num_masked": 1}, r"method.num_masked: value 1 is out of range"),
    ({"heads": 3}, r"heads=3 does not divide the patch network's width 256"),
])
def test_bad_method_values_raise_config_errors_naming_the_value(tmp_path, change, message):
    raw = tiny_config("selfie", tmp_path)
    raw["method"].update(change)
    with pytest.raises(ConfigError, match=message):
        build_method(load_config(raw))


def test_a_non_resnet_backbone_is_a_config_error(tmp_path):
    raw = tiny_config("selfie", tmp_path, model={"backbone": "vit_tiny_patch16_224", "stem": "imagenet"})
    with pytest.raises(ConfigError, match="first three stages of a timm ResNet"):
        build_method(load_config(raw))


# ----------------------------------------------------------------------------- images and a real run


def test_log_images_shows_input_masked_and_chosen_patches_without_touching_bn(tmp_path):
    method = tiny_selfie(tmp_path).train()
    torch.manual_seed(2)
    views = method.views(images(8))
    bn_before = method.patch_net.bn1.running_mean.clone()
    grid = method.log_images(views)["selfie/input_masked_choice"]
    assert method.training and torch.equal(method.patch_net.bn1.running_mean, bn_before)
    assert grid.shape == (3, 3 * 28 + 4 * 2, 8 * 28 + 9 * 2)  # 3 rows of 8 tiles, padding 2
    tiles = lambda r: torch.stack([grid[:, 2 + r * 30: 30 + r * 30, 2 + t * 30: 30 + t * 30]  # noqa: E731
                                   for t in range(8)])
    shown, blanked, filled = (patchify(tiles(r), 7) for r in range(3))
    masked = views.idx_mask
    with torch.no_grad():
        choice = method.eval().logits(views.crops[0], views.idx_keep, masked).argmax(-1)
    rows = torch.arange(8)[:, None]
    assert torch.count_nonzero(blanked[rows, masked]) == 0  # masked patches blanked, the rest shown
    assert torch.allclose(blanked[rows, views.idx_keep], shown[rows, views.idx_keep])
    # masked location i shows the image's own masked patch the model picks for it
    assert torch.allclose(filled[rows, masked], shown[rows, masked.gather(1, choice)], atol=1e-6)


def test_short_fashion_mnist_run_lowers_the_loss(tmp_path):
    """A real training run (trainer, AdamW, schedules) on Fashion-MNIST: the loss goes down."""
    # 30 steps: at 20 the batch-to-batch noise of this loss (2.0-3.3 in the first 20) leaves the
    # last-5 / first-5 ratio at 0.80 on some image subsets; at 30 it is 0.67
    raw = tiny_config("selfie", tmp_path, data="fashion_mnist", train={"max_steps": 30, "batch_size": 32})
    losses = fit_losses(raw, 30)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, losses
