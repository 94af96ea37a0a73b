"""NT-Xent with fixed shapes equals lightly's NTXentLoss, gradients included, with no host sync."""

from __future__ import annotations

import pytest
import torch
from lightly.loss import NTXentLoss

from ssl_zoo.contrastive import nt_xent_loss
from tests.host_syncs import HostSyncCounter


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_equals_lightlys_loss_and_gradients(temperature):
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(12, 16, generator=g, requires_grad=True), torch.randn(12, 16, generator=g, requires_grad=True)
    ours = nt_xent_loss(z0, z1, temperature)
    ours_grads = torch.autograd.grad(ours, (z0, z1))
    theirs = NTXentLoss(temperature=temperature)(z0, z1)
    theirs_grads = torch.autograd.grad(theirs, (z0, z1))
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b)


def test_nt_xent_reads_nothing_on_the_host():
    z0, z1 = torch.randn(8, 4), torch.randn(8, 4)
    with HostSyncCounter() as syncs:
        nt_xent_loss(z0, z1, 0.2)
    assert syncs.total == 0, dict(syncs.calls)
