"""CroCo's networks (Weinzaepfel et al., 2022; v2 2023): a shared masked ViT encoder, no CLS, and
the cross-view decoder.

Encoder: a plain timm model, so the hub exports it as is:
- v1 `cosine`: timm VisionTransformer (class_token=False, avg pool, norm on the tokens) with a fixed
  2-D sin-cos position embedding (lightly's MAE initialiser);
- v2 `rope`: timm's axial RoPE ViT (`vit_*_patch16_rope_224`, an Eva) without CLS, layer scale or
  absolute position embedding, RoPE base 100 on q and k in every attention, y/x halves of each head
  rotated with the rotate-half layout as in CroCo's RoPE2D (same frequencies 100^(-4k/head_dim); the
  channels pair up in another order, so official checkpoints need a fixed permutation of q/k rows).
Decoder: timm has no block with cross-attention, so it is written here; its RoPE is timm's
`RotaryEmbeddingCat` with the encoder's settings.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from lightly.models import utils as lu
from lightly.models.modules.masked_vision_transformer_timm import init_weights
from timm.layers import Mlp
from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, apply_rot_embed_cat
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ssl_zoo.backbones import adapt_stem, build_backbone
from ssl_zoo.config import ConfigError, ModelConfig

PosEmbed = Literal["cosine", "rope"]


def encoder_args(pos_embed: PosEmbed, rope_base: float = 100.0) -> dict:
    """timm constructor arguments of CroCo's encoder (also what official CroCo weights load into)."""
    common = {"class_token": False, "global_pool": "avg", "dynamic_img_size": False}
    if pos_embed == "cosine":
        return {**common, "fc_norm": False}
    return {**common, "use_fc_norm": False, "init_values": None, "use_abs_pos_emb": False,
            "rope_temperature": rope_base, "rope_grid_indexing": "ij", "rope_rotate_half": True}


def build_croco_encoder(cfg: ModelConfig, pos_embed: PosEmbed, rope_base: float = 100.0, img_size: int = 224,
                        in_chans: int = 3) -> nn.Module:
    """The timm ViT CroCo encodes both images with: no class token, mean-pooled features for k-NN."""
    arch = VisionTransformer if pos_embed == "cosine" else Eva
    hint = ("a timm VisionTransformer, e.g. vit_base_patch16_224" if pos_embed == "cosine"
            else "a timm RoPE ViT, e.g. vit_base_patch16_rope_224")
    try:
        vit = build_backbone(cfg, in_chans=in_chans, img_size=img_size, **encoder_args(pos_embed, rope_base))
    except TypeError as e:
        raise ConfigError(f"model.backbone: CroCo with method.pos_embed={pos_embed} needs {hint}, "
                          f"got {cfg.backbone!r} ({e})") from e
    if type(vit) is not arch or (pos_embed == "rope" and vit.rope is None):
        raise ConfigError(f"model.backbone: CroCo with method.pos_embed={pos_embed} needs {hint}, got {cfg.backbone!r}")
    if pos_embed == "rope":  # CroCo has no LayerScale; timm's RoPE ViTs default to it
        adapt_stem(vit, "no_layer_scale")
        vit.zoo_spec = dataclasses.replace(vit.zoo_spec, stem="no_layer_scale")
    return vit


class MaskedEncoder(nn.Module):
    """Encode only the kept patches of a timm ViT without prefix tokens (CroCo's `_encode_image`).

    Positions are attached before dropping tokens: the fixed sin-cos embedding is added, or each kept
    token keeps its RoPE angle.
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        if vit.pos_embed is not None:  # v1: fixed 2-D sin-cos, never trained
            lu.initialize_positional_embedding(pos_embedding=vit.pos_embed, strategy="sincos", num_prefix_tokens=0)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.vit.patch_embed.grid_size)

    def forward(self, images: torch.Tensor, idx_keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, D) final-normed tokens of the kept patches (all N when idx_keep is None)."""
        x = self.vit.patch_embed(images)
        if self.vit.pos_embed is not None:
            x = x + self.vit.pos_embed
        rope = self.vit.rope.get_embed() if getattr(self.vit, "rope", None) is not None else None
        if idx_keep is not None:
            x = lu.get_at_index(x, idx_keep)
            if rope is not None:  # (N, 2 hd) -> (B, 1, K, 2 hd): broadcast over heads
                rope = lu.get_at_index(rope.expand(x.shape[0], -1, -1), idx_keep)[:, None]
        x = self.vit.norm_pre(x)
        for block in self.vit.blocks:
            x = block(x) if rope is None else block(x, rope=rope)
        return self.vit.norm(x)


def rope_embedding(head_dim: int, grid: tuple[int, int], base: float = 100.0,
                   offset: float = 0.0) -> RotaryEmbeddingCat:
    """Axial RoPE over a patch grid with the encoder's settings; `offset` translates every position."""
    return RotaryEmbeddingCat(head_dim, temperature=base, in_pixels=False, feat_shape=list(grid),
                              grid_offset=offset, grid_indexing="ij", rotate_half=True)


class Attention(nn.Module):
    """Multi-head attention of queries from x over keys/values from `context` (= x for self-attention),
    RoPE applied to q and k when given."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"method.decoder_dim={dim} must be divisible by method.decoder_heads={heads}")
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, N, hd)

    def project(self, x: torch.Tensor, context: torch.Tensor, rope_x: torch.Tensor | None = None,
                rope_context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head q, k (rotated by position), v."""
        q, k, v = self._split(self.q(x)), self._split(self.k(context)), self._split(self.v(context))
        if rope_x is not None:
            q = apply_rot_embed_cat(q, rope_x, half=True)
            k = apply_rot_embed_cat(k, rope_context, half=True)
        return q, k, v

    def forward(self, x: torch.Tensor, context: torch.Tensor, rope_x: torch.Tensor | None = None,
                rope_context: torch.Tensor | None = None) -> torch.Tensor:
        out = F.scaled_dot_product_attention(*self.project(x, context, rope_x, rope_context))
        return self.proj(out.transpose(1, 2).flatten(2))


class DecoderBlock(nn.Module):
    """x += SelfAttn(LN x); x += CrossAttn(q = LN x, k = v = LN_y y); x += MLP(LN x); y passes unchanged."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.norm_y, self.cross_attn = nn.LayerNorm(dim), nn.LayerNorm(dim), Attention(dim, heads)
        self.norm3, self.mlp = nn.LayerNorm(dim), Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, y: torch.Tensor, rope_x: torch.Tensor | None = None,
                rope_y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm1(x)
        x = x + self.attn(h, h, rope_x, rope_x)
        x = x + self.cross_attn(self.norm2(x), self.norm_y(y), rope_x, rope_y)
        x = x + self.mlp(self.norm3(x))
        return x, y


class CrossViewDecoder(nn.Module):
    """Shared Linear(enc -> dec) for both images; image 1 = mask tokens with its visible features put
    back; positions (sin-cos added, or RoPE); blocks; LN; Linear(dec -> p^2 C) on every token."""

    def __init__(self, enc_dim: int, dim: int, depth: int, heads: int, grid: tuple[int, int], patch_dim: int,
                 pos_embed: PosEmbed, rope_base: float = 100.0) -> None:
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.num_patches = grid[0] * grid[1]
        self.rope = rope_embedding(dim // heads, grid, rope_base) if pos_embed == "rope" else None
        sincos = lu.get_2d_sincos_pos_embed(dim, grid[0], cls_token=False) if pos_embed == "cosine" else None
        fixed = None if sincos is None else torch.from_numpy(sincos).float()[None]  # (1, N, dim)
        self.register_buffer("pos_embed", fixed, persistent=False)
        self.blocks = nn.ModuleList(DecoderBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_dim)

    def forward(self, visible1: torch.Tensor, idx_keep: torch.Tensor, feat2: torch.Tensor) -> torch.Tensor:
        """(B, K, enc) visible tokens of image 1 at idx_keep, (B, N, enc) image 2 -> (B, N, p^2 C)."""
        x = self.mask_token.expand(visible1.shape[0], self.num_patches, -1).to(visible1.dtype)
        x = lu.set_at_index(x, idx_keep, self.embed(visible1).to(x.dtype))
        y = self.embed(feat2)
        if self.pos_embed is not None:
            x, y = x + self.pos_embed, y + self.pos_embed
        rope = self.rope.get_embed() if self.rope is not None else None  # one grid: both images
        for block in self.blocks:
            x, y = block(x, y, rope, rope)
        return self.pred(self.norm(x))


def croco_init(module: nn.Module) -> None:
    """CroCo's (MAE's) init: xavier-uniform Linear with zero bias, unit LayerNorm, the patch projection
    initialised like a Linear, mask tokens N(0, 0.02)."""
    module.apply(init_weights)
    for m in module.modules():
        proj = getattr(getattr(m, "patch_embed", None), "proj", None)
        if isinstance(proj, nn.Conv2d):
            nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        if isinstance(m, CrossViewDecoder):
            nn.init.normal_(m.mask_token, std=0.02)
