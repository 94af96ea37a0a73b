"""PixPro against its method sheet (METHODS.md): positive pairs from crop boxes, PPM, loss, momentum."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from lightly.models.utils import update_momentum

from ssl_zoo.augment import Views, ViewAugment, ViewSpec
from ssl_zoo.config import ConfigError
from ssl_zoo.experiment import load_config
from ssl_zoo.geometry import bin_centres, bin_diagonal, positive_bins
from ssl_zoo.methods.base import build_method
from ssl_zoo.methods.pixpro import PixelPropagation, PixPro, pixpro_loss
from ssl_zoo.schedules import Progress
from ssl_zoo.trainer import Trainer
from tests.conftest import random_images, tiny_config, tiny_method


def tiny_pixpro(tmp_path, **method) -> PixPro:
    """conftest's tiny PixPro: ResNet-10t without max-pool, 40 px views -> 3x3 C5 map."""
    return tiny_method("pixpro", tmp_path, **method)


images = random_images


def square_boxes(n: int, seed: int = 0) -> torch.Tensor:
    """Random square boxes inside the unit image (square bins: the identity check needs them)."""
    g = torch.Generator().manual_seed(seed)
    side = 0.2 + 0.8 * torch.rand(n, generator=g)
    x1, y1 = (1 - side) * torch.rand(n, generator=g), (1 - side) * torch.rand(n, generator=g)
    return torch.stack([x1, y1, x1 + side, y1 + side], 1)


def mirrored(boxes: torch.Tensor) -> torch.Tensor:
    """The same crop flipped horizontally: x1 and x2 swap (the augmentation's convention)."""
    return boxes[:, [2, 1, 0, 3]]


def column_mirror(h: int, w: int) -> torch.Tensor:
    """(h*w, h*w) permutation matrix pairing bin (r, c) with (r, w-1-c)."""
    idx = torch.arange(h * w).view(h, w)
    return F.one_hot(idx.flip(-1).flatten(), h * w).bool()


# ----------------------------------------------------------------------------- geometry


def test_bin_centres_and_diagonal_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.25, 0.1, 0.75]])  # second: flipped, 0.4 wide, 0.5 tall
    c = bin_centres(boxes, (2, 2))
    assert torch.allclose(c[0], torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]))
    # flipped: column 0 lies at the right edge x1 = 0.5 and walks left
    assert torch.allclose(c[1], torch.tensor([[0.4, 0.375], [0.2, 0.375], [0.4, 0.625], [0.2, 0.625]]))
    assert torch.allclose(bin_diagonal(boxes, (2, 2)), torch.tensor([math.sqrt(0.5), math.hypot(0.2, 0.25)]))
    # a 2 x 3 grid (rows x columns) in row-major order
    c = bin_centres(boxes[:1], (2, 3))
    assert torch.allclose(c[0, :3, 0], torch.tensor([1 / 6, 0.5, 5 / 6]))
    assert torch.allclose(c[0, :3, 1], torch.full((3,), 0.25))


@pytest.mark.parametrize("grid", [(7, 7), (3, 3)])
def test_identical_crops_give_the_identity_mask(grid):
    """Same square box: a bin's neighbour is 1/sqrt(2) = 0.707 diagonals away, just above 0.7."""
    boxes = square_boxes(6)
    mask = positive_bins(boxes, grid, boxes, grid, threshold=0.7)
    n = grid[0] * grid[1]
    assert mask.shape == (6, n, n)
    assert torch.equal(mask, torch.eye(n, dtype=torch.bool).expand(6, -1, -1))
    # the radius decides: at 0.72 the 4-neighbours become positives too
    assert (positive_bins(boxes, grid, boxes, grid, threshold=0.72).sum((1, 2)) > n).all()


@pytest.mark.parametrize("grid", [(7, 7), (3, 3)])
def test_flipped_copy_gives_the_column_mirrored_permutation(grid):
    boxes = square_boxes(5, seed=1)
    mask = positive_bins(boxes, grid, mirrored(boxes), grid, threshold=0.7)
    assert torch.equal(mask, column_mirror(*grid).expand(5, -1, -1))
    # only the middle column (odd width) pairs with itself: the mirror is not the identity
    assert not torch.equal(mask[0], torch.eye(grid[0] * grid[1], dtype=torch.bool))


def test_the_augmentation_records_a_flip_as_mirrored_boxes():
    """Same seed, flip_p 0 vs 1: the same crop, pixels mirrored, box x1/x2 swapped -> mirrored positives."""
    spec = dict(size=21, scale=(0.3, 1.0), interpolation="bilinear", jitter_p=0.0, gray_p=0.0)
    x = images(4, size=28).images
    torch.manual_seed(7)
    plain, box, flip = ViewAugment(ViewSpec(**spec, flip_p=0.0))(x)
    torch.manual_seed(7)
    flipped, fbox, fflip = ViewAugment(ViewSpec(**spec, flip_p=1.0))(x)
    assert not flip.any() and fflip.all()
    assert torch.allclose(flipped, plain.flip(-1))
    assert torch.equal(fbox, mirrored(box)) and (fbox[:, 0] > fbox[:, 2]).all()
    # boxes from the augmenter are not square: the positives of the mirror still pair columns c and w-1-c
    mask = positive_bins(box, (3, 3), fbox, (3, 3), threshold=0.7)
    assert (mask & column_mirror(3, 3)).sum((1, 2)).eq(9).all()


def test_disjoint_crops_have_no_positives():
    left = torch.tensor([[0.0, 0.0, 0.4, 1.0]])
    right = torch.tensor([[0.6, 0.0, 1.0, 1.0]])
    assert not positive_bins(left, (7, 7), right, (7, 7), 0.7).any()
    # crops that merely touch still pair their boundary bins when bins are tall: the centres are one bin
    # width apart, 0.45 of a diagonal (0.5 x 1 halves on a 7 x 7 grid)
    half_l, half_r = torch.tensor([[0.0, 0.0, 0.5, 1.0]]), torch.tensor([[0.5, 0.0, 1.0, 1.0]])
    touching = positive_bins(half_l, (7, 7), half_r, (7, 7), 0.7)
    assert touching.sum() == 7 and touching[0].view(7, 7, 7, 7)[:, 6, :, 0].diagonal().all()
    # square crops shifted by one bin: only the bins over the shared part pair up (a shifted diagonal)
    a, b = torch.tensor([[0.0, 0.0, 0.5, 0.5]]), torch.tensor([[0.25, 0.0, 0.75, 0.5]])
    mask = positive_bins(a, (2, 2), b, (2, 2), 0.7)[0]
    assert torch.equal(mask, torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.bool))


# ----------------------------------------------------------------------------- PPM and loss


@pytest.mark.parametrize("normalize_values", [True, False])
def test_pixel_propagation_matches_the_formula(normalize_values):
    torch.manual_seed(0)
    ppm = PixelPropagation(dim=5, gamma=2.0, normalize_values=normalize_values)
    x = torch.randn(2, 5, 2, 3)
    y = ppm(x)
    g = ppm.transform(x)
    if normalize_values:
        g = F.normalize(g, dim=1)
    for b in range(2):
        feats, values = x[b].flatten(1).T, g[b].flatten(1).T  # (6, C)
        for i in range(6):
            expected = sum(max(F.cosine_similarity(feats[i], feats[j], dim=0).item(), 0.0) ** 2 * values[j]
                           for j in range(6))
            assert torch.allclose(y[b].flatten(1)[:, i], expected, atol=1e-5)


def test_loss_matches_a_reference_loop():
    torch.manual_seed(1)
    y, t = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    a = torch.rand(3, 4, 4) < 0.4
    a[2] = False  # a sample without positives
    total = 0.0
    for b in range(3):
        num = sum(F.cosine_similarity(y[b].flatten(1)[:, i], t[b].flatten(1)[:, j], dim=0)
                  for i in range(4) for j in range(4) if a[b, i, j])
        total += num / (a[b].sum() + 1e-6)
    assert pixpro_loss(y, t, a).item() == pytest.approx((-2 * total / 3).item(), abs=1e-6)


def test_loss_is_minus_4_when_propagation_equals_the_target_on_positives(tmp_path):
    torch.manual_seed(2)
    y1, y2 = torch.randn(4, 8, 3, 3), torch.randn(4, 8, 3, 3)
    boxes = square_boxes(4)
    a = positive_bins(boxes, (3, 3), mirrored(boxes), (3, 3), 0.7)
    # view 2 is view 1 mirrored: its targets are view 1's bins mirrored, at any positive scale
    t2, t1 = 3.0 * y1.flip(-1), 0.5 * y2.flip(-1)
    loss = pixpro_loss(y1, t2, a) + pixpro_loss(y2, t1, a.transpose(1, 2))
    assert loss.item() == pytest.approx(-4.0, abs=1e-5)
    # a sample whose crops are disjoint adds 0 but still counts in the mean: -2 * 3/4 per direction
    a[0] = False
    loss = pixpro_loss(y1, t2, a) + pixpro_loss(y2, t1, a.transpose(1, 2))
    assert loss.item() == pytest.approx(-3.0, abs=1e-5)


def test_training_step_on_mirrored_views_uses_the_mirrored_positives(tmp_path):
    """A flipped copy through the real networks: the loss is the hand-assembled PixPro loss with the
    column-mirrored permutation (equivariant features would give exactly -4)."""
    method = tiny_pixpro(tmp_path)
    captured = {}
    method.propagation.register_forward_hook(lambda m, i, o: captured.setdefault("y", []).append(o.detach()))
    method.momentum_encoder.register_forward_hook(lambda m, i, o: captured.setdefault("t", []).append(o.detach()))
    x = method.views(images(4)).crops[0]
    boxes = square_boxes(4)
    flags = [torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)]
    views = Views([x, x.flip(-1)], [boxes, mirrored(boxes)], flags)
    loss = method.training_step(views, Progress(0, 10, 0, 10))["loss"]
    (y1, y2), (t1, t2) = captured["y"], captured["t"]
    assert y1.shape == (4, 32, 3, 3) and t1.shape == (4, 32, 3, 3)
    a = column_mirror(3, 3).expand(4, -1, -1)
    expected = pixpro_loss(y1, t2, a) + pixpro_loss(y2, t1, a)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    eye = torch.eye(9, dtype=torch.bool).expand(4, -1, -1)  # ignoring the flip would pair the wrong bins
    assert loss.item() != pytest.approx((pixpro_loss(y1, t2, eye) + pixpro_loss(y2, t1, eye)).item(), abs=1e-3)


# ----------------------------------------------------------------------------- networks, momentum, defaults


def test_gradients_reach_the_online_branch_only(tmp_path):
    cfg = load_config(tiny_config("pixpro", tmp_path))
    method = build_method(cfg)
    torch.manual_seed(3)
    method.training_step(method.views(images(4)), Progress(0, 10, 0, 10))["loss"].backward()
    momentum_params = list(method.momentum_encoder.parameters())
    assert momentum_params and all(not p.requires_grad and p.grad is None for p in momentum_params)
    for part in (method.online.backbone, method.online.projector, method.propagation):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    ids = {id(p) for g in method.param_groups(cfg.optim) for p in g["params"]}
    assert not ids & {id(p) for p in momentum_params}
    assert {id(p) for p in method.propagation.parameters()} <= ids


def test_momentum_starts_at_0_99_and_follows_the_cosine_to_1(tmp_path):
    method = tiny_pixpro(tmp_path)
    m = method.cfg.momentum
    assert m(Progress(0, 1000, 0, 100)) == pytest.approx(0.99)
    assert m(Progress(500, 1000, 5, 100)) == pytest.approx(0.995)
    assert m(Progress(1000, 1000, 10, 100)) == pytest.approx(1.0)
    for (name, s), (_, t) in zip(method.online.named_parameters(), method.momentum_encoder.named_parameters()):
        assert torch.equal(s, t), name
    with torch.no_grad():
        for p in method.online.parameters():
            p.add_(0.1 * torch.randn_like(p))
    before = [t.clone() for t in method.momentum_encoder.parameters()]
    online = [s.detach().clone() for s in method.online.parameters()]
    p = Progress(0, 1000, 0, 100)
    method.after_step(p)  # step 1's update, with step 1's momentum (the official code runs it before step 1)
    m1 = m(Progress(1, 1000, 0, 100))
    assert m1 == pytest.approx(1 - 0.01 * (math.cos(math.pi / 1000) + 1) / 2, abs=1e-12)  # the official formula
    for t0, s, t1 in zip(before, online, method.momentum_encoder.parameters()):
        assert torch.allclose(t1, m1 * t0 + (1 - m1) * s, atol=1e-7)
    assert method.schedule_values(p) == {"momentum": pytest.approx(0.99)}  # m of step 0's (official) update
    after = [t.clone() for t in method.momentum_encoder.parameters()]
    method.after_step(Progress(999, 1000, 9, 100))  # the last step: no step after it to update for
    assert all(torch.equal(t0, t1) for t0, t1 in zip(after, method.momentum_encoder.parameters()))


def test_momentum_updates_follow_the_official_order(tmp_path):
    """The official code updates the key encoder at the START of step k's forward with m(k); the zoo after
    step k - 1's optimiser step. Real SGD steps on the same views in both orders end with bit-identical key
    (and online) encoders. m runs 0.5 -> 0.9: at 0.5 the official first update is a no-op in float32 too
    (0.5 x + 0.5 x = x; at 0.99 only up to rounding), and an end below 1 shows an update after the last step.
    Every order updates with lightly's update_momentum: the official `k * m + q * (1 - m)` rounds differently
    in the last bit, and the order is what is compared."""
    steps = 3
    torch.manual_seed(4)
    method = tiny_pixpro(tmp_path, momentum={"start": 0.5, "end": 0.9})
    views = [method.views(images(4, seed=k)) for k in range(steps)]
    initial = {k: v.clone() for k, v in method.state_dict().items()}

    def train(order: str) -> dict[str, torch.Tensor]:
        method.load_state_dict(initial)
        optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
        for k in range(steps):
            progress = Progress(k, steps, k // 2, 2)
            if order == "official":  # _momentum_update_key_encoder at the top of forward
                update_momentum(method.online, method.momentum_encoder, method.cfg.momentum(progress))
            optimizer.zero_grad()
            method.training_step(views[k], progress)["loss"].backward()
            optimizer.step()
            if order == "zoo":
                method.after_step(progress)
            elif order == "after each step with its own m":  # what the zoo ran before
                update_momentum(method.online, method.momentum_encoder, method.cfg.momentum(progress))
        return {k: v.clone() for k, v in method.state_dict().items()}

    official, zoo = train("official"), train("zoo")
    key = [k for k in official if k.startswith("momentum_encoder.")]
    assert key and all(torch.equal(official[k], zoo[k]) for k in official)
    assert not all(torch.equal(official[k], initial[k]) for k in key)  # the key encoder did move
    shifted = train("after each step with its own m")
    assert not all(torch.equal(official[k], shifted[k]) for k in key)


def test_paper_defaults_and_resnet50_shapes():
    cfg = PixPro.Config()
    assert (cfg.hidden_dim, cfg.out_dim, cfg.gamma, cfg.positive_radius) == (4096, 256, 2.0, 0.7)
    assert (cfg.momentum.start, cfg.momentum.end) == (0.99, 1.0)
    v1, v2 = cfg.views
    assert v1.scale == v2.scale == (0.08, 1.0) and v1.size == v2.size == 224
    assert (v1.blur_p, v1.solarize_p, v2.blur_p, v2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    assert v1.jitter == (0.4, 0.4, 0.2, 0.1) and v1.jitter_p == 0.8 and v1.gray_p == 0.2
    opt = PixPro.paper_optim()
    assert (opt.name, opt.base_lr, opt.lr_reference_batch, opt.weight_decay, opt.warmup_epochs) == \
        ("lars", 1.0, 256, 1e-5, 5)
    full = load_config({"method": {"name": "pixpro"}, "data": {"kind": "synthetic"}})
    assert full.model.backbone == "resnet50"
    method = build_method(full)
    conv1, bn, _, conv2 = method.online.projector
    assert (conv1.in_channels, conv1.out_channels, conv2.out_channels) == (2048, 4096, 256)
    assert conv1.kernel_size == conv2.kernel_size == method.propagation.transform.kernel_size == (1, 1)
    assert method.propagation.transform.bias is not None
    assert method.feature_grid(torch.zeros(1, 3, 224, 224)) == (7, 7)
    # the exported backbone is the plain timm ResNet: pooled features for k-NN / the hub
    assert method.backbone().zoo_spec.architecture == "resnet50"


def test_bad_configs_name_the_value(tmp_path):
    raw = tiny_config("pixpro", tmp_path)
    raw["method"]["views"] = raw["method"]["views"][:1]
    with pytest.raises(ConfigError, match="method.views.*got 1"):
        load_config(raw)
    raw = tiny_config("pixpro", tmp_path, model={"backbone": "vit_tiny_patch16_224", "stem": "imagenet"})
    with pytest.raises(ConfigError, match="vit_tiny_patch16_224"):
        build_method(load_config(raw))


# ----------------------------------------------------------------------------- images and a real run


def test_log_images_colour_positive_pairs_alike(tmp_path):
    method = tiny_pixpro(tmp_path)
    x = method.views(images(2)).crops[0]
    flags = [torch.zeros(2, dtype=torch.bool)] * 2
    same = square_boxes(2)
    grid = method.log_images(Views([x, x], [same, same], flags))["pixpro/positive_pairs_view1_view2"]
    assert grid.shape == (3, 2 + 2 * 42, 2 + 2 * 42)  # make_grid: 2 x 2 tiles of 40 px, 2 px padding
    row1, row2 = grid[:, 2:42], grid[:, 44:84]
    assert torch.allclose(row1, row2)  # identical crops: every bin paired with itself, same colour
    dark = 0.3 * method.normalize.inverse(x).clamp(0, 1)
    assert not torch.allclose(row1[:, :, 2:42], dark[0], atol=1e-3)  # painted, not darkened
    left, right = torch.tensor([[0.0, 0.0, 0.4, 1.0]] * 2), torch.tensor([[0.6, 0.0, 1.0, 1.0]] * 2)
    grid = method.log_images(Views([x, x], [left, right], flags))["pixpro/positive_pairs_view1_view2"]
    plain = method.log_images(Views([x, x], [left, left], flags))["pixpro/positive_pairs_view1_view2"]
    # disjoint crops: nothing painted, every pixel is the darkened image
    assert torch.allclose(grid[:, 2:2 + 40, 2:2 + 40], dark[0], atol=1e-6)
    assert not torch.allclose(plain, grid)


def test_short_fashion_mnist_run_lowers_the_loss_and_logs_positive_pairs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    """Trainer, LARS, momentum encoder on Fashion-MNIST (measured at batch 32: -0.4 at step 1, -2.4 by
    step 4, then a plateau near -2.5 over 16 steps); 8 steps of 16 images keep the test short."""
    raw = tiny_config("pixpro", tmp_path, data="fashion_mnist", train={"max_steps": 8, "batch_size": 16})
    result = Trainer(load_config(raw), progress_bar=False).fit()
    assert result.status == "completed" and result.step == 8
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 8 and all(math.isfinite(v) and -4.0 <= v <= 4.0 for v in losses)
    assert records[0]["momentum"] == pytest.approx(0.99)
    first, last = sum(losses[:2]) / 2, sum(losses[-3:]) / 3
    assert last < first - 0.5, losses
    acc = EventAccumulator(str(result.tb_dir), size_guidance={"images": 0}).Reload()
    assert "pixpro/positive_pairs_view1_view2" in acc.Tags()["images"]
