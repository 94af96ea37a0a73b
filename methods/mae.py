"""MAE (He et al., 2021, "Masked Autoencoders Are Scalable Vision Learners").

The encoder sees CLS + a random 25% of patches; a light decoder fills in mask tokens and
predicts (norm-)pixels; the loss is per-patch MSE averaged over masked patches only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
from lightly.models import utils as lu
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM
from torch import nn

from ssl_zoo.augment import MultiViewAugment, Normalize, Views, ViewSpec
from ssl_zoo.config import ExperimentConfig, OptimConfig, bounded
from ssl_zoo.data import Batch
from ssl_zoo.diagnostics import token_embeddings
from ssl_zoo.masking import masked_and_filled, masked_patch_mse, pixel_targets, random_patch_mask
from ssl_zoo.methods.base import Method, image_grid, preview
from ssl_zoo.registry import register
from ssl_zoo.schedules import Progress


def mae_view(size: int = 224) -> ViewSpec:
    """RandomResizedCrop(0.2, 1) + flip, no colour augmentation."""
    return ViewSpec(size=size, scale=(0.2, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0)


@register("mae")
class MAE(Method):
    description = "MAE: 75% random patch masking, ViT encoder on visible patches, norm-pix MSE on masked ones"
    needs_vit = True

    @dataclass
    class Config:
        name: Literal["mae"] = "mae"
        mask_ratio: float = bounded(0.75, 0.0, 0.99)
        decoder_dim: int = bounded(512, 1)
        decoder_depth: int = bounded(8, 1)
        decoder_heads: int = bounded(16, 1)
        norm_pix_loss: bool = True
        view: ViewSpec = field(default_factory=mae_view)
        normalize: Literal["imagenet", "none"] = "imagenet"

    @classmethod
    def paper_optim(cls) -> OptimConfig:
        return OptimConfig(name="adamw", base_lr=1.5e-4, lr_scaling="linear", betas=(0.9, 0.95),
                           weight_decay=0.05, warmup_epochs=40)

    @classmethod
    def default_model(cls) -> dict:
        return {"backbone": "vit_base_patch16_224"}

    @classmethod
    def backbone_options(cls, cfg: ExperimentConfig) -> dict:
        """The crop size, fixed: the position embedding is a fixed sin-cos grid."""
        return {"img_size": cfg.method.view.size, "dynamic_img_size": False}

    def __init__(self, cfg: Config, vit: nn.Module) -> None:
        super().__init__(cfg)
        # MAE init (xavier on Linear, N(0, .02) tokens) and a fixed 2-D sin-cos position embedding
        self.encoder = MaskedVisionTransformerTIMM(vit=vit, pos_embed_initialization="sincos")
        # The wrapper always makes a mask token; MAE's encoder drops masked patches and never uses it. A
        # trainable parameter without a gradient stops DDP (find_unused_parameters=False) at step 2. Frozen,
        # not deleted: the key stays in the state dict, so checkpoints written before still load.
        self.encoder.mask_token.requires_grad_(False)
        self.patch_size = vit.patch_embed.patch_size[0]
        self.num_patches = vit.patch_embed.num_patches
        self.decoder_embed = nn.Linear(vit.embed_dim, cfg.decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=self.num_patches, embed_dim=cfg.decoder_dim, depth=cfg.decoder_depth,
            num_heads=cfg.decoder_heads, num_prefix_tokens=vit.num_prefix_tokens)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, self.patch_size**2 * vit.patch_embed.proj.in_channels)
        for layer in (self.decoder_embed, self.decoder_pred):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.augment = MultiViewAugment([cfg.view], cfg.normalize)
        self.normalize = Normalize(cfg.normalize)
        self.eval_size = cfg.view.size  # the encoder's position embedding is fixed to this size

    def views(self, batch: Batch) -> Views:
        views = self.augment(batch.images, batch.sizes)
        keep, masked = random_patch_mask(len(batch), self.num_patches, self.cfg.mask_ratio, views.crops[0].device)
        return dataclasses.replace(views, idx_keep=keep, idx_mask=masked)

    def sequence_keep(self, idx_keep: torch.Tensor) -> torch.Tensor:
        """Indices into the encoder's sequence: the prefix tokens (CLS), then the visible patches."""
        prefix = self.encoder.vit.num_prefix_tokens
        first = torch.arange(prefix, device=idx_keep.device).expand(idx_keep.shape[0], -1)
        return torch.cat([first, idx_keep + prefix], 1)

    def encode(self, images: torch.Tensor, idx_keep: torch.Tensor) -> torch.Tensor:
        """The encoder's tokens (B, prefix + kept, D): CLS and the visible patches only."""
        return self.encoder.encode(images, idx_keep=self.sequence_keep(idx_keep))

    def decode(self, encoded: torch.Tensor, idx_keep: torch.Tensor) -> torch.Tensor:
        """Predicted patches (B, N, p*p*C) for every position from the encoded tokens; visible ones are
        predicted too."""
        prefix = self.encoder.vit.num_prefix_tokens
        latent = self.decoder_embed(encoded)
        tokens = lu.repeat_token(self.decoder.mask_token, (encoded.shape[0], self.num_patches + prefix))
        tokens = lu.set_at_index(tokens, self.sequence_keep(idx_keep), latent.to(tokens.dtype))
        decoded = self.decoder.decode(self.decoder.add_pos_embed(tokens))
        return self.decoder_pred(decoded[:, prefix:])

    def reconstruct(self, images: torch.Tensor, idx_keep: torch.Tensor) -> torch.Tensor:
        """Predicted patches (B, N, p*p*C) for every position; visible ones are predicted too."""
        return self.decode(self.encode(images, idx_keep), idx_keep)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        return pixel_targets(images, self.patch_size, self.cfg.norm_pix_loss)

    def masked_loss(self, pred: torch.Tensor, target: torch.Tensor, idx_mask: torch.Tensor) -> torch.Tensor:
        """Per-patch MSE averaged over masked patches only."""
        return masked_patch_mse(pred, target, idx_mask)

    def training_step(self, views: Views, progress: Progress) -> dict[str, torch.Tensor]:
        images = views.crops[0]
        encoded = self.encode(images, views.idx_keep)
        pred = self.decode(encoded, views.idx_keep)
        # collapse diagnostics: the encoder's mean visible patch token
        return {"loss": self.masked_loss(pred, self.targets(images), views.idx_mask),
                "embeddings": token_embeddings(encoded, self.encoder.vit.num_prefix_tokens)}

    def backbone(self) -> nn.Module:
        return self.encoder.vit

    @preview
    def log_images(self, views: Views) -> dict[str, torch.Tensor]:
        images = views.crops[0][:8]
        keep, masked = views.idx_keep[:8], views.idx_mask[:8]
        pred = self.reconstruct(images, keep).float()
        hidden, filled = masked_and_filled(images, pred, masked, self.patch_size, self.cfg.norm_pix_loss)
        rows = [images, hidden, filled]
        return {"mae/input_masked_reconstruction": image_grid(self.normalize.inverse(torch.cat(rows)))}
