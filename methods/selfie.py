"""Selfie (Trinh, Luong & Le, 2019, "Selfie: Self-supervised Pretraining for Image Embedding").

The crop is cut into a grid of patches, split at random into visible and masked ones. The patch
network P (the first three stages of a ResNet) turns every patch into one vector. Attention
pooling (a learned query u0 with the visible vectors through Transformer layers) summarises the
visible patches into u; for masked location i the query is v_i = u + row_emb[r_i] + col_emb[c_i].
The model must pick the patch that belongs at i among the same image's masked patches:
logits_ij = v_i . h'_j, softmax cross-entropy with target j = i. Fine-tuning reuses P (the exported
backbone) as the first three ResNet stages.

Not fixed by the method sheet, so explicit fields with documented choices: the mask count, the
Transformer depth/heads/FFN width, the augmentation and the optimiser.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import timm.optim
import torch
import torch.nn.functional as F
from lightly.models import utils as lu
from torch import nn

from ssl_zoo.augment import MultiViewAugment, Normalize, Views, ViewSpec
from ssl_zoo.backbones.selfie import build_patch_network, per_patch
from ssl_zoo.config import ConfigError, ExperimentConfig, OptimConfig, bounded
from ssl_zoo.data import Batch
from ssl_zoo.masking import random_patch_split
from ssl_zoo.methods.base import Method, image_grid, preview
from ssl_zoo.registry import register
from ssl_zoo.schedules import Progress


def selfie_view(size: int = 224) -> ViewSpec:
    """RandomResizedCrop + flip, no colour augmentation (not on the sheet; a choice: the
    distractors come from the same image, so colour statistics would not help to tell them apart)."""
    return ViewSpec(size=size, scale=(0.08, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0)


class AttentionPooling(nn.Module):
    """u, h_1^out, ..., h_n^out = TransformerLayers(u0, h_1, ..., h_n); returns u.

    Pre-norm layers, GELU, no dropout and no final LayerNorm (choices: the sheet fixes none of it).
    Without a final LayerNorm u starts small and the dot-product logits start closer to uniform: on
    Fashion-MNIST (M = 4, ln M = 1.39) the first 10 steps averaged 4.5 without it and 7.1 with it
    (|u| ~ sqrt(D)), and after 60 steps 1.79 against 2.27.
    """

    def __init__(self, dim: int, depth: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, ffn_dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, n, D) -> u (B, D)."""
        query = self.query.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        return self.transformer(torch.cat([query, tokens], dim=1))[:, 0]


class GridPositions(nn.Module):
    """Learned row + column embeddings: pos(k) = row[k // grid] + col[k % grid] (2g vectors, not g^2)."""

    def __init__(self, grid: int, dim: int) -> None:
        super().__init__()
        self.grid = grid
        self.row = nn.Parameter(torch.zeros(grid, dim))
        self.col = nn.Parameter(torch.zeros(grid, dim))
        nn.init.trunc_normal_(self.row, std=0.02)
        nn.init.trunc_normal_(self.col, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Row-major patch indices (B, M) -> embeddings (B, M, D)."""
        return self.row[idx // self.grid] + self.col[idx % self.grid]


@register("selfie")
class Selfie(Method):
    description = ("Selfie: ResNet stages 1-3 per patch, attention pooling of visible patches, "
                   "pick each masked patch among the image's masked patches (CPC loss)")

    @dataclass
    class Config:
        name: Literal["selfie"] = "selfie"
        patch_size: int = bounded(32, 1)  # paper: 32 px at 224 (7 x 7 = 49 patches), 8 px at 32 (16)
        # choice (not verified): about a quarter of the grid, 12 of 49 (4 of 16 at 32 px): enough
        # distractors for the contrastive choice while most of the image stays visible as context
        num_masked: int = bounded(12, 2)  # >= 2: the other masked patches are the distractors
        depth: int = bounded(3, 1)  # attention-pooling Transformer layers (the paper's 3)
        heads: int = bounded(16, 1)  # choice: 64-wide heads over ResNet-50's 1024 stage-3 features
        ffn_dim: int = bounded(0, 0)  # 0: 4 x the width; the width is P's feature width (v_i . h'_j)
        view: ViewSpec = field(default_factory=selfie_view)
        normalize: Literal["imagenet", "none"] = "imagenet"

        def __post_init__(self) -> None:
            size = self.view.size
            if size % self.patch_size:
                raise ConfigError(f"method.patch_size={self.patch_size} does not divide method.view.size={size}; "
                                  f"valid: a divisor of {size}")
            patches = (size // self.patch_size) ** 2
            if self.num_masked >= patches:
                raise ConfigError(f"method.num_masked={self.num_masked} leaves no visible patch: the "
                                  f"{size}/{self.patch_size} grid has {patches} patches; valid: 2 .. {patches - 1}")

    @classmethod
    def paper_optim(cls) -> OptimConfig:
        """Choice (the sheet leaves the optimiser open): AdamW, as usual for a Transformer on top of a
        ResNet trunk, lr 1e-3 x batch/256, weight decay 0.05 (not on BN, biases, query, positions),
        10 warm-up epochs then cosine."""
        return OptimConfig(name="adamw", base_lr=1e-3, lr_scaling="linear", weight_decay=0.05, warmup_epochs=10,
                           min_lr=1e-6)

    @classmethod
    def default_model(cls) -> dict:
        return {"backbone": "resnet50"}

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> "Selfie":
        return cls(cfg.method, build_patch_network(cfg.model, in_chans=cfg.data.channels))

    def __init__(self, cfg: Config, patch_net: nn.Module) -> None:
        super().__init__(cfg)
        dim = patch_net.num_features
        if dim % cfg.heads:
            raise ConfigError(f"method.heads={cfg.heads} does not divide the patch network's width {dim}; "
                              f"valid: a divisor of {dim}")
        self.patch_net = patch_net
        grid = cfg.view.size // cfg.patch_size
        self.num_patches = grid * grid
        self.pool = AttentionPooling(dim, cfg.depth, cfg.heads, cfg.ffn_dim or 4 * dim)
        self.pos = GridPositions(grid, dim)
        self.augment = MultiViewAugment([cfg.view], cfg.normalize)
        self.normalize = Normalize(cfg.normalize)
        # k-NN embeds the centre crop at the training size through P as a whole-image trunk
        # (fully convolutional + global pool), the way fine-tuning uses it
        self.eval_size = cfg.view.size

    def views(self, batch: Batch) -> Views:
        views = self.augment(batch.images, batch.sizes)
        keep, masked = random_patch_split(len(batch), self.num_patches, self.cfg.num_masked, views.crops[0].device)
        return dataclasses.replace(views, idx_keep=keep, idx_mask=masked)

    def summary_and_logits(self, images: torch.Tensor, idx_keep: torch.Tensor,
                           idx_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u (B, D), the attention pooling's summary of the visible patches, and logits[b, i, j] = v_i . h'_j
        over image b's masked patches: (B, M, M)."""
        feats = per_patch(self.patch_net, images, self.cfg.patch_size)  # P once over all B x N patches
        u = self.pool(lu.get_at_index(feats, idx_keep))
        queries = u[:, None] + self.pos(idx_mask)
        candidates = lu.get_at_index(feats, idx_mask)
        # fp32: the dot products of 1024-wide vectors lose the differences between candidates in bf16
        with torch.autocast(images.device.type, enabled=False):
            return u, torch.einsum("bid,bjd->bij", queries.float(), candidates.float())

    def logits(self, images: torch.Tensor, idx_keep: torch.Tensor, idx_mask: torch.Tensor) -> torch.Tensor:
        """logits[b, i, j] = v_i . h'_j over image b's masked patches: (B, M, M)."""
        return self.summary_and_logits(images, idx_keep, idx_mask)[1]

    @staticmethod
    def loss(logits: torch.Tensor) -> torch.Tensor:
        """Softmax cross-entropy with target j = i, averaged over every masked location of the batch."""
        num = logits.shape[-1]
        target = torch.arange(num, device=logits.device).repeat(logits.shape[0])
        return F.cross_entropy(logits.flatten(0, 1), target)

    def training_step(self, views: Views, progress: Progress) -> dict[str, torch.Tensor]:
        u, logits = self.summary_and_logits(views.crops[0], views.idx_keep, views.idx_mask)
        # collapse diagnostics: u, the summary of the visible patches every query v_i is built from
        return {"loss": self.loss(logits), "embeddings": u.detach()}

    def param_groups(self, optim_cfg: OptimConfig) -> list[dict]:
        """No weight decay on the query u0 and the position embeddings either (like ViT's tokens)."""
        return timm.optim.param_groups_weight_decay(self, weight_decay=optim_cfg.weight_decay,
                                                    no_weight_decay_list=("pool.query", "pos.row", "pos.col"))

    def backbone(self) -> nn.Module:
        """P: a timm ResNet's first three stages + global pool; fine-tuning reuses it as those stages."""
        return self.patch_net

    @preview
    def log_images(self, views: Views) -> dict[str, torch.Tensor]:
        """Rows: the crop; its masked patches blanked; each masked location filled with the patch the
        model picks for it (equal to the crop where every choice is right)."""
        images = views.crops[0][:8]
        keep, masked = views.idx_keep[:8], views.idx_mask[:8]
        choice = self.logits(images, keep, masked).argmax(-1)  # eval mode (@preview): BN statistics untouched
        size = self.cfg.patch_size
        patches = lu.patchify(self.normalize.inverse(images), size)
        blanked = lu.set_at_index(patches, masked, torch.zeros_like(lu.get_at_index(patches, masked)))
        filled = lu.set_at_index(patches, masked, lu.get_at_index(patches, masked.gather(1, choice)))
        rows = [lu.unpatchify(p, size, images.shape[1]) for p in (patches, blanked, filled)]
        return {"selfie/input_masked_choice": image_grid(torch.cat(rows))}
