"""CroCo (Weinzaepfel et al., 2022, "CroCo: Self-Supervised Pre-training for 3D Vision Tasks by
Cross-View Completion"), with the v2 options (RoPE, bigger decoder) of CroCo v2 (2023).

Two images of one scene go through ONE ViT encoder: image 1 with int(0.9 N) patches masked, image 2
whole. The decoder fills image 1's mask tokens while cross-attending to image 2, and the loss is the
norm-pix MSE on image 1's masked patches: what image 1 hides must be found in image 2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ssl_zoo.augment import Normalize, Views, crop_resize, to_unit
from ssl_zoo.augment.color import random_color_jitter
from ssl_zoo.backbones.croco import CrossViewDecoder, MaskedEncoder, build_croco_encoder, croco_init
from ssl_zoo.config import ConfigError, ExperimentConfig, OptimConfig, bounded
from ssl_zoo.data import Batch
from ssl_zoo.data.pairs import SyntheticPairSpec, synthetic_pair_views
from ssl_zoo.diagnostics import token_embeddings
from ssl_zoo.geometry import per_axis
from ssl_zoo.masking import masked_and_filled, masked_patch_mse, pixel_targets, random_patch_split
from ssl_zoo.methods.base import Method, image_grid, preview
from ssl_zoo.methods.mae import MAE
from ssl_zoo.registry import register
from ssl_zoo.schedules import Progress


def random_crops(images: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RandomCrop(size) per image (no resize): (crops, normalised boxes (B, 4) x1, y1, x2, y2)."""
    batch, _, height, width = images.shape
    u = torch.rand(batch, 2, device=images.device)
    corner = torch.floor(torch.stack([u[:, 0] * (width - size + 1), u[:, 1] * (height - size + 1)], 1))
    boxes = torch.cat([corner, corner + size], 1)
    return crop_resize(images, boxes, size, "bilinear"), per_axis(boxes, 1 / width, 1 / height)


class PairAugment(nn.Module):
    """CroCo's `crop224+acolor`: an independent RandomCrop per image, then ColorJitter with factors
    in [0.6, 1.4] (brightness, contrast, saturation; no hue) drawn independently per image (asymmetric).

    Real pairs are cropped from the load size; synthetic pairs come out of `synthetic_pair_views`
    already at `size` and only get the colour jitter.
    """

    def __init__(self, size: int, jitter: tuple[float, float, float, float], synthetic: SyntheticPairSpec,
                 normalize: str) -> None:
        super().__init__()
        self.size, self.synthetic = size, synthetic
        self.jitter = jitter
        self.normalize = Normalize(normalize)

    def color(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # the colour ops are RGB ones
            return random_color_jitter(x.expand(-1, 3, -1, -1), self.jitter, 1.0)[:, :1]
        return random_color_jitter(x, self.jitter, 1.0)

    @torch.no_grad()
    def forward(self, batch: Batch) -> Views:
        first = to_unit(batch.images)
        if batch.pair_images is None:
            first, second, quads = synthetic_pair_views(first, self.size, self.synthetic)
            height, width = batch.images.shape[-2:]
            boxes = [per_axis(torch.cat([q.amin(1), q.amax(1)], 1), 1 / width, 1 / height) for q in quads]
        else:
            first, box1 = random_crops(first, self.size)
            second, box2 = random_crops(to_unit(batch.pair_images), self.size)
            boxes = [box1, box2]
        crops = [self.normalize(self.color(v).clamp(0, 1)) for v in (first, second)]
        no_flip = torch.zeros(len(batch), dtype=torch.bool, device=first.device)
        return Views(crops, boxes, [no_flip, no_flip])


@register("croco")
class CroCo(Method):
    description = "CroCo: cross-view completion, image 1 masked 90% rebuilt from image 2 (real or synthetic pairs)"

    @dataclass
    class Config:
        name: Literal["croco"] = "croco"
        mask_ratio: float = bounded(0.9, 0.0, 0.99)  # int(mask_ratio * N) patches of image 1 masked
        pos_embed: Literal["cosine", "rope"] = "cosine"  # v1 fixed 2-D sin-cos | v2 RoPE on q, k everywhere
        rope_base: float = bounded(100.0, 1.0)
        decoder_dim: int = bounded(512, 1)
        decoder_depth: int = bounded(8, 1)
        decoder_heads: int = bounded(16, 1)
        norm_pix_loss: bool = True
        crop_size: int = bounded(224, 1)
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.0)  # factors in [0.6, 1.4]; no hue
        synthetic: SyntheticPairSpec = field(default_factory=SyntheticPairSpec)  # data.kind=synthetic_pairs
        normalize: Literal["imagenet", "none"] = "imagenet"

    @classmethod
    def paper_optim(cls) -> OptimConfig:
        """MAE's recipe, which CroCo keeps: AdamW (0.9, 0.95), 1.5e-4 x bs/256, wd 0.05, 40 warm-up epochs."""
        return MAE.paper_optim()

    @classmethod
    def default_model(cls) -> dict:
        return MAE.default_model()  # ViT-B/16

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> "CroCo":
        if cfg.data.kind not in ("pairs", "synthetic_pairs"):
            raise ConfigError(f"data.kind: CroCo trains on image pairs, got {cfg.data.kind!r}; "
                              "valid choices: 'pairs', 'synthetic_pairs'")
        if cfg.data.kind == "pairs" and cfg.method.crop_size > cfg.data.load_size:
            raise ConfigError(f"method.crop_size={cfg.method.crop_size} is larger than data.load_size="
                              f"{cfg.data.load_size}: RandomCrop cuts from the loaded image")
        vit = build_croco_encoder(cfg.model, cfg.method.pos_embed, cfg.method.rope_base,
                                  img_size=cfg.method.crop_size, in_chans=cfg.data.channels)
        return cls(cfg.method, vit)

    def __init__(self, cfg: Config, vit: nn.Module) -> None:
        super().__init__(cfg)
        self.encoder = MaskedEncoder(vit)
        grid = self.encoder.grid
        self.num_patches = grid[0] * grid[1]
        self.num_masked = int(cfg.mask_ratio * self.num_patches)
        self.patch_size = vit.patch_embed.patch_size[0]
        patch_dim = self.patch_size**2 * vit.patch_embed.proj.in_channels
        self.decoder = CrossViewDecoder(vit.embed_dim, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, grid,
                                        patch_dim, cfg.pos_embed, cfg.rope_base)
        croco_init(self)
        self.augment = PairAugment(cfg.crop_size, cfg.jitter, cfg.synthetic, cfg.normalize)
        self.normalize = Normalize(cfg.normalize)
        self.eval_size = cfg.crop_size  # the encoder's positions are fixed to this size

    def views(self, batch: Batch) -> Views:
        views = self.augment(batch)
        keep, masked = random_patch_split(len(batch), self.num_patches, self.num_masked, views.crops[0].device)
        return dataclasses.replace(views, idx_keep=keep, idx_mask=masked)

    def reconstruct(self, first: torch.Tensor, second: torch.Tensor, idx_keep: torch.Tensor) -> torch.Tensor:
        """Predicted patches (B, N, p*p*C) of image 1 from its visible patches and the whole image 2."""
        return self.decoder(self.encoder(first, idx_keep), idx_keep, self.encoder(second))

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        return pixel_targets(images, self.patch_size, self.cfg.norm_pix_loss)

    def training_step(self, views: Views, progress: Progress) -> dict[str, torch.Tensor]:
        first, second = views.crops
        masked = views.idx_mask
        visible = self.encoder(first, views.idx_keep)  # reconstruct's steps, keeping image 1's tokens
        pred = self.decoder(visible, views.idx_keep, self.encoder(second))
        # collapse diagnostics: the encoder's mean visible patch token of image 1
        return {"loss": masked_patch_mse(pred, self.targets(first), masked), "embeddings": token_embeddings(visible)}

    def backbone(self) -> nn.Module:
        return self.encoder.vit

    @preview
    def log_images(self, views: Views) -> dict[str, torch.Tensor]:
        first, second = (v[:8] for v in views.crops)
        keep, masked = views.idx_keep[:8], views.idx_mask[:8]
        pred = self.reconstruct(first, second, keep).float()
        hidden, filled = masked_and_filled(first, pred, masked, self.patch_size, self.cfg.norm_pix_loss)
        rows = [hidden, second, filled, first]
        return {"croco/masked_second_reconstruction_first": image_grid(self.normalize.inverse(torch.cat(rows)))}
