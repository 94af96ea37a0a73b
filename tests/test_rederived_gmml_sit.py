"""GMML and SiT losses re-derived from the papers and the official code, compared with the zoo's training_step.

Nothing here calls the zoo's loss helpers (masked_l1, moco_v3_loss, nt_xent_loss, uncertainty_weighted,
ReconstructionHead.forward, patch_tokens, LatestNetwork/V1Network.forward): the ViT is run block by block by
hand from its own submodules, the heads are applied from their weights with torch.nn.functional, and each loss
is written as the official line it stands for:

GMML (Sara-Ahmed/GMML main.py, vision_transformer.py):
    recons = mean of the outputs of blocks 6, 8, 10, 12 -> self.norm -> [:, 1:]      (VisionTransformer.forward)
    RECHead: 3 x [Linear(D, D) + GELU] -> ConvTranspose2d(D, 3, p, stride p)
    recloss = F.l1_loss(s_recons_g, torch.cat(clean_crops[0:2]), reduction='none')
    loss = recloss[torch.cat(masks_crops[0:2]) == 1].mean()                           (drop_only = 1)
SiT latest (Sara-Ahmed/SiT main.py, vision_transformer.py):
    t_cls, _ = teacher(clean); s_cls, s_recons = student(corrupted)    (CLSHead on _out[:, 0], RECHead on _out[:, 1:])
    CLSHead: Linear-BN-ReLU, Linear-BN-GELU, Linear-BN(affine=False)      (train-mode BN: batch statistics)
    SimCLR.contrastive_loss(q, k): CE(normalize(q) normalize(k)^T / tau, arange) * 2 tau; s1 vs t2 + s2 vs t1
    r_loss = l1[masks == 1].mean();  loss = c_loss + lmbda * r_loss
    EMA: param_k = m param_k + (1 - m) param_q over all parameters, m cosine 0.996 -> 1
SiT v1 (Sara-Ahmed/SiT engine.py, losses.py, vision_transformer_SiT.py at 1767b91 / 2ec822e):
    x = norm(blocks([rot, contrastive, patches] + pos)); rot_head(x_rot), contrastive_head(x_con), convTrans(x[:, 2:])
    CrossEntropy on rotations, ContrastiveLoss (NT-Xent, tau 0.5, as written there), L1Loss (all pixels) against the
    rotated clean views; LearnedLoss.calculate_weighted_loss (2ec822e): exp(-adj s) L + 0.5 s, adj 1, 1, 0.5.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_zoo.methods.base import disable_drop_path
from ssl_zoo.schedules import Progress
from tests.conftest import random_images, tiny_method

pytestmark = pytest.mark.usefixtures("one_thread")

STEP = Progress(3, 10, 0, 10)
ATOL = 2e-5  # float32 rounding of losses of order 1


# ----------------------------------------------------------------------------- independent pieces


def vit_block_outputs(vit: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The official VisionTransformer.prepare_tokens + block loop, by hand: conv patchify, prefix tokens
    (class token, then the register token if any), + position embedding (every token has one), each block's
    pre-norm output (B, prefix + N, D)."""
    w, b = vit.patch_embed.proj.weight, vit.patch_embed.proj.bias
    x = F.conv2d(images, w, b, stride=w.shape[-1]).flatten(2).transpose(1, 2)
    prefix = [vit.cls_token.expand(len(x), -1, -1)]
    if getattr(vit, "reg_token", None) is not None:
        prefix.append(vit.reg_token.expand(len(x), -1, -1))
    x = torch.cat(prefix + [x], dim=1)
    assert vit.pos_embed.shape[1] == x.shape[1]  # the grid is the native one: no interpolation
    x = x + vit.pos_embed
    outs = []
    for blk in vit.blocks:
        x = blk(x)
        outs.append(x)
    return outs


def layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def rec_head(head: nn.Module, tokens: torch.Tensor, grid: int, mlp_layers: int) -> torch.Tensor:
    """RECHead from its weights: [Linear + GELU] x mlp_layers, then the transposed convolution (kernel = stride = p)
    written out: pixel (c, i p + u, j p + v) = sum_d token(i, j)_d W[d, c, u, v] + bias_c; tokens row-major."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == mlp_layers
    for lin in linears:
        tokens = F.gelu(F.linear(tokens, lin.weight, lin.bias))
    conv = [m for m in head.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(conv) == 1
    weight, bias = conv[0].weight, conv[0].bias  # (D, C, p, p), (C,)
    d, c, p, _ = weight.shape
    t = tokens.reshape(len(tokens), grid, grid, d)
    out = torch.einsum("bhwd,dcuv->bchuwv", t, weight).reshape(len(tokens), c, grid * p, grid * p)
    return out + bias.view(1, c, 1, 1)


def official_masked_l1(pred: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """recloss[mask == 1].mean() with the official (C, H, W) masks (one mask copied to every channel)."""
    recloss = (pred - clean).abs()
    return recloss[mask.expand_as(recloss) == 1].mean()


def cls_head(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLSHead (nlayers 3) from its weights, BatchNorm with batch statistics (train mode, as both official nets)."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    bns = [m for m in head.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(linears) == 3 and len(bns) == 3 and not bns[2].affine and bns[0].affine and bns[1].affine
    for i, (lin, bn) in enumerate(zip(linears, bns)):
        # the official Linear has a bias before BN; in train mode BN subtracts it again
        x = F.linear(x, lin.weight, lin.bias)
        x = F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
        x = (F.relu, F.gelu, lambda v: v)[i](x)
    return x


def official_simclr(q: torch.Tensor, k: torch.Tensor, temp: float) -> torch.Tensor:
    """main.py SimCLR.contrastive_loss on one process (world size 1, rank 0)."""
    q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
    k = k.detach() / k.detach().norm(dim=1, keepdim=True).clamp_min(1e-12)
    logits = torch.einsum("nc,mc->nm", q, k) / temp
    labels = torch.arange(len(logits))
    return -(logits.log_softmax(1)[labels, labels]).mean() * (2 * temp)


def official_nt_xent(emb_i: torch.Tensor, emb_j: torch.Tensor, temperature: float) -> torch.Tensor:
    """losses.py ContrastiveLoss.forward, as written."""
    n = len(emb_i)
    z_i, z_j = F.normalize(emb_i, dim=1), F.normalize(emb_j, dim=1)
    reps = torch.cat([z_i, z_j], dim=0)
    sim = F.cosine_similarity(reps.unsqueeze(1), reps.unsqueeze(0), dim=2)
    positives = torch.cat([torch.diag(sim, n), torch.diag(sim, -n)], dim=0)
    nominator = torch.exp(positives / temperature)
    denominator = (~torch.eye(2 * n, dtype=torch.bool)).float() * torch.exp(sim / temperature)
    return torch.sum(-torch.log(nominator / denominator.sum(1))) / (2 * n)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -logits.log_softmax(1)[torch.arange(len(labels)), labels].mean()


def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    out = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=False)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, out)]


def assert_same_grads(zoo: list[torch.Tensor], ref: list[torch.Tensor], names: list[str]) -> float:
    worst = 0.0
    for g, r, name in zip(zoo, ref, names):
        scale = r.abs().max().item()
        diff = (g - r).abs().max().item()
        assert diff <= 1e-4 * scale + 1e-7, (name, diff, scale)
        worst = max(worst, diff)
    return worst


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The three tiny methods (built once: building dominates the run time)."""
    root = tmp_path_factory.mktemp("rederived")
    torch.manual_seed(0)
    gmml = tiny_method("gmml", root)
    latest = tiny_method("sit", root, recon_weight=5.0)  # lambda != 1, so the weighting is seen
    v1 = tiny_method("sit", root, variant="v1")
    for m in (gmml, latest, v1):
        disable_drop_path(m)  # stochastic depth draws random numbers: two passes must see one network
        m.train()
    randomise_head(gmml.head, 1)
    randomise_blocks(gmml.vit, 4)
    randomise_head(latest.student.recon, 2)
    randomise_head(v1.net.recon, 3)
    return {"gmml": gmml, "latest": latest, "v1": v1}


def randomise_head(head: nn.Module, seed: int) -> None:
    """Reconstruction-head weights of a trained scale (the init's std 0.02 makes every prediction ~0, so a loss
    would hardly tell which tokens fed it)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in head.modules():
            if isinstance(m, (nn.Linear, nn.ConvTranspose2d)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.weight.shape[0]))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


def randomise_blocks(vit: nn.Module, seed: int) -> None:
    """Residual-branch outputs of a trained scale: at init each block adds almost nothing to the stream, so every
    block's output is nearly the same and the choice of blocks would not show in a loss."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blk in vit.blocks:
            for lin in (blk.attn.proj, blk.mlp.fc2):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / math.sqrt(lin.weight.shape[1]))


def make_views(method, seed: int, n: int = 8):
    torch.manual_seed(seed)
    return method.views(random_images(n, seed=seed))


# ----------------------------------------------------------------------------- GMML


def test_gmml_corruption_is_noise_or_another_images_pixels_and_only_inside_the_mask(built):
    views = make_views(built["gmml"], 1, n=8)
    for crop, bad, mask in zip(views.crops[:2], views.corrupted, views.corruption_masks):
        assert mask.shape == (8, 1, 28, 28)  # one mask for all channels
        m = mask.expand_as(crop) == 1
        assert torch.equal(bad[~m], crop[~m])
        pasted = 0
        for i in range(8):
            inside = m[i]
            sources = [j for j in range(8) if j != i and torch.equal(bad[i][inside], crop[j][inside])]
            if sources:
                pasted += 1
                cov = mask[i].mean().item()
                assert 0.3 <= cov < 0.3 + 0.2  # U(0.3, 0.3) target, overshoot by < one block
            else:  # N(0, 1) noise in normalised space
                cov = mask[i].mean().item()
                assert 0.5 <= cov <= 0.75 + 0.2
                assert abs(bad[i][inside].std().item() - 1.0) < 0.15
                assert abs(bad[i][inside].mean().item()) < 0.15
        assert 0 < pasted < 8  # p = 0.5 each (seeded)


def test_gmml_loss_and_gradients_match_the_official_formulation(built):
    method = built["gmml"]
    views = make_views(method, 2)
    corrupted, clean = torch.cat(views.corrupted), torch.cat(views.crops[:2])
    mask = torch.cat(views.corruption_masks)
    vit = method.vit
    named = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]

    zoo = method.training_step(views, STEP)["loss"]
    zoo_grads = grads(zoo, params)

    outs = vit_block_outputs(vit, corrupted)
    assert len(outs) == 12
    recons = sum(outs[b - 1] for b in (6, 8, 10, 12)) / 4  # official recons_blocks '6-8-10-12'
    tokens = layer_norm(vit.norm, recons)[:, 1:]
    pred = rec_head(method.head, tokens, grid=4, mlp_layers=3)
    assert pred.shape == clean.shape
    ref = official_masked_l1(pred, clean, mask)
    ref_grads = grads(ref, params)

    diff = (zoo - ref).abs().item()
    assert diff < ATOL, (zoo.item(), ref.item())
    assert_same_grads(zoo_grads, ref_grads, names)
    # discriminating: the same prediction's L1 over all pixels, or from the last block alone, is another number
    assert abs(zoo.item() - (pred - clean).abs().mean().item()) > 1e-3
    last = rec_head(method.head, layer_norm(vit.norm, outs[-1])[:, 1:], grid=4, mlp_layers=3)
    assert abs(zoo.item() - official_masked_l1(last, clean, mask).item()) > 1e-4


def test_gmml_gradient_reaches_the_prediction_only_inside_the_mask(built):
    method = built["gmml"]
    views = make_views(method, 3)
    corrupted, clean = torch.cat(views.corrupted), torch.cat(views.crops[:2])
    mask = torch.cat(views.corruption_masks)
    captured = {}

    def keep(module, args, out):
        out.retain_grad()
        captured["out"] = out

    hook = method.head.register_forward_hook(keep)
    try:
        method.training_step(views, STEP)["loss"].backward()
    finally:
        hook.remove()
        method.zero_grad(set_to_none=True)
    g = captured["out"].grad
    outside = mask.expand_as(g) == 0
    assert torch.all(g[outside] == 0) and torch.all(g[~outside] != 0)
    # d/dpred of mean |pred - clean| over the corrupted elements: sign / count
    count = (~outside).sum()
    expect = torch.sign(captured["out"].detach() - clean)[~outside] / count
    assert torch.allclose(g[~outside], expect, rtol=1e-5, atol=0)


# ----------------------------------------------------------------------------- SiT latest


def test_sit_latest_corruption_is_zeros_or_another_images_pixels(built):
    views = make_views(built["latest"], 4, n=8)
    for crop, bad, mask in zip(views.crops[:2], views.corrupted, views.corruption_masks):
        m = mask.expand_as(crop) == 1
        assert torch.equal(bad[~m], crop[~m])
        for i in range(8):
            inside = m[i]
            cov = mask[i].mean().item()
            if torch.all(bad[i][inside] == 0):
                assert 0.5 <= cov <= 0.5 + 0.2  # drop_perc 0.5: U(0.5, 0.5)
            else:
                assert any(torch.equal(bad[i][inside], crop[j][inside]) for j in range(8) if j != i)
                assert 0.3 <= cov < 0.3 + 0.2


def test_sit_latest_loss_and_gradients_match_the_official_formulation(built):
    method = built["latest"]
    assert method.cfg.temperature == 0.2 and method.cfg.recon_weight == 5.0
    student, teacher = method.student, method.teacher
    # a teacher that differs from the student (as after EMA steps), so swapping their roles would show
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(getattr(m, "drop_prob", 0.0) == 0.0 for m in teacher.modules())
    views = make_views(method, 6)
    corrupted, clean = torch.cat(views.corrupted), torch.cat(views.crops[:2])
    mask = torch.cat(views.corruption_masks)
    named = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    assert all(n.startswith("student.") for n in names)

    out = method.training_step(views, STEP)
    zoo_grads = grads(out["loss"], params)

    with torch.no_grad():
        t_tokens = layer_norm(teacher.vit.norm, vit_block_outputs(teacher.vit, clean)[-1])
        t_cls = cls_head(teacher.head, t_tokens[:, 0])
    s_tokens = layer_norm(student.vit.norm, vit_block_outputs(student.vit, corrupted)[-1])
    s_cls = cls_head(student.head, s_tokens[:, 0])
    s_recons = rec_head(student.recon, s_tokens[:, 1:], grid=4, mlp_layers=3)
    s1, s2 = s_cls.chunk(2)
    t1, t2 = t_cls.chunk(2)
    c_loss = official_simclr(s1, t2, 0.2) + official_simclr(s2, t1, 0.2)
    r_loss = official_masked_l1(s_recons, clean, mask)
    ref = c_loss + 5.0 * r_loss
    ref_grads = grads(ref, params)

    assert abs(out["contrastive_loss"].item() - c_loss.item()) < ATOL, (out["contrastive_loss"].item(), c_loss.item())
    assert abs(out["reconstruction_loss"].item() - r_loss.item()) < ATOL
    assert abs(out["loss"].item() - ref.item()) < 5 * ATOL
    assert_same_grads(zoo_grads, ref_grads, names)
    # discriminating: teacher on the corrupted views, or the same view pairs (s1 vs t1), give other numbers
    swapped = official_simclr(s1, t1, 0.2) + official_simclr(s2, t2, 0.2)
    assert abs(swapped.item() - c_loss.item()) > 1e-3


def test_sit_latest_ema_moves_every_teacher_parameter_by_the_cosine_momentum(built):
    method = built["latest"]
    student, teacher = method.student, method.teacher
    before_t = [p.detach().clone() for p in teacher.parameters()]
    s = [p.detach().clone() for p in student.parameters()]
    assert len(before_t) == len(s)
    progress = Progress(3, 10, 0, 10)
    m = 1.0 - (1.0 - 0.996) * 0.5 * (1.0 + math.cos(math.pi * 3 / 10))  # cosine 0.996 -> 1 (utils.cosine_scheduler)
    method.after_step(progress)
    for (name, p), t0, s0 in zip(teacher.named_parameters(), before_t, s):
        assert torch.allclose(p, m * t0 + (1 - m) * s0, atol=1e-7), name


# ----------------------------------------------------------------------------- SiT v1


def test_sit_v1_loss_and_gradients_match_the_official_formulation(built):
    method = built["v1"]
    net, vit = method.net, method.net.vit
    assert method.cfg.temperature == 0.5
    with torch.no_grad():  # learned log-variances away from their common init, so each weight is seen
        method.log_vars.copy_(torch.tensor([0.3, -0.2, 0.7]))
    views = make_views(method, 7)
    corrupted, clean = torch.cat(views.corrupted), torch.cat(views.crops[:2])
    rotations = torch.cat(views.rotations)
    named = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]

    out = method.training_step(views, STEP)
    zoo_grads = grads(out["loss"], params)

    x = layer_norm(vit.norm, vit_block_outputs(vit, corrupted)[-1])
    assert x.shape[1] == 2 + 16  # two extra tokens, no other
    # zoo layout: [class token = contrastive, register token = rotation, patches]
    rot = F.linear(x[:, 1], net.rotation_head.weight, net.rotation_head.bias)
    z = F.linear(x[:, 0], net.contrastive_head.weight, net.contrastive_head.bias)
    assert rot.shape == (16, 4) and z.shape == (16, method.cfg.out_dim)
    recon = rec_head(net.recon, x[:, 2:], grid=4, mlp_layers=0)
    l_rot = cross_entropy(rot, rotations)
    l_con = official_nt_xent(*z.chunk(2), 0.5)
    l_rec = (recon - clean).abs().mean()  # torch.nn.L1Loss(): every pixel, against the rotated clean views
    s = method.log_vars
    adj = torch.tensor([1.0, 1.0, 0.5])
    losses = torch.stack([l_rot, l_con, l_rec])
    ref = (torch.exp(-s * adj) * losses + 0.5 * s).sum()  # 2ec822e calculate_weighted_loss
    ref_grads = grads(ref, params)

    for key, value in zip(("rotation_loss", "contrastive_loss", "reconstruction_loss"), (l_rot, l_con, l_rec)):
        assert abs(out[key].item() - value.item()) < ATOL, (key, out[key].item(), value.item())
    assert abs(out["loss"].item() - ref.item()) < 5 * ATOL
    assert_same_grads(zoo_grads, ref_grads, names)
    # discriminating: the first revision (1767b91: adj exp(-s) L + s / 2) differs in the L1 term
    first = (adj * torch.exp(-s) * losses + 0.5 * s).sum()
    assert abs(first.item() - ref.item()) > 1e-3


def test_sit_v1_target_is_the_rotated_clean_view_and_labels_name_the_rotation(built):
    method = built["v1"]
    batch = random_images(8, seed=8)
    torch.manual_seed(8)
    plain = method.augment(batch.images, batch.sizes)  # what views() draws first, with the same seed
    torch.manual_seed(8)
    views = method.views(batch)
    for crop, base, bad, mask, k in zip(views.crops[:2], plain.crops, views.corrupted, views.corruption_masks,
                                        views.rotations):
        assert k.dtype == torch.long and k.min() >= 0 and k.max() <= 3
        for i in range(8):  # label k: k quarter turns of the augmented view (one direction for all labels)
            assert torch.equal(crop[i], torch.rot90(base[i], int(k[i]), dims=(-2, -1)))
        m = mask.expand_as(crop) == 1
        assert torch.equal(bad[~m], crop[~m])  # the input and the L1 target have one orientation
