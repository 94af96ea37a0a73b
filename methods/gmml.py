"""GMML (Atito et al., 2022, "GMML is All you Need"): group masked model learning.

No mask tokens: the pixels of two crops are corrupted in groups (random blocks of noise, or of
another image of the batch), the whole corrupted image goes through the ViT, and a light head
rebuilds the clean crop from the mean of four intermediate blocks; the L1 loss counts only the
corrupted pixels. Follows the official code (Sara-Ahmed/GMML main.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
from timm.layers import trunc_normal_
from torch import nn

from ssl_zoo.augment import MultiViewAugment, Normalize, Views, ViewSpec
from ssl_zoo.config import ConfigError, ExperimentConfig, OptimConfig, bounded
from ssl_zoo.corruption import GroupCorruption, group_corrupt
from ssl_zoo.data import Batch
from ssl_zoo.diagnostics import token_embeddings
from ssl_zoo.methods.base import Method, image_grid, preview
from ssl_zoo.methods.dino import DINO
from ssl_zoo.registry import register
from ssl_zoo.schedules import Progress


def gmml_view(size: int = 224) -> ViewSpec:
    """Two global crops, scale (0.05, 1) (no local crops), flip, light jitter p=0.3, blur p=0.1."""
    return ViewSpec(size=size, scale=(0.05, 1.0), jitter=(0.1, 0.1, 0.1, 0.01), jitter_p=0.3, gray_p=0.0,
                    blur_p=0.1)


class ReconstructionHead(nn.Module):
    """The official RECHead: [Linear(D, D) + GELU] x layers on patch tokens -> ConvTranspose2d(D, C, p, stride p).

    Turns every patch token back into its p x p pixels, so the output has the input's shape.
    `layers=0` is SiT v1's bare transposed convolution.
    """

    def __init__(self, dim: int, channels: int, patch_size: int, layers: int = 3) -> None:
        super().__init__()
        mlp: list[nn.Module] = []
        for _ in range(layers):
            mlp += [nn.Linear(dim, dim), nn.GELU()]
        self.mlp = nn.Sequential(*mlp)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.to_pixels = nn.ConvTranspose2d(dim, channels, kernel_size=patch_size, stride=patch_size)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """tokens (B, h*w, D) in row-major patch order -> images (B, C, h*p, w*p)."""
        x = self.mlp(tokens).transpose(1, 2).unflatten(2, grid)
        return self.to_pixels(x)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 averaged over corrupted pixels (all channels) only: the official `l1[mask == 1].mean()`.

    mask is (B, 1, H, W), shared by the channels; an all-clean batch gives 0 instead of NaN.
    """
    per_pixel = (pred.float() - target.float()).abs().mean(1, keepdim=True)
    return (per_pixel * mask).sum() / mask.sum().clamp_min(1.0)


def reconstruction_blocks(requested: list[int], depth: int, key: str = "method.recon_blocks") -> list[int]:
    """1-based blocks whose outputs are averaged for reconstruction.

    Empty: the last block and every second one before it, four in all: the paper's 6, 8, 10, 12 for a
    12-block ViT; 2, 4, 6, 8 for 8 blocks; 1, 3, 5, 7 for 7.
    """
    if not requested:
        return sorted(range(depth, 0, -2))[-4:]
    bad = [b for b in requested if not 1 <= b <= depth]
    if bad:
        raise ConfigError(f"{key}: block(s) {bad} out of range for a {depth}-block ViT; valid: 1..{depth}")
    return sorted(set(requested))


def patch_tokens(vit: nn.Module, images: torch.Tensor, blocks: list[int]) -> torch.Tensor:
    """Final norm of the mean of the (pre-norm) outputs of `blocks` (1-based), patch tokens only (B, N, D)."""
    feats = vit.forward_intermediates(images, indices=[b - 1 for b in blocks], norm=False, stop_early=True,
                                      output_fmt="NLC", intermediates_only=True)
    return vit.norm(torch.stack(feats).mean(0))


def corrupt_views(views: Views, spec: GroupCorruption, n: int = 2) -> Views:
    """`views` with GMML-corrupted copies of the first n crops and their masks."""
    corrupted, masks = group_corrupt(torch.cat(views.crops[:n]), spec, views=n)  # all n in one call
    return dataclasses.replace(views, corrupted=list(corrupted.chunk(n)), corruption_masks=list(masks.chunk(n)))


def reconstruction_grid(normalize: Normalize, clean: torch.Tensor, corrupted: torch.Tensor, recon: torch.Tensor,
                        mask: torch.Tensor) -> torch.Tensor:
    """Rows: clean crop, corrupted input, reconstruction, mask (as the official sample images)."""
    rows = normalize.inverse(torch.cat([clean, corrupted, recon.to(clean.dtype)]))
    return image_grid(torch.cat([rows, mask.expand_as(clean).to(rows.dtype)]))


@register("gmml")
class GMML(Method):
    description = "GMML: pixel group corruption (noise / other-image blocks), ViT rebuilds the crop, L1 on corrupted pixels"
    needs_vit = True

    @dataclass
    class Config:
        name: Literal["gmml"] = "gmml"
        corruption: GroupCorruption = field(default_factory=GroupCorruption)
        recon_blocks: list[int] = field(default_factory=list)  # empty: 6, 8, 10, 12 at depth 12 (see reconstruction_blocks)
        head_layers: int = bounded(3, 0)
        view: ViewSpec = field(default_factory=gmml_view)
        normalize: Literal["imagenet", "none"] = "imagenet"

    @classmethod
    def paper_optim(cls) -> OptimConfig:
        """DINO's recipe, which GMML's code keeps: AdamW 5e-4 x bs/256 (min 1e-6), 10 warm-up epochs,
        wd 0.04 -> 0.4, per-parameter clipping 3.0."""
        return DINO.paper_optim()

    @classmethod
    def default_model(cls) -> dict:
        return DINO.default_model()  # ViT-S/16, drop-path 0.1

    @classmethod
    def backbone_options(cls, cfg: ExperimentConfig) -> dict:
        return {"img_size": cfg.method.view.size}

    def __init__(self, cfg: Config, vit: nn.Module) -> None:
        super().__init__(cfg)
        self.vit = vit
        self.blocks = reconstruction_blocks(cfg.recon_blocks, len(vit.blocks))
        self.head = ReconstructionHead(vit.embed_dim, vit.patch_embed.proj.in_channels,
                                       vit.patch_embed.patch_size[0], cfg.head_layers)
        self.augment = MultiViewAugment([cfg.view, cfg.view], cfg.normalize)
        self.normalize = Normalize(cfg.normalize)

    def views(self, batch: Batch) -> Views:
        return corrupt_views(self.augment(batch.images, batch.sizes), self.cfg.corruption)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The patch tokens (B, N, D) the head rebuilds the images from (patch_tokens of `blocks`)."""
        return patch_tokens(self.vit, images, self.blocks)

    def decode(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Images of side `size` rebuilt from their patch tokens."""
        return self.head(tokens, self.vit.patch_embed.dynamic_feat_size(size))

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images), images.shape[-2:])

    def training_step(self, views: Views, progress: Progress) -> dict[str, torch.Tensor]:
        """One pass over both crops; one mean over the corrupted pixels of both (as the official code)."""
        corrupted = torch.cat(views.corrupted)
        tokens = self.encode(corrupted)
        pred = self.decode(tokens, corrupted.shape[-2:])
        # collapse diagnostics: the mean patch token of crop 1 (every token is seen: GMML corrupts, not drops)
        return {"loss": masked_l1(pred, torch.cat(views.crops[:2]), torch.cat(views.corruption_masks)),
                "embeddings": token_embeddings(tokens.chunk(2)[0])}

    def backbone(self) -> nn.Module:
        return self.vit

    @preview
    def log_images(self, views: Views) -> dict[str, torch.Tensor]:
        corrupted = views.corrupted[0][:8]
        recon = self.reconstruct(corrupted).float()
        grid = reconstruction_grid(self.normalize, views.crops[0][:8], corrupted, recon, views.corruption_masks[0][:8])
        return {"gmml/clean_corrupted_reconstruction_mask": grid}
