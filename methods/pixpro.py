"""PixPro (Xie et al., 2021, "Propagate Yourself: Exploring Pixel-Level Consistency for
Unsupervised Visual Representation Learning").

Two BYOL-augmented views; every feature bin of the online ResNet C5 map is projected (1x1-conv
MLP), smoothed by the pixel propagation module (PPM) and pulled towards the momentum branch's
projections of the bins of the OTHER view that lie at the same place in the original image.
Positives come from the crop boxes the on-device augmentation records (ssl_zoo.geometry).

Momentum encoder timing: the official code (contrast/models/PixPro.py, `_momentum_update_key_encoder`)
updates it at the start of each forward, step k with m = 1 - (1 - m0) (cos(pi k / K) + 1) / 2, i.e. before
the step that reads it. The zoo applies that same update after the previous optimiser step (EMA
`before_forward`: after step t with m(t + 1), none after the last step), so the key encoder of every step
is the official one; the official first update (k = 0) is a no-op, the key encoder starting as a copy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ssl_zoo.augment import MultiViewAugment, Normalize, Views, ViewSpec
from ssl_zoo.backbones import is_vit
from ssl_zoo.config import ConfigError, ExperimentConfig, OptimConfig, bounded
from ssl_zoo.geometry import bin_centres, positive_bins
from ssl_zoo.methods.base import EMA, Method, eval_mode, frozen_copy, image_grid, preview
from ssl_zoo.methods.dino import dino_global_views
from ssl_zoo.registry import register
from ssl_zoo.schedules import Cosine, Progress


def pixpro_views(size: int = 224) -> list[ViewSpec]:
    """BYOL views (blur 1.0 / blur 0.1 + solarize 0.2) at crop scale (0.08, 1), bilinear as in the
    official torchvision pipeline."""
    return [dataclasses.replace(v, scale=(0.08, 1.0), interpolation="bilinear") for v in dino_global_views(size)]


class DenseProjector(nn.Sequential):
    """1x1 conv(in -> hidden) + BN + ReLU + 1x1 conv(hidden -> out): the projection head applied to
    every feature bin (the official MLP2d; both convs keep their bias)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(nn.Conv2d(in_dim, hidden_dim, 1), nn.BatchNorm2d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden_dim, out_dim, 1))


class DenseEncoder(nn.Module):
    """Backbone C5 feature MAP (timm `forward_features`, not the pooled vector) -> dense projector."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone.forward_features(images))


class PixelPropagation(nn.Module):
    """PPM: y_i = sum_j max(cos(x_i, x_j), 0)^gamma * g(x_j), g a 1x1 conv with bias.

    The official code L2-normalises g(x_j) per bin before the sum (`normalize_values`); the paper's
    equation does not show it. The result is L2-normalised by the loss."""

    def __init__(self, dim: int, gamma: float, normalize_values: bool) -> None:
        super().__init__()
        self.gamma = gamma
        self.normalize_values = normalize_values
        self.transform = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = self.transform(x)
        if self.normalize_values:
            values = F.normalize(values, dim=1)
        keys = F.normalize(x, dim=1).flatten(2)  # (B, C, N)
        similarity = torch.einsum("bci,bcj->bij", keys, keys).clamp(min=0).pow(self.gamma)
        return torch.einsum("bij,bcj->bci", similarity, values.flatten(2)).view_as(values)


def pixpro_loss(y: torch.Tensor, target: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """-2 * mean_b [ sum_ij A_ij cos(y_i, x'_j) / (sum_ij A_ij + 1e-6) ] for one direction.

    y: (B, C, h, w) propagated online bins; target: (B, C, h', w') momentum bins (no gradient);
    positives A: (B, h*w, h'*w'). A sample without positives adds 0 but still counts in the mean.
    """
    y = F.normalize(y.float().flatten(2), dim=1)
    target = F.normalize(target.float().flatten(2), dim=1)
    with torch.autocast(y.device.type, enabled=False):  # autocast would run the einsum in bf16 / fp16
        cos = torch.einsum("bci,bcj->bij", y, target)
    a = positives.to(cos.dtype)
    return -2.0 * ((cos * a).sum((1, 2)) / (a.sum((1, 2)) + 1e-6)).mean()


@register("pixpro")
class PixPro(Method):
    description = ("PixPro: pixel-to-propagation consistency between bins at the same image location, "
                   "momentum encoder, LARS")

    @dataclass
    class Config:
        name: Literal["pixpro"] = "pixpro"
        hidden_dim: int = bounded(4096, 1)
        out_dim: int = bounded(256, 1)
        gamma: float = bounded(2.0, 0.0)  # PPM sharpness
        positive_radius: float = bounded(0.7, 0.0)  # T: centre distance / larger bin diagonal
        normalize_values: bool = True  # official code: g(x_j) L2-normalised inside the PPM
        momentum: Cosine = field(default_factory=lambda: Cosine(start=0.99, end=1.0))
        views: list[ViewSpec] = field(default_factory=pixpro_views)
        normalize: Literal["imagenet", "none"] = "imagenet"

        def __post_init__(self) -> None:
            if len(self.views) != 2:
                raise ConfigError(f"method.views: PixPro uses exactly 2 views, got {len(self.views)}; valid: 2")

    @classmethod
    def paper_optim(cls) -> OptimConfig:
        return OptimConfig(name="lars", base_lr=1.0, lr_scaling="linear", lr_reference_batch=256, warmup_epochs=5,
                           weight_decay=1e-5, momentum=0.9, lars_eta=0.001)

    @classmethod
    def default_model(cls) -> dict:
        return {"backbone": "resnet50"}

    @classmethod
    def make_backbone(cls, cfg: ExperimentConfig) -> nn.Module:
        backbone = super().make_backbone(cfg)
        if is_vit(backbone):
            raise ConfigError(f"model.backbone: PixPro needs a CNN with a C5 feature map (e.g. resnet50), "
                              f"got {cfg.model.backbone!r}")
        return backbone

    def __init__(self, cfg: Config, backbone: nn.Module) -> None:
        super().__init__(cfg)
        self.online = DenseEncoder(backbone, DenseProjector(backbone.num_features, cfg.hidden_dim, cfg.out_dim))
        self.momentum_encoder = frozen_copy(self.online)
        self.propagation = PixelPropagation(cfg.out_dim, cfg.gamma, cfg.normalize_values)
        self.augment = MultiViewAugment(list(cfg.views), cfg.normalize)
        self.normalize = Normalize(cfg.normalize)

    def positives(self, views: Views, grids: tuple[tuple[int, int], tuple[int, int]]) -> torch.Tensor:
        """(B, bins of view 1, bins of view 2): bins at the same place in the original image."""
        return positive_bins(views.boxes[0], grids[0], views.boxes[1], grids[1], self.cfg.positive_radius)

    def training_step(self, views: Views, progress: Progress) -> dict[str, torch.Tensor]:
        # one forward per view, as the official code: BN statistics are per view
        x1, x2 = views.crops[:2]
        y1, y2 = self.propagation(self.online(x1)), self.propagation(self.online(x2))
        with torch.no_grad():
            t1, t2 = self.momentum_encoder(x1), self.momentum_encoder(x2)
        a12 = self.positives(views, (tuple(y1.shape[-2:]), tuple(y2.shape[-2:])))
        loss = pixpro_loss(y1, t2, a12) + pixpro_loss(y2, t1, a12.transpose(1, 2))
        # collapse diagnostics: view 1's propagated bins (what the loss pulls to the momentum bins), averaged
        # over the feature map; no teacher distribution here (a cosine loss, no softmax targets)
        return {"loss": loss, "embeddings": y1.detach().mean(dim=(2, 3))}

    def ema(self) -> list[EMA]:
        return [EMA("online", "momentum_encoder", self.cfg.momentum, before_forward=True)]  # see the module docstring

    def backbone(self) -> nn.Module:
        """The online encoder, which the official code exports for transfer (`module.encoder.`)."""
        return self.online.backbone

    @torch.no_grad()
    def feature_grid(self, crop: torch.Tensor) -> tuple[int, int]:
        """The C5 grid of a crop, from one image in eval mode (BN running statistics untouched)."""
        with eval_mode(self):
            return tuple(self.online.backbone.forward_features(crop[:1]).shape[-2:])

    @preview
    def log_images(self, views: Views) -> dict[str, torch.Tensor]:
        """Row 1: view 1, every bin that has a positive coloured by its centre in the original image
        (red = x, green = y); row 2: view 2, each bin in the mean colour of its view-1 partners.
        Bins without a positive are darkened, so equal colours across rows are the positive pairs."""
        n = 8
        crops = [self.normalize.inverse(c[:n].float()).clamp(0, 1) for c in views.crops[:2]]
        grids = tuple(self.feature_grid(c) for c in views.crops[:2])
        sub = Views(crops, [b[:n] for b in views.boxes[:2]], [f[:n] for f in views.flips[:2]])
        a = self.positives(sub, grids).float()  # (n, N1, N2)
        centres = bin_centres(sub.boxes[0], grids[0])
        colour1 = torch.cat([centres, 1 - centres[..., :1]], -1).clamp(0, 1)  # (n, N1, 3)
        colour2 = torch.einsum("bij,bic->bjc", a, colour1) / a.sum(1).clamp(min=1)[..., None]
        rows = [paint_bins(crops[0], colour1, a.sum(2) > 0, grids[0]),
                paint_bins(crops[1], colour2, a.sum(1) > 0, grids[1])]
        return {"pixpro/positive_pairs_view1_view2": image_grid(torch.cat(rows), nrow=len(crops[0]))}


def paint_bins(images: torch.Tensor, colours: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Blend each feature bin's colour (B, h*w, 3) over its area of the image; bins not kept are darkened."""
    b, _, height, width = images.shape
    rgb = images.mean(1, keepdim=True).expand(-1, 3, -1, -1) if images.shape[1] != 3 else images
    paint = colours.transpose(1, 2).reshape(b, 3, *grid)
    mask = keep.float().reshape(b, 1, *grid)
    paint, mask = (F.interpolate(t, size=(height, width), mode="nearest") for t in (paint, mask))
    return mask * (0.5 * rgb + 0.5 * paint) + (1 - mask) * 0.3 * rgb
