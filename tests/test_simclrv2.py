import json
import math

import pytest
import torch
from lightly.loss import NTXentLoss

from ssl_zoo.experiment import load_config
from ssl_zoo.methods.base import build_method
from ssl_zoo.optim import scaled_lr
from ssl_zoo.trainer import Trainer
from tests.conftest import tiny_config


def test_identical_embeddings_give_2_ln_2n_minus_1(tmp_path):
    method = build_method(load_config(tiny_config("simclrv2", tmp_path)))
    n = 16
    z = torch.nn.functional.normalize(torch.randn(1, 32), dim=1).expand(n, -1)
    loss = method.loss(z, z.clone())
    assert loss.item() == pytest.approx(2 * math.log(2 * n - 1), rel=1e-5)


def test_loss_is_twice_lightly_ntxent(tmp_path):
    method = build_method(load_config(tiny_config("simclrv2", tmp_path)))
    z0, z1 = torch.randn(8, 32), torch.randn(8, 32)
    reference = NTXentLoss(temperature=method.cfg.temperature)(z0, z1)
    assert torch.allclose(method.loss(z0, z1), 2 * reference)


def test_hand_computed_ntxent():
    """Both directions summed, averaged over the batch, tau-scaled cosine logits."""
    from ssl_zoo.methods.simclrv2 import SimCLRv2

    torch.manual_seed(0)
    z0, z1 = torch.randn(4, 8), torch.randn(4, 8)
    tau = 0.1
    z = torch.nn.functional.normalize(torch.cat([z0, z1]), dim=1)
    sim = z @ z.T / tau
    sim.fill_diagonal_(-float("inf"))
    n = 4
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    per_anchor = torch.nn.functional.cross_entropy(sim, targets, reduction="none")
    expected = per_anchor[:n].mean() + per_anchor[n:].mean()
    loss = 2 * NTXentLoss(temperature=tau)(z0, z1)
    assert torch.allclose(loss, expected, atol=1e-5)
    assert SimCLRv2.Config().temperature == tau


def test_head_is_three_layers_without_linear_bias_and_last_bn_without_beta():
    cfg = load_config({"method": {"name": "simclrv2"}})
    assert cfg.model.backbone == "resnet50" and cfg.method.out_dim == 128 and cfg.method.head_layers == 3
    assert cfg.method.view.scale == (0.08, 1.0) and cfg.method.view.blur_p == 0.5
    assert cfg.method.normalize == "none"
    from ssl_zoo.methods.simclrv2 import ProjectionHeadV2

    head = ProjectionHeadV2(2048, 2048, 128, 3)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and all(m.bias is None for m in linears)
    assert [tuple(m.weight.shape) for m in linears] == [(2048, 2048), (2048, 2048), (128, 2048)]
    last_bn = head[-1][-1]
    assert not last_bn.bias.requires_grad and torch.all(last_bn.bias == 0)


def test_paper_lr_at_batch_4096_is_4_8():
    cfg = load_config({"method": {"name": "simclrv2"}})
    assert cfg.optim.name == "lars" and cfg.optim.weight_decay == 1e-4 and cfg.optim.warmup_epochs == 10
    assert scaled_lr(cfg.optim, 4096) == pytest.approx(4.8)


def test_zero_init_last_bn_gamma_in_residual_blocks(tmp_path):
    method = build_method(load_config(tiny_config("simclrv2", tmp_path)))
    for block in [*method.encoder.layer1, *method.encoder.layer4]:
        assert torch.all(block.bn2.weight == 0)


def test_short_fashion_mnist_run_loss_decreases(tmp_path):
    cfg = load_config(tiny_config("simclrv2", tmp_path, data="fashion_mnist",
                                  train={"max_steps": 40, "batch_size": 64, "log_every": 5}))
    result = Trainer(cfg, progress_bar=False).fit()
    losses = [json.loads(line)["loss"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2


def test_memory_loss_against_hand_computed_moco_logits(tmp_path):
    from tests.conftest import tiny_method

    method = tiny_method("simclrv2", tmp_path, memory_size=6)
    tau = method.cfg.temperature
    torch.manual_seed(0)
    queued = method.memory.keys.clone()
    q, k = torch.randn(8, 32), torch.randn(8, 32)
    loss = method.memory_loss(q, k)

    qn, kn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(k, dim=1)
    expected = 0.0
    for query, key in [(qn[:4], kn[4:]), (qn[4:], kn[:4])]:  # each view against the other view's key
        logits = torch.cat([(query * key).sum(1, keepdim=True), query @ queued.T], 1) / tau
        expected = expected + torch.nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(loss, expected, atol=1e-5)
    # 8 keys into a memory of 6: the oldest 2 are overwritten again, position wraps to 2
    assert int(method.memory.position) == 2
    pushed = torch.cat([kn[4:], kn[:4]])
    assert torch.allclose(method.memory.keys[2:6], pushed[2:6]) and torch.allclose(method.memory.keys[:2], pushed[6:])


def test_memory_network_is_an_ema_without_gradients_and_resumes_exactly(tmp_path):
    from tests.conftest import tiny_method
    from tests.test_trainer import assert_stop_and_resume_matches_straight_run

    method = tiny_method("simclrv2", tmp_path, memory_size=64, memory_momentum=0.9)
    before = {k: v.clone() for k, v in method.momentum_encoder.state_dict().items()}
    online = {k: v.clone() for k, v in method.encoder.state_dict().items()}
    method.after_step(None)
    for key, value in method.momentum_encoder.state_dict().items():
        if value.is_floating_point() and "running" not in key:
            assert torch.allclose(value, 0.9 * before[key] + 0.1 * online[key]), key
    assert not any(p.requires_grad for p in [*method.momentum_encoder.parameters(), *method.momentum_head.parameters()])
    assert {"memory.keys", "memory.position"} <= set(method.state_dict())  # checkpointed with the model

    raw = tiny_config("simclrv2", tmp_path, train={"max_steps": 6, "ckpt_every": 100, "threads": 1})
    raw["method"]["memory_size"] = 64
    assert_stop_and_resume_matches_straight_run(raw, stop_after=2)
