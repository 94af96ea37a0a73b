"""SimCLR's NT-Xent loss without a data-dependent shape.

Why not lightly's NTXentLoss as it is: it drops each view's similarity to itself with boolean-mask
indexing (`logits[~diag_mask]`), whose output size the host must read from the device: a sync on
every step. Here those entries are set to -inf instead, which removes them from the softmax exactly
(exp(-inf) = 0) and keeps every shape fixed; the positives sit in the first block, so the labels are
lightly's. The gathering across ranks is lightly's (`lightly.utils.dist.gather`, gradients flow back).
tests/test_contrastive.py checks the loss equals lightly's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.utils import dist


def nt_xent_loss(out0: torch.Tensor, out1: torch.Tensor, temperature: float,
                 gather_distributed: bool = False) -> torch.Tensor:
    """Mean over the 2n anchors of the cross-entropy of each view against its partner among all 2m - 1
    other views of the (gathered) batch. out0, out1: (n, D) two views of the same n images; m = n x ranks
    with `gather_distributed`, else n."""
    n = out0.shape[0]
    out0, out1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
    rank = 0
    if gather_distributed and dist.world_size() > 1:
        out0_all, out1_all = torch.cat(dist.gather(out0), 0), torch.cat(dist.gather(out1), 0)
        self_mask, rank = dist.eye_rank(n, device=out0.device), dist.rank()
    else:
        out0_all, out1_all = out0, out1
        self_mask = torch.eye(n, device=out0.device, dtype=torch.bool)
    logits_01, logits_10 = out0 @ out1_all.T / temperature, out1 @ out0_all.T / temperature
    logits_00 = (out0 @ out0_all.T / temperature).masked_fill(self_mask, float("-inf"))
    logits_11 = (out1 @ out1_all.T / temperature).masked_fill(self_mask, float("-inf"))
    logits = torch.cat([torch.cat([logits_01, logits_00], 1), torch.cat([logits_10, logits_11], 1)], 0)
    labels = (torch.arange(n, device=out0.device) + rank * n).repeat(2)
    return F.cross_entropy(logits, labels)
