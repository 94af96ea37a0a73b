"""SimCLRv2 (Chen et al., 2020, "Big Self-Supervised Models are Strong Semi-Supervised Learners").

Two views per image, a 3-layer projection head with BN, NT-Xent at tau=0.1 with negatives
gathered from every rank, both directions summed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from lightly.loss import NTXentLoss
from torch import nn

from ssl_zoo.augment import MultiViewAugment, Normalize, Views, ViewSpec
from ssl_zoo.backbones import build_backbone
from ssl_zoo.config import ExperimentConfig, OptimConfig, bounded
from ssl_zoo.methods.base import Method, linear_bn_relu
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
        view: ViewSpec = field(default_factory=simclr_view)
        normalize: Literal["none", "imagenet"] = "none"  # the official code feeds [0, 1] pixels

    @classmethod
    def paper_optim(cls) -> OptimConfig:
        return OptimConfig(name="lars", base_lr=0.3, lr_scaling="linear", lr_reference_batch=256,
                           warmup_epochs=10, weight_decay=1e-4, momentum=0.9, lars_eta=0.001)

    @classmethod
    def default_model(cls) -> dict:
        return {"backbone": "resnet50"}

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> "SimCLRv2":
        return cls(cfg.method, build_backbone(cfg.model, in_chans=cfg.data.channels))

    def __init__(self, cfg: Config, backbone: nn.Module) -> None:
        super().__init__(cfg)
        self.encoder = backbone
        d = backbone.num_features
        self.head = ProjectionHeadV2(d, cfg.head_hidden_dim or d, cfg.out_dim, cfg.head_layers)
        self.ntxent = NTXentLoss(temperature=cfg.temperature, gather_distributed=cfg.gather_distributed)
        self.augment = MultiViewAugment([cfg.view, cfg.view], cfg.normalize)
        self.normalize = Normalize(cfg.normalize)

    def loss(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """Official SimCLR loss: both directions summed = 2 x lightly's NT-Xent (which averages them).

        Computed in fp32 outside autocast: bf16 logits divided by tau=0.1 lose the small differences
        between negatives.
        """
        with torch.autocast(z0.device.type, enabled=False):
            return 2.0 * self.ntxent(z0.float(), z1.float())

    def training_step(self, views: Views, progress: Progress) -> dict[str, torch.Tensor]:
        both = torch.cat(views.crops[:2])
        z0, z1 = self.head(self.encoder(both)).chunk(2)
        return {"loss": self.loss(z0, z1)}

    def backbone(self) -> nn.Module:
        return self.encoder

    def finetune_head(self) -> nn.Module | None:
        """SimCLRv2 fine-tunes from the output of the first projection-head layer (not the backbone)."""
        return self.head[0] if len(self.head) > 1 else None
