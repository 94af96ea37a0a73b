"""The optimisers: lightly's LARS rule without host syncs, and AdamW steps that read nothing on the host."""

from __future__ import annotations

import copy

import pytest
import torch
from lightly.utils.lars import LARS

from ssl_zoo.config import OptimConfig
from ssl_zoo.lars import SyncFreeLARS
from ssl_zoo.optim import build_optimizer
from tests.host_syncs import HostSyncCounter


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 3))
    with torch.no_grad():
        model[2].bias.zero_()  # a zero-norm parameter: lightly leaves its gradient as it is
    return model


def _groups(model: torch.nn.Module) -> list[dict]:
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay}, {"params": rest, "weight_decay": 0.0}]


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5) -> None:
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(8, 6, generator=gen)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        if step == 2:
            model[0].weight.grad.zero_()  # a zero gradient norm on a decayed weight
        optimizer.step()


@pytest.mark.parametrize("nesterov", [False, True])
def test_sync_free_lars_follows_lightlys_updates(nesterov):
    ours, theirs = _model(), _model()
    kw = dict(lr=0.3, momentum=0.9, weight_decay=1e-2, trust_coefficient=1e-3, nesterov=nesterov)
    _train(ours, SyncFreeLARS(_groups(ours), **kw))
    _train(theirs, LARS(_groups(theirs), **kw))
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(ours[0].weight, _model()[0].weight)  # it did train


def test_lars_state_is_lightlys_so_old_checkpoints_load():
    model = _model()
    theirs = LARS(_groups(model), lr=0.1, momentum=0.9, weight_decay=1e-2)
    _train(model, theirs, steps=1)
    ours = SyncFreeLARS(_groups(model), lr=0.1, momentum=0.9, weight_decay=1e-2)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    _train(model, ours, steps=1)  # continues from the loaded momentum buffers
    assert all("momentum_buffer" in s for s in ours.state.values())


@pytest.mark.parametrize("name", ["lars", "adamw", "sgd"])
def test_an_optimizer_step_reads_nothing_on_the_host(name):
    model = _model()
    optimizer = build_optimizer(_groups(model), OptimConfig(name=name, base_lr=0.1, weight_decay=1e-2))
    _train(model, optimizer, steps=1)  # the first step creates state
    model(torch.randn(8, 6)).pow(2).mean().backward()
    with HostSyncCounter() as syncs:
        optimizer.step()
    assert syncs.total == 0, dict(syncs.calls)


def test_the_counter_counts_what_it_must():
    x = torch.arange(6.0)
    with HostSyncCounter() as syncs:
        x.sum().item()
        bool(x[0] > 1)
        x[x > 2]
        torch.tensor([1.0, 2.0], device=x.device)
        torch.tensor([1.0, 2.0])  # stays on the CPU: not counted
        torch.where(x > 1)
        torch.where(x > 1, x, 0.0)  # three arguments: no sync
        x.tolist()
    assert syncs.calls == {"item": 1, "__bool__": 1, "boolean-mask indexing": 1, "tensor": 1, "where": 1,
                           "tolist": 1}
