"""SatMAE++ (Noman et al., CVPR 2024, "Rethinking Transformers Pre-training for Multi-Spectral Satellite
Imagery").

Group variant (multispectral): a 384 crop (scale 0.6-1) + flip is the x4 target, halved to the x2 target
(192) and again to the model input (96). The bands are split into groups, each group's patches are tokens
with [position | group] encodings; 75% of the (group, location) tokens are masked, independently per group
or at the same locations in every group. The decoder predicts each group's bands; the masked MSE is per
patch, averaged over the group's bands, then over the masked (group, location) tokens. The whole
prediction, as an image, goes through the multi-scale head, scored with L1 against the x2 and x4 targets
(0.5 each). Loss = 0.6 MSE + 0.4 L1.
RGB variant: plain MAE (224 input, p = 16) plus one upsample block to 448, L1 against the x2 image.

One class each under the registry name `satmae_pp` (`method.variant` picks): SatMAEPP (group, the
default) and SatMAEPPRGB; the MultiScaleMAE base holds what they share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from lightly.models import utils as lu
from torch import nn

from ssl_zoo.augment import Normalize, ViewAugment, Views, ViewSpec
from ssl_zoo.backbones.satmae import SENTINEL_GROUPS, GroupChannelDecoder, GroupChannelViT, MultiScaleHead
from ssl_zoo.config import ConfigError, ExperimentConfig, OptimConfig, bounded
from ssl_zoo.data import Batch
from ssl_zoo.diagnostics import token_embeddings
from ssl_zoo.masking import masked_and_filled, random_patch_mask
from ssl_zoo.methods.base import Method, image_grid, preview
from ssl_zoo.methods.mae import MAE
from ssl_zoo.registry import register
from ssl_zoo.schedules import Progress


def satmae_view() -> ViewSpec:
    """The official Sentinel recipe: RandomResizedCrop(384, scale 0.6-1, bicubic) + flip, nothing else."""
    return ViewSpec(size=384, scale=(0.6, 1.0), interpolation="bicubic", jitter_p=0.0, gray_p=0.0, blur_p=0.0)


def halve(images: torch.Tensor) -> torch.Tensor:
    """The official downsampling: bilinear x0.5 (align_corners=False, no antialias) = the mean of each 2x2."""
    return F.interpolate(images, scale_factor=0.5, mode="bilinear", align_corners=False)


def band_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, L, p^2): each band's patches, row-major locations and pixels (official order)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(b, c, (h // p) * (w // p), p * p)


def unpatchify_bands(patches: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Inverse of band_patches for a square grid."""
    b, c, n, _ = patches.shape
    g, p = int(n**0.5), patch_size
    return patches.reshape(b, c, g, g, p, p).permute(0, 1, 2, 4, 3, 5).reshape(b, c, g * p, g * p)


SplitGroups = Callable[[torch.Tensor], Sequence[torch.Tensor]]


def group_masked_mse(pred: torch.Tensor, target: torch.Tensor, split_groups: SplitGroups,
                     idx_mask: torch.Tensor) -> torch.Tensor:
    """pred/target (B, C, L, p^2): per-patch MSE, averaged over each group's bands -> (B, G*L) group-major,
    then averaged over the masked tokens (every image masks the same count). `split_groups` cuts (B, C, L)
    into the groups' (B, len(g), L) (GroupChannelViT.split_groups)."""
    err = (pred - target).pow(2).mean(-1)
    per_token = torch.stack([bands.mean(1) for bands in split_groups(err)], 1).flatten(1)
    return torch.gather(per_token, 1, idx_mask).mean()


def consistent_mask(batch: int, num_groups: int, num_patches: int, mask_ratio: float,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random locations masked in every group: token indices g*L + l, group-major (official order)."""
    keep, masked = random_patch_mask(batch, num_patches, mask_ratio, device)
    offsets = torch.arange(num_groups, device=device)[None, :, None] * num_patches
    return (keep[:, None] + offsets).flatten(1), (masked[:, None] + offsets).flatten(1)


def check_groups(groups: list[list[int]], channels: int) -> None:
    """Every kept band in exactly one group, indices in range."""
    flat = [b for g in groups for b in g]
    bad = [b for b in flat if not 0 <= b < channels]
    if bad or not all(groups):
        raise ConfigError(f"method.groups={groups}: indices must lie in [0, {channels}) (data.channels={channels}), "
                          "groups must not be empty")
    if sorted(flat) != list(range(channels)):
        missing = sorted(set(range(channels)) - set(flat))
        repeated = sorted({b for b in flat if flat.count(b) > 1})
        raise ConfigError(f"method.groups={groups}: every band must be in exactly one group "
                          f"(missing {missing}, repeated {repeated})")


@dataclass
class MultiScaleMAEConfig:
    """The fields both algorithms' configs have."""

    name: Literal["satmae_pp"] = "satmae_pp"
    variant: str = ""  # each algorithm's Literal
    mask_ratio: float = bounded(0.75, 0.0, 0.99)
    decoder_dim: int = bounded(512, 1)
    decoder_depth: int = bounded(8, 1)
    decoder_heads: int = bounded(16, 1)
    norm_pix_loss: bool = False  # official default (main_pretrain.py)
    upsample_ratio: int = bounded(4, 1)  # multi-scale head width = ratio x bands
    mse_weight: float = bounded(0.6, 0.0)
    l1_weight: float = bounded(0.4, 0.0)
    view: ViewSpec = field(default_factory=satmae_view)  # crop = the largest target
    normalize: Literal["none", "imagenet", "fmow_rgb"] = "none"  # multispectral: already scaled in the loader


class MultiScaleMAE(Method):
    """What SatMAE++'s two algorithms share: one crop + flip halved once per upsample block into a pyramid
    (input, x2 target, x4 target), the input's tokens masked, the multi-scale head on the whole prediction
    as an image, loss = mse_weight x masked MSE + l1_weight x the mean L1 over the upscales, evaluation on
    the whole image resized to the model input, and the preview. Subclasses hold the encoder and decoder
    (registered before `add_head`'s modules: the parameter order is the one checkpoints were written in)
    and say how they mask, encode, decode, score and turn a prediction into an image."""

    upsample_blocks: ClassVar[int]  # multi-scale head blocks: x2 (and x4)
    default_patch_size: ClassVar[int]

    @classmethod
    def paper_optim(cls) -> OptimConfig:
        return OptimConfig(name="adamw", base_lr=1e-4, lr_scaling="linear", betas=(0.9, 0.95), weight_decay=0.05,
                           warmup_epochs=20)

    @classmethod
    def default_model(cls) -> dict:
        return {"backbone": "satmae_group_vit_large_p8"}

    @classmethod
    def model_input(cls, cfg: ExperimentConfig) -> int:
        """The encoder's input side: the crop halved once per upsample block."""
        return cfg.method.view.size // 2**cls.upsample_blocks

    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> None:
        """Crop, model size and colour options that fit the pyramid and the band count."""
        m, channels, factor = cfg.method, cfg.data.channels, 2**cls.upsample_blocks
        patch = cfg.model.patch_size or cls.default_patch_size
        if m.view.size % (factor * patch):
            raise ConfigError(f"method.view.size={m.view.size} must be a multiple of {factor} x the patch size "
                              f"{patch}: the model input is view.size / {factor}")
        size = cls.model_input(cfg)
        if cfg.model.img_size and cfg.model.img_size != size:
            raise ConfigError(f"model.img_size={cfg.model.img_size} differs from the model input {size} "
                              f"(method.view.size / {factor}); leave it 0")
        if channels not in (1, 3) and (m.view.jitter_p or m.view.gray_p or m.view.blur_p):
            raise ConfigError(f"method.view: colour jitter, grayscale and blur need RGB; with {channels} bands "
                              "set jitter_p, gray_p and blur_p to 0")

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> "MultiScaleMAE":
        cls.check_config(cfg)
        return super().from_config(cfg)

    def add_head(self, channels: int) -> None:
        """The multi-scale head (after the networks), the crop and the evaluation size."""
        cfg = self.cfg
        self.head = MultiScaleHead(channels, self.upsample_blocks, cfg.upsample_ratio)
        self.crop = ViewAugment(cfg.view, cfg.normalize)
        self.normalize = Normalize(cfg.normalize)
        self.eval_size = cfg.view.size // 2**self.upsample_blocks  # the model input

    # training inputs are downsampled 60-100% crops: evaluation shows the whole image at the model input (a
    # centre crop of the load size would show a quarter of it at a 4x finer scale)
    eval_resize = True

    # ---- what subclasses say ----------------------------------------------------------------
    preview_bands: list[int]  # the bands shown as RGB
    num_prefix_tokens: int  # the encoder's tokens before the patches (CLS)

    def mask(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx_keep, idx_mask) over the encoder's tokens."""
        return random_patch_mask(batch, self.num_tokens, self.cfg.mask_ratio, device)

    def encode(self, images: torch.Tensor, idx_keep: torch.Tensor) -> torch.Tensor:
        """The encoder's tokens (B, prefix + kept, D): CLS and the visible tokens only."""
        raise NotImplementedError

    def decode(self, encoded: torch.Tensor, idx_keep: torch.Tensor) -> torch.Tensor:
        """Predicted patches for every token (visible ones too) from the encoded tokens."""
        raise NotImplementedError

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def masked_mse(self, pred: torch.Tensor, target: torch.Tensor, idx_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def as_image(self, pred: torch.Tensor) -> torch.Tensor:
        """The whole prediction as an image (B, C, H, W), the multi-scale head's input."""
        raise NotImplementedError

    def hidden_and_filled(self, images: torch.Tensor, pred: torch.Tensor,
                          idx_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input blanked where masked, and filled there with the prediction."""
        raise NotImplementedError

    # ---- views and loss -----------------------------------------------------------------------
    def reconstruct(self, images: torch.Tensor, idx_keep: torch.Tensor) -> torch.Tensor:
        """Predicted patches for every token from the visible ones (the subclass's `decode` layout)."""
        return self.decode(self.encode(images, idx_keep), idx_keep)

    def views(self, batch: Batch) -> Views:
        """crops = [input, x2 target, (x4 target)]: one crop + flip, halved repeatedly; plus the mask."""
        big, boxes, flips = self.crop(batch.images, batch.sizes)
        pyramid = [big]
        for _ in self.head.names:
            pyramid.insert(0, halve(pyramid[0]))
        keep, masked = self.mask(len(batch), big.device)
        n = len(pyramid)
        return Views(pyramid, [boxes] * n, [flips] * n, idx_keep=keep, idx_mask=masked)

    def training_step(self, views: Views, progress: Progress) -> dict[str, torch.Tensor]:
        images, *upscaled = views.crops
        encoded = self.encode(images, views.idx_keep)
        pred = self.decode(encoded, views.idx_keep)
        mse = self.masked_mse(pred, self.targets(images), views.idx_mask)
        outputs = self.head(self.as_image(pred))
        l1 = sum(F.l1_loss(out, target) for out, target in zip(outputs, upscaled)) / len(outputs)
        loss = self.cfg.mse_weight * mse + self.cfg.l1_weight * l1
        # collapse diagnostics: the encoder's mean visible token
        return {"loss": loss, "mse": mse.detach(), "l1": l1.detach(),
                "embeddings": token_embeddings(encoded, self.num_prefix_tokens)}

    # ---- evaluation and images ------------------------------------------------------------
    def rgb(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize.inverse(images)[:, self.preview_bands]

    @preview
    def log_images(self, views: Views) -> dict[str, torch.Tensor]:
        """Input | masked | reconstruction at the model input, and target | prediction at every upscale."""
        images = views.crops[0][:8]
        keep, masked = views.idx_keep[:8], views.idx_mask[:8]
        pred = self.reconstruct(images, keep).float()
        hidden, filled = self.hidden_and_filled(images, pred, masked)
        grids = {"satmae_pp/input_masked_reconstruction": image_grid(self.rgb(torch.cat([images, hidden, filled])))}
        for scale, (out, target) in enumerate(zip(self.head(self.as_image(pred)), views.crops[1:]), 1):
            grids[f"satmae_pp/x{2**scale}_target_prediction"] = image_grid(self.rgb(torch.cat([target[:8], out])))
        return grids


@register("satmae_pp", variant="group", default=True)
class SatMAEPP(MultiScaleMAE):
    description = "SatMAE++: group-channel MAE with multi-scale (x2, x4) reconstruction for multispectral images"
    upsample_blocks = 2
    default_patch_size = 8

    @dataclass
    class Config(MultiScaleMAEConfig):
        variant: Literal["group"] = "group"  # multispectral group-channel ViT (rgb: plain MAE on RGB)
        groups: list[list[int]] = field(default_factory=lambda: [list(g) for g in SENTINEL_GROUPS])
        mask_mode: Literal["independent", "consistent"] = "independent"  # per group | same locations in all
        group_embed_dim: int = bounded(256, 2)  # encoder: [pos (D - this) | group (this)]
        decoder_group_embed_dim: int = bounded(128, 2)
        preview_bands: tuple[int, int, int] = (2, 1, 0)  # tensorboard RGB (Sentinel kept bands B4, B3, B2)

    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> None:
        super().check_config(cfg)
        m, channels = cfg.method, cfg.data.channels
        if max(m.preview_bands) >= channels:
            raise ConfigError(f"method.preview_bands={list(m.preview_bands)}: valid band indices are 0..{channels - 1}")
        check_groups(m.groups, channels)

    @classmethod
    def backbone_options(cls, cfg: ExperimentConfig) -> dict:
        m = cfg.method
        return {"img_size": cls.model_input(cfg), "patch_size": cfg.model.patch_size or cls.default_patch_size,
                "groups": m.groups, "group_embed_dim": m.group_embed_dim}

    @classmethod
    def make_backbone(cls, cfg: ExperimentConfig) -> nn.Module:
        vit = super().make_backbone(cfg)
        if not isinstance(vit, GroupChannelViT):
            raise ConfigError(f"model.backbone: the group variant needs satmae_group_vit_{{tiny,small,base,large}}_p8, "
                              f"got {cfg.model.backbone!r}")
        return vit

    def __init__(self, cfg: Config, vit: GroupChannelViT) -> None:
        super().__init__(cfg)
        self.encoder = vit
        self.decoder = GroupChannelDecoder(vit.groups, vit.patch_embed[0].grid_size[0], vit.embed_dim,
                                           cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads,
                                           cfg.decoder_group_embed_dim, vit.patch_size)
        self.patch_size = vit.patch_size
        self.num_tokens = len(vit.groups) * vit.num_patches
        self.add_head(vit.in_chans)
        self.preview_bands = list(cfg.preview_bands)
        self.num_prefix_tokens = 1  # GroupChannelViT's CLS

    def mask(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Over the (group, location) tokens, group-major; per group or the same locations in every group."""
        if self.cfg.mask_mode == "consistent":
            return consistent_mask(batch, len(self.encoder.groups), self.encoder.num_patches, self.cfg.mask_ratio,
                                   device)
        return super().mask(batch, device)

    def encode(self, images: torch.Tensor, idx_keep: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_features(images, idx_keep)

    def decode(self, encoded: torch.Tensor, idx_keep: torch.Tensor) -> torch.Tensor:
        """Predicted patches for every token, (B, C, L, p^2) in band order."""
        return self.decoder(encoded, idx_keep)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        patches = band_patches(images, self.patch_size)
        if not self.cfg.norm_pix_loss:
            return patches
        per_location = lu.normalize_mean_var(patches.transpose(1, 2).flatten(2), dim=-1)  # over all bands
        return per_location.unflatten(-1, (patches.shape[1], -1)).transpose(1, 2)

    def masked_mse(self, pred: torch.Tensor, target: torch.Tensor, idx_mask: torch.Tensor) -> torch.Tensor:
        return group_masked_mse(pred, target, self.encoder.split_groups, idx_mask)

    def as_image(self, pred: torch.Tensor) -> torch.Tensor:
        return unpatchify_bands(pred, self.patch_size)

    def backbone(self) -> nn.Module:
        return self.encoder

    def hidden_and_filled(self, images: torch.Tensor, pred: torch.Tensor,
                          idx_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each band blanked where its group's token is masked, and filled there with the prediction."""
        groups, locations = len(self.encoder.groups), self.encoder.num_patches
        token_mask = torch.zeros(images.shape[0], groups * locations, device=images.device)
        token_mask = token_mask.scatter_(1, idx_mask, 1.0).unflatten(1, (groups, locations))
        band_group = torch.tensor([next(i for i, g in enumerate(self.encoder.groups) if b in g)
                                   for b in range(images.shape[1])], device=images.device)
        band_mask = token_mask[:, band_group, :, None].expand(-1, -1, -1, self.patch_size**2)
        mask = unpatchify_bands(band_mask, self.patch_size).bool()
        full = unpatchify_bands(pred, self.patch_size).to(images.dtype)
        return images.masked_fill(mask, 0.0), torch.where(mask, full, images)


@register("satmae_pp", variant="rgb")
class SatMAEPPRGB(MultiScaleMAE):
    description = "SatMAE++ RGB: MAE (ViT, 75% masking) plus one upsample block, L1 against the x2 image"
    upsample_blocks = 1
    default_patch_size = 16
    needs_vit = True
    # the group algorithm's, in configs saved when one class held both
    retired_keys = frozenset({"groups", "mask_mode", "group_embed_dim", "decoder_group_embed_dim", "preview_bands"})

    @dataclass
    class Config(MultiScaleMAEConfig):
        variant: Literal["rgb"] = "rgb"  # plain MAE on RGB (group: the multispectral group-channel ViT)

    @classmethod
    def backbone_options(cls, cfg: ExperimentConfig) -> dict:
        return {"img_size": cls.model_input(cfg), "dynamic_img_size": False}

    @classmethod
    def make_backbone(cls, cfg: ExperimentConfig) -> nn.Module:
        vit = super().make_backbone(cfg)
        if isinstance(vit, GroupChannelViT):
            raise ConfigError(f"model.backbone: the rgb variant needs a timm ViT, got {cfg.model.backbone!r}")
        return vit

    def __init__(self, cfg: Config, vit: nn.Module) -> None:
        super().__init__(cfg)
        # the RGB algorithm IS MAE (encoder, decoder, masking, loss) plus the upsample block
        self.mae = MAE(MAE.Config(mask_ratio=cfg.mask_ratio, decoder_dim=cfg.decoder_dim,
                                  decoder_depth=cfg.decoder_depth, decoder_heads=cfg.decoder_heads,
                                  norm_pix_loss=cfg.norm_pix_loss, view=cfg.view), vit)
        self.patch_size = self.mae.patch_size
        self.num_tokens = self.mae.num_patches
        channels = vit.patch_embed.proj.in_channels
        self.add_head(channels)
        self.preview_bands = [0, 1, 2][:channels]
        self.num_prefix_tokens = vit.num_prefix_tokens

    def encode(self, images: torch.Tensor, idx_keep: torch.Tensor) -> torch.Tensor:
        return self.mae.encode(images, idx_keep)

    def decode(self, encoded: torch.Tensor, idx_keep: torch.Tensor) -> torch.Tensor:
        """MAE's predicted patches for every token, (B, N, p^2 C)."""
        return self.mae.decode(encoded, idx_keep)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        return self.mae.targets(images)

    def masked_mse(self, pred: torch.Tensor, target: torch.Tensor, idx_mask: torch.Tensor) -> torch.Tensor:
        return self.mae.masked_loss(pred, target, idx_mask)

    def as_image(self, pred: torch.Tensor) -> torch.Tensor:
        return lu.unpatchify(pred, self.patch_size, pred.shape[-1] // self.patch_size**2)

    def backbone(self) -> nn.Module:
        return self.mae.encoder.vit

    def hidden_and_filled(self, images: torch.Tensor, pred: torch.Tensor,
                          idx_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_and_filled(images, pred, idx_mask, self.patch_size, self.cfg.norm_pix_loss)
