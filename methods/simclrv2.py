"""SimCLRv2 (Chen et al., 2020, "Big Self-Supervised Models are Strong Semi-Supervised Learners").

Two views per image, a 3-layer projection head with BN, NT-Xent at tau=0.1 with negatives
gathered from every rank, both directions summed. Optional (the paper's v2 option, off by
default): MoCo-style memory of negatives produced by an EMA copy of encoder and head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
from lightly.models.utils import concat_all_gather
from torch import nn

from ssl_zoo.augment import MultiViewAugment, Normalize, Views, ViewSpec
from ssl_zoo.config import OptimConfig, bounded
from ssl_zoo.contrastive import nt_xent_loss
from ssl_zoo.methods.base import EMA, Method, frozen_copy, linear_bn_relu
from ssl_zoo.registry import register
from ssl_zoo.schedules import Progress


def simclr_view(size: int = 224) -> ViewSpec:
    """SimCLR augmentation at strength s=1: jitter (0.8, 0.8, 0.8, 0.2) p=0.8, gray 0.2, blur 0.5."""
    return ViewSpec(size=size, scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8, gray_p=0.2,
                    blur_p=0.5, blur_sigma=(0.1, 2.0), blur_kernel_frac=0.1)


class ProjectionHeadV2(nn.Sequential):
    """[Linear(no bias) -> BN -> ReLU] x (layers-1) -> Linear(no bias) -> BN without beta.

    SimCLRv2 fine-tunes from the output of the first layer, so the layers stay addressable.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int) -> None:
        blocks: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            blocks.append(linear_bn_relu(dim, hidden_dim))
            dim = hidden_dim
        last_bn = nn.BatchNorm1d(out_dim)
        nn.init.zeros_(last_bn.bias)
        last_bn.bias.requires_grad_(False)  # TF's center=False: scale only
        blocks.append(nn.Sequential(nn.Linear(dim, out_dim, bias=False), last_bn))
        super().__init__(*blocks)


class NegativeQueue(nn.Module):
    """MoCo's memory: a FIFO of L2-normalised keys, used as the negatives of every query.

    Written here rather than taken from lightly's MemoryBankModule: lightly keeps its bank out of
    the state dict (persistent=False), so a resumed run would restart from random negatives and
    not reproduce the uninterrupted run; it also drops the keys that overflow the end of the bank
    instead of wrapping them around.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("keys", nn.functional.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("position", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Enqueue the keys of every rank, overwriting the oldest entries."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            keys = concat_all_gather(keys.contiguous())
        size, count = len(self.keys), len(keys)
        skipped = max(count - size, 0)  # more keys than slots: only the newest survive anyway
        rows = (self.position + skipped + torch.arange(count - skipped, device=keys.device)) % size
        self.keys[rows] = keys[skipped:].to(self.keys.dtype)
        self.position.copy_((self.position + count) % size)

    def contrast(self, queries: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
        """Cross-entropy of each query against its positive key and every queued negative."""
        q = nn.functional.normalize(queries, dim=1)
        k = nn.functional.normalize(positives, dim=1)
        negatives = self.keys.clone()  # push() overwrites the buffer before backward needs it
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ negatives.T], dim=1) / temperature
        return nn.functional.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


@register("simclrv2")
class SimCLRv2(Method):
    description = "SimCLRv2: two views, NT-Xent (tau 0.1) with negatives from all ranks, 3-layer BN head, LARS"

    @dataclass
    class Config:
        name: Literal["simclrv2"] = "simclrv2"
        temperature: float = bounded(0.1, 1e-4)
        head_layers: int = bounded(3, 1)
        head_hidden_dim: int = bounded(0, 0)  # 0: the backbone's feature width d
        out_dim: int = bounded(128, 1)
        gather_distributed: bool = True  # negatives from every rank
        memory_size: int = bounded(0, 0)  # > 0: MoCo-style memory of that many negatives (paper option: 65536)
        memory_momentum: float = bounded(0.999, 0.0, 1.0)  # EMA of the network that fills the memory
        view: ViewSpec = field(default_factory=simclr_view)
        normalize: Literal["none", "imagenet"] = "none"  # the official code feeds [0, 1] pixels

    @classmethod
    def paper_optim(cls) -> OptimConfig:
        return OptimConfig(name="lars", base_lr=0.3, lr_scaling="linear", lr_reference_batch=256,
                           warmup_epochs=10, weight_decay=1e-4, momentum=0.9, lars_eta=0.001)

    @classmethod
    def default_model(cls) -> dict:
        return {"backbone": "resnet50"}

    def __init__(self, cfg: Config, backbone: nn.Module) -> None:
        super().__init__(cfg)
        self.encoder = backbone
        d = backbone.num_features
        self.head = ProjectionHeadV2(d, cfg.head_hidden_dim or d, cfg.out_dim, cfg.head_layers)
        if cfg.memory_size:
            self.momentum_encoder = frozen_copy(self.encoder)
            self.momentum_head = frozen_copy(self.head)
            self.memory = NegativeQueue(cfg.memory_size, cfg.out_dim)
        self.augment = MultiViewAugment([cfg.view, cfg.view], cfg.normalize)
        self.normalize = Normalize(cfg.normalize)

    def loss(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """Official SimCLR loss: both directions summed = 2 x lightly's NT-Xent (which averages them).

        Computed in fp32 outside autocast: bf16 logits divided by tau=0.1 lose the small differences
        between negatives.
        """
        with torch.autocast(z0.device.type, enabled=False):
            return 2.0 * nt_xent_loss(z0.float(), z1.float(), self.cfg.temperature, self.cfg.gather_distributed)

    def memory_loss(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Each view's query against the other view's EMA key and the memory, both directions summed;
        then both views' keys are queued (fp32 outside autocast, like `loss`)."""
        with torch.autocast(queries.device.type, enabled=False):
            q0, q1 = queries.float().chunk(2)
            k0, k1 = nn.functional.normalize(keys.float(), dim=1).chunk(2)
            loss = self.memory.contrast(q0, k1, self.cfg.temperature) + self.memory.contrast(q1, k0, self.cfg.temperature)
        self.memory.push(torch.cat([k1, k0]))
        return loss

    def training_step(self, views: Views, progress: Progress) -> dict[str, torch.Tensor]:
        both = torch.cat(views.crops[:2])
        z = self.head(self.encoder(both))
        # collapse diagnostics: the projection-head output of view 1, what NT-Xent acts on
        embeddings = z.chunk(2)[0].detach()
        if not self.cfg.memory_size:
            return {"loss": self.loss(*z.chunk(2)), "embeddings": embeddings}
        with torch.no_grad():
            keys = self.momentum_head(self.momentum_encoder(both))
        return {"loss": self.memory_loss(z, keys), "embeddings": embeddings}

    def ema(self) -> list[EMA]:
        """With the memory: encoder and head each followed by their momentum copy."""
        if not self.cfg.memory_size:
            return []
        return [EMA(online, f"momentum_{online}", self.cfg.memory_momentum) for online in ("encoder", "head")]

    def backbone(self) -> nn.Module:
        return self.encoder

    def finetune_head(self) -> nn.Module | None:
        """SimCLRv2 fine-tunes from the output of the first projection-head layer (not the backbone)."""
        return self.head[0] if len(self.head) > 1 else None
