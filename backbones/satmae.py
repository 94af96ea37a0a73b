"""SatMAE++'s networks (Noman et al., 2024, "Rethinking Transformers Pre-training for Multi-Spectral
Satellite Imagery"; group-channel ViT from SatMAE, Cong et al., 2022).

timm has no ViT whose tokens are (band group x location), so the encoder is written here from timm's
PatchEmbed and Block. Parameter names and shapes follow the official `MaskedAutoencoderGroupChannelViT`
encoder (patch_embed.{g}.proj, cls_token, pos_embed (1, L+1, D-256) with a zero CLS row,
channel_embed (1, G, 256), blocks.N, norm), so official weights load without renaming. The encoder is
registered with timm (`satmae_group_vit_{tiny,small,base,large}_p8`): `timm.create_model`, and so the
hub's `rebuild_backbone`, can build it.

Decoder and multi-scale head (pretraining only): official `decoder_embed, mask_token, decoder_pos_embed,
decoder_channel_embed, decoder_blocks, decoder_norm, decoder_pred` are here `embed, mask_token, pos_embed,
channel_embed, blocks, norm, pred` of GroupChannelDecoder; `proj_up_conv, proj_up_norm, up_block1/2`
(RGB: `up_block`) keep their names in MultiScaleHead.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from lightly.models import utils as lu
from lightly.models.modules.masked_vision_transformer_timm import init_weights
from timm.layers import LayerNorm2d, PatchEmbed
from timm.models import register_model
from timm.models.vision_transformer import Block
from torch import nn

from ssl_zoo.config import ConfigError

SENTINEL_GROUPS = ((0, 1, 2, 6), (3, 4, 5, 7), (8, 9))  # (B2,B3,B4,B8) | (B5,B6,B7,B8A) | (B11,B12) of 10 kept
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def fixed(table: np.ndarray) -> nn.Parameter:
    """A fixed (never trained) embedding table (1, n, d); a Parameter so it is in the state dict, as officially."""
    return nn.Parameter(torch.from_numpy(table).float()[None], requires_grad=False)


def check_split(total: int, group_dim: int, where: str) -> None:
    """[2-D sin-cos position (total - group_dim) | 1-D sin-cos group (group_dim)] needs both parts valid."""
    pos = total - group_dim
    if group_dim < 2 or group_dim % 2 or pos < 4 or pos % 4:
        raise ConfigError(f"{where}: width {total} cannot hold a group embedding of {group_dim} (even, >= 2) and a "
                          f"2-D position embedding of {pos} (a multiple of 4, >= 4)")


def position_group_table(pos: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(1, G*L, D) token encodings, group-major: token g*L + l gets [pos[1 + l] | group[g]]."""
    locations = pos.shape[1] - 1
    pos_part = pos[:, 1:].unsqueeze(1).expand(-1, num_groups, -1, -1)
    group_part = group[:, :num_groups].unsqueeze(2).expand(-1, -1, locations, -1)
    return torch.cat([pos_part, group_part], -1).flatten(1, 2)


class GroupChannelViT(nn.Module):
    """ViT over band groups: each group has its own PatchEmbed, every (group, location) is a token with
    [2-D sin-cos position | 1-D sin-cos group index] added (concatenated, fixed), plus a CLS token.

    `forward` (evaluation) returns the final-normed CLS feature of all tokens (or a classifier on it);
    `forward_features(x, idx_keep)` encodes only the kept tokens (SatMAE++ pretraining)."""

    def __init__(self, groups: list[list[int]] | tuple = SENTINEL_GROUPS, img_size: int = 96, patch_size: int = 8,
                 in_chans: int | None = None, embed_dim: int = 1024, depth: int = 24, num_heads: int = 16,
                 mlp_ratio: float = 4.0, group_embed_dim: int = 256, drop_path_rate: float = 0.0,
                 num_classes: int = 0) -> None:
        super().__init__()
        self.groups = [list(g) for g in groups]
        bands = sum(len(g) for g in self.groups)
        if in_chans is not None and in_chans != bands:
            raise ConfigError(f"the band groups {self.groups} hold {bands} bands but the input has {in_chans}")
        check_split(embed_dim, group_embed_dim, "encoder")
        self.in_chans, self.embed_dim, self.num_features = bands, embed_dim, embed_dim
        self.patch_embed = nn.ModuleList(PatchEmbed(img_size, patch_size, len(g), embed_dim) for g in self.groups)
        # the bands group by group, on the model's device: indexing with the Python lists would copy them to
        # the device on every call (a host sync on CUDA, seen by benchmarks/gpu_check.py)
        self.register_buffer("band_order", torch.tensor([b for g in self.groups for b in g]), persistent=False)
        grid = self.patch_embed[0].grid_size[0]
        self.num_patches = self.patch_embed[0].num_patches  # locations per group
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = fixed(lu.get_2d_sine_cosine_positional_embedding(embed_dim - group_embed_dim, grid, True))
        self.channel_embed = fixed(lu.get_1d_sine_cosine_positional_embedding_from_positions(
            group_embed_dim, np.arange(len(self.groups), dtype=np.float32)))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=r,
                                          norm_layer=LayerNorm) for r in rates)
        self.norm = LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        mae_init(self)

    @property
    def patch_size(self) -> int:
        return self.patch_embed[0].patch_size[0]

    def split_groups(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, C, ...) in band order -> one (B, len(group), ...) per group."""
        return x.index_select(1, self.band_order).split([len(g) for g in self.groups], 1)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, G*L, D): per-group patch embeddings plus their position and group encodings."""
        per_group = self.split_groups(images)
        embedded = torch.stack([embed(bands) for embed, bands in zip(self.patch_embed, per_group)], 1)
        return embedded.flatten(1, 2) + position_group_table(self.pos_embed, self.channel_embed, len(self.groups))

    def forward_features(self, images: torch.Tensor, idx_keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1 + K, D) final-normed CLS + the kept tokens (all G*L when idx_keep is None)."""
        x = self.tokens(images)
        if idx_keep is not None:
            x = lu.get_at_index(x, idx_keep)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], 1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images)[:, 0])


def mae_init(module: nn.Module) -> None:
    """The official (MAE) init: xavier Linear, unit LayerNorm, patch projections like a Linear, CLS and
    mask tokens N(0, 0.02)."""
    module.apply(init_weights)
    for m in module.modules():
        if isinstance(m, PatchEmbed):
            nn.init.xavier_uniform_(m.proj.weight.view(m.proj.weight.shape[0], -1))
        for name in ("cls_token", "mask_token"):
            token = getattr(m, name, None)
            if isinstance(token, nn.Parameter):
                nn.init.normal_(token, std=0.02)


class GroupChannelDecoder(nn.Module):
    """Linear(enc -> dec); mask tokens at the removed (group, location) tokens; [pos | group] encodings (the
    CLS gets the zero position row and group index G); Blocks; LN; one Linear per group to its bands x p^2.
    Returns predictions in BAND order, (B, C, L, p^2). (The official code concatenates the groups' outputs
    in group order and scores channel k against band k, which differs from its bands whenever groups are
    not contiguous; here each group's outputs go to its own bands, as the paper describes.)"""

    def __init__(self, groups: list[list[int]], grid: int, enc_dim: int, dim: int = 512, depth: int = 8,
                 heads: int = 16, group_embed_dim: int = 128, patch_size: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        check_split(dim, group_embed_dim, "decoder")
        self.groups, self.num_patches = groups, grid * grid
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = fixed(lu.get_2d_sine_cosine_positional_embedding(dim - group_embed_dim, grid, True))
        self.channel_embed = fixed(lu.get_1d_sine_cosine_positional_embedding_from_positions(
            group_embed_dim, np.arange(len(groups) + 1, dtype=np.float32)))  # the extra index: the CLS token
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
                                    for _ in range(depth))
        self.norm = LayerNorm(dim)
        self.pred = nn.ModuleList(nn.Linear(dim, len(g) * patch_size**2) for g in groups)
        band_order = torch.tensor([b for g in groups for b in g])
        self.register_buffer("to_bands", torch.argsort(band_order), persistent=False)
        mae_init(self)

    def forward(self, latent: torch.Tensor, idx_keep: torch.Tensor) -> torch.Tensor:
        """latent (B, 1 + K, enc) from the encoder, idx_keep (B, K) -> (B, C, L, p^2)."""
        x = self.embed(latent)
        batch, groups = x.shape[0], len(self.groups)
        tokens = lu.repeat_token(self.mask_token, (batch, groups * self.num_patches)).to(x.dtype)
        tokens = lu.set_at_index(tokens, idx_keep, x[:, 1:])
        cls_code = torch.cat([self.pos_embed[:, :1], self.channel_embed[:, groups:]], -1)
        codes = torch.cat([cls_code, position_group_table(self.pos_embed, self.channel_embed, groups)], 1)
        x = torch.cat([x[:, :1], tokens], 1) + codes
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)[:, 1:].unflatten(1, (groups, self.num_patches))  # (B, G, L, dim)
        per_group = [head(x[:, i]).unflatten(-1, (len(g), -1))
                     for i, (head, g) in enumerate(zip(self.pred, self.groups))]
        return torch.cat(per_group, 2)[:, :, self.to_bands].transpose(1, 2)  # (B, C, L, p^2)


class ResidualBlock(nn.Module):
    """x + 0.5 * conv2(ReLU(conv1 x)), 3x3 convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.5 * self.conv2(F.relu(self.conv1(x)))


class UpsampleBlock(nn.Module):
    """ConvT(k4, s2, p1) + LN + LeakyReLU(0.01); residual block; LN -> features for the next block, and
    Conv3x3 to the image bands at twice the input size."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.up_conv = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)
        self.up_norm = LayerNorm2d(channels, eps=1e-6)
        self.res_block = ResidualBlock(channels)
        self.res_norm = LayerNorm2d(channels, eps=1e-6)
        self.proj_out = nn.Conv2d(channels, out_channels, 3, padding=1)
        for m in self.modules():  # official: xavier on the Conv2d layers (not the transposed one)
            if type(m) is nn.Conv2d:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.leaky_relu(self.up_norm(self.up_conv(x)), 0.01)
        x = self.res_norm(self.res_block(x))
        return x, self.proj_out(x)


class MultiScaleHead(nn.Module):
    """SatMAE++'s multi-scale reconstruction: Conv1x1(C -> ratio*C) + GELU + channels-first LN on the full
    predicted image, then `blocks` UpsampleBlocks, each giving the image at the next x2 scale."""

    def __init__(self, channels: int, blocks: int, ratio: int = 4) -> None:
        super().__init__()
        width = channels * ratio
        self.proj_up_conv = nn.Conv2d(channels, width, 1)
        self.proj_up_norm = LayerNorm2d(width, eps=1e-6)
        self.names = ["up_block"] if blocks == 1 else [f"up_block{i + 1}" for i in range(blocks)]  # official names
        for name in self.names:
            self.add_module(name, UpsampleBlock(width, channels))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> [(B, C, 2H, 2W), (B, C, 4H, 4W), ...]."""
        x = self.proj_up_norm(F.gelu(self.proj_up_conv(image)))
        outputs = []
        for name in self.names:
            x, out = getattr(self, name)(x)
            outputs.append(out)
        return outputs


ARCHITECTURES = tuple(f"satmae_group_vit_{size}_p8" for size in ("tiny", "small", "base", "large"))  # registered below


def _create(embed_dim: int, depth: int, num_heads: int, pretrained: bool = False, /, **kwargs) -> GroupChannelViT:
    """The named size; keyword arguments override any constructor argument (e.g. depth in tests)."""
    if pretrained:
        raise ValueError("no timm weights for SatMAE++ encoders; load them through ssl_zoo.hub")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm.create_model's extras
        kwargs.pop(key, None)
    args = {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads, "patch_size": 8, **kwargs}
    return GroupChannelViT(**args)


@register_model
def satmae_group_vit_tiny_p8(pretrained: bool = False, **kwargs) -> GroupChannelViT:
    return _create(192, 12, 3, pretrained, **kwargs)


@register_model
def satmae_group_vit_small_p8(pretrained: bool = False, **kwargs) -> GroupChannelViT:
    return _create(384, 12, 6, pretrained, **kwargs)


@register_model
def satmae_group_vit_base_p8(pretrained: bool = False, **kwargs) -> GroupChannelViT:
    return _create(768, 12, 12, pretrained, **kwargs)


@register_model
def satmae_group_vit_large_p8(pretrained: bool = False, **kwargs) -> GroupChannelViT:
    """The paper's encoder: ViT-L (1024 wide, 24 blocks, 16 heads), 96 px, p = 8, 10 bands in 3 groups."""
    return _create(1024, 24, 16, pretrained, **kwargs)
