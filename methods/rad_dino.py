"""RAD-DINO (Pérez-García et al., 2025, "Exploring scalable medical image encoders beyond text
supervision"): DINOv2 training (Oquab et al., 2023) continued on chest X-rays.

DINOv2 = DINO's CLS self-distillation (student global crops against the swapped teacher global
crops, local crops against both) + iBOT's masked-patch loss (half of the global crops get block
masks; the student sees a learnable mask token there, the teacher the unmasked crop) + KoLeo on the
student's CLS tokens. RAD-DINO's input: single-channel radiographs, per-image intensity min-max,
replicated to 3 channels (data.channels), and no hue/saturation jitter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from lightly.loss import KoLeoLoss
from lightly.loss.swav_loss import sinkhorn
from lightly.models.modules import DINOv2ProjectionHead, MaskedVisionTransformerTIMM
from lightly.models.modules.center import Center
from torch import nn

from ssl_zoo.augment import MultiViewAugment, Normalize, Views, ViewSpec, minmax_scale
from ssl_zoo.config import ConfigError, OptimConfig, bounded
from ssl_zoo.data import Batch
from ssl_zoo.diagnostics import distillation_pair
from ssl_zoo.masking import block_masks
from ssl_zoo.methods.base import disable_drop_path, frozen_copy, image_grid, preview
from ssl_zoo.methods.dino import SelfDistillation, frozen_head_copy
from ssl_zoo.registry import register
from ssl_zoo.schedules import Cosine, Progress, Warmup

GRAY_JITTER = (0.4, 0.4, 0.0, 0.0)  # brightness, contrast; saturation and hue mean nothing on X-rays


def radiograph_global_views(size: int = 518) -> list[ViewSpec]:
    """DINOv2's two global crops (scale 0.32-1; blur 1.0 / blur 0.1 + solarize 0.2) without the colour
    parts that do nothing on grayscale (saturation, hue, random grayscale). RAD-DINO's own list is
    not published in this detail (not verified)."""
    common = dict(size=size, scale=(0.32, 1.0), jitter=GRAY_JITTER, jitter_p=0.8, gray_p=0.0)
    return [ViewSpec(**common, blur_p=1.0), ViewSpec(**common, blur_p=0.1, solarize_p=0.2)]


def radiograph_local_view(size: int = 98) -> ViewSpec:
    """DINOv2's local crop (scale 0.05-0.32, blur 0.5); 98 px = 7 x 7 patches of 14 (DINOv2's 96 px
    is not a multiple of 14; RAD-DINO's local size is not verified)."""
    return ViewSpec(size=size, scale=(0.05, 0.32), jitter=GRAY_JITTER, jitter_p=0.8, gray_p=0.0, blur_p=0.5)


class DINOv2Network(nn.Module):
    """A masked ViT (lightly's timm wrapper: a learnable mask token replaces masked patch embeddings)
    with the DINO head on CLS tokens and the iBOT head on patch tokens (the same head when shared)."""

    def __init__(self, backbone: MaskedVisionTransformerTIMM, dino_head: nn.Module, ibot_head: nn.Module | None):
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head

    @property
    def patch_head(self) -> nn.Module:
        return self.dino_head if self.ibot_head is None else self.ibot_head

    def tokens(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLS (B, D), patch tokens (B, N, D)) after the final norm; masks (B, N) bool or None."""
        prefix = self.backbone.vit.num_prefix_tokens
        if masks is not None:
            masks = F.pad(masks, (prefix, 0), value=False)
        x = self.backbone.encode(images, mask=masks)
        return x[:, 0], x[:, prefix:]


class TeacherTargets(nn.Module):
    """Teacher logits -> target distributions: softmax after an EMA centre (DINO; lightly's Center,
    updated after use, averaged over ranks) or Sinkhorn-Knopp (DINOv2's option; lightly's SwAV
    `sinkhorn` does the same normalisation: rows summed over ranks, columns sum to 1 at the end)."""

    def __init__(self, out_dim: int, mode: str, center_momentum: float, iterations: int) -> None:
        super().__init__()
        self.mode, self.iterations = mode, iterations
        if mode == "ema":
            self.center = Center((1, out_dim), momentum=center_momentum)

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        logits = logits.float()
        if self.mode == "sinkhorn_knopp":
            return sinkhorn(logits, iterations=self.iterations, epsilon=temperature, gather_distributed=True)
        probs = F.softmax((logits - self.center.value) / temperature, dim=-1)
        self.center.update(logits)
        return probs


def cross_view_loss(teacher: list[torch.Tensor], student: list[torch.Tensor], student_temp: float) -> torch.Tensor:
    """DINO's CLS loss on target distributions: CE(teacher view i, student view v) over v != i, averaged
    over the terms (18 for 2 + 8 crops), each a batch mean. lightly's DINOLoss computes the same from
    logits but fuses its EMA centre in, so it cannot take Sinkhorn-Knopp targets; DINOv2's own code
    splits targets and cross-entropy the same way."""
    t = torch.stack(teacher).float()
    with torch.autocast(t.device.type, enabled=False):  # autocast would run the einsum's sums in bf16
        s = F.log_softmax(torch.stack(student).float() / student_temp, dim=-1)
        terms = -torch.einsum("tbk,sbk->ts", t, s)
    terms.fill_diagonal_(0)
    n_terms = terms.numel() - min(terms.shape)
    return terms.sum() / (n_terms * t.shape[1])


def masked_patch_loss(teacher: torch.Tensor, student: torch.Tensor, masks: torch.Tensor,
                      student_temp: float, hidden: torch.Tensor | None = None) -> torch.Tensor:
    """iBOT's loss (as lightly's IBOTPatchLoss, which fuses its centre in like DINOLoss): per image the
    mean CE over its masked patches, summed and divided by ALL images (an unmasked image adds 0 but
    counts). teacher/student: (M, K) over the masked patches in `masks` (n, N) order; `hidden`: their
    masked_indices, when the caller has them already."""
    ce = -(teacher * F.log_softmax(student.float() / student_temp, dim=-1)).sum(dim=-1)
    weight = (1.0 / masks.sum(dim=1).clamp(min=1)).unsqueeze(1).expand_as(masks).flatten()
    hidden = masked_indices(masks) if hidden is None else hidden
    return (ce * weight.index_select(0, hidden)).sum() / masks.shape[0]


def masked_indices(masks: torch.Tensor) -> torch.Tensor:
    """(M,) flat indices of the True entries of (n, N) `masks`, row-major (the order of `x[masks]`).

    The one host sync of RAD-DINO's step: how many patches the block masks hid is data, and the iBOT
    heads, the Sinkhorn-Knopp normalisation and the loss run over exactly those M patches (padding
    them to a fixed count would put fake rows into Sinkhorn-Knopp's normalisation over rows). DINOv2
    pays the same sync in its collate (`mask.nonzero()`, on the host, in the loader)."""
    return masks.flatten().nonzero().squeeze(1)


def _rows(patches: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(n, N, D) patch tokens -> the (M, D) rows at flat `indices` (masked_indices)."""
    return patches.flatten(0, 1).index_select(0, indices)


def koleo_loss(cls_tokens: torch.Tensor, crops: int) -> torch.Tensor:
    """KoLeo on the student's CLS tokens, per global crop and summed (DINOv2), in fp32."""
    koleo = KoLeoLoss()
    with torch.autocast(cls_tokens.device.type, enabled=False):
        return sum(koleo(c) for c in cls_tokens.float().chunk(crops))


@register("rad_dino")
class RADDINO(SelfDistillation):
    description = "RAD-DINO: DINOv2 (DINO + iBOT block masks + KoLeo) on grayscale radiographs (ViT-B/14, 518 px)"
    needs_vit = True

    @dataclass
    class Config:
        name: Literal["rad_dino"] = "rad_dino"
        out_dim: int = bounded(65536, 1)
        hidden_dim: int = bounded(2048, 1)
        bottleneck_dim: int = bounded(256, 1)
        # DINOv2 unties the heads in its ViT-L/g recipes (ibot.separate_head); RAD-DINO: not verified
        separate_ibot_head: bool = True
        ibot_out_dim: int = bounded(65536, 1)  # used with a separate iBOT head
        student_temp: float = bounded(0.1, 1e-4)
        teacher_temp: Warmup = field(default_factory=lambda: Warmup(start=0.04, end=0.07, epochs=30))
        momentum: Cosine = field(default_factory=lambda: Cosine(start=0.992, end=1.0))
        centering: Literal["ema", "sinkhorn_knopp"] = "ema"
        center_momentum: float = bounded(0.9, 0.0, 1.0)
        sinkhorn_iterations: int = bounded(3, 1)
        dino_weight: float = bounded(1.0, 0.0)
        ibot_weight: float = bounded(1.0, 0.0)
        koleo_weight: float = bounded(0.1, 0.0)
        mask_fraction: float = bounded(0.5, 0.0, 1.0)  # share of the 2B global crops that get masks
        mask_ratio: tuple[float, float] = bounded((0.1, 0.5), 0.0, 1.0, ordered=True)  # per-image ratios: linspace intervals
        mask_min_patches: int = bounded(4, 1)
        mask_min_aspect: float = bounded(0.3, 0.01, 1.0)  # block aspect log-U(0.3, 1/0.3)
        global_views: list[ViewSpec] = field(default_factory=radiograph_global_views)
        local_view: ViewSpec = field(default_factory=radiograph_local_view)
        n_local: int = bounded(8, 0)
        freeze_last_layer_epochs: float = bounded(1.0, 0.0)
        layer_decay: float = bounded(0.9, 0.0, 1.0)
        patch_embed_lr_mult: float = bounded(0.2, 0.0)
        intensity_minmax: bool = True  # per-image min-max before anything else (DICOM ranges vary)
        normalize: Literal["rad_dino", "imagenet", "none"] = "rad_dino"

    @classmethod
    def paper_optim(cls) -> OptimConfig:
        """DINOv2: AdamW (0.9, 0.999), lr 0.004 x sqrt(bs / 1024), 10 warm-up epochs, cosine to 1e-6, weight
        decay 0.04 -> 0.4, clipping 3.0. DINOv2 clips the backbone and each head separately; the trainer
        clips one global norm over all of them (closest of its modes)."""
        return OptimConfig(name="adamw", base_lr=4e-3, lr_scaling="sqrt", lr_reference_batch=1024, min_lr=1e-6,
                           warmup_epochs=10, weight_decay=0.04, weight_decay_end=0.4, betas=(0.9, 0.999),
                           clip_grad=3.0, clip_mode="global")

    @classmethod
    def default_model(cls) -> dict:
        """ViT-B/14 in timm's DINOv2 layout (layer scale 1e-5), 518 px (37 x 37 patches), drop-path 0.3."""
        return {"backbone": "vit_base_patch14_dinov2", "img_size": 518, "drop_path_rate": 0.3}

    def __init__(self, cfg: Config, vit: nn.Module) -> None:
        super().__init__(cfg)
        if len(cfg.global_views) != 2 or cfg.global_views[0].size != cfg.global_views[1].size:
            raise ConfigError(f"method.global_views: DINOv2 uses 2 global views of one size, got "
                              f"{[v.size for v in cfg.global_views]}")
        self.patch_size = vit.patch_embed.patch_size[0]
        if cfg.global_views[0].size % self.patch_size:
            raise ConfigError(f"method.global_views: size {cfg.global_views[0].size} is not a multiple of the "
                              f"patch size {self.patch_size}")

        def dino_head() -> nn.Module:
            return DINOv2ProjectionHead(vit.num_features, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim)

        def ibot_head() -> nn.Module:
            return DINOv2ProjectionHead(vit.num_features, cfg.hidden_dim, cfg.bottleneck_dim, cfg.ibot_out_dim)

        # timm's init and learned position embedding stay; DINOv2 resamples positions without antialias
        backbone = MaskedVisionTransformerTIMM(vit, weight_initialization="skip", pos_embed_initialization="skip",
                                               antialias=False)
        heads = (dino_head(), ibot_head() if cfg.separate_ibot_head else None)
        self.student = DINOv2Network(backbone, *heads)
        self.teacher = disable_drop_path(DINOv2Network(
            frozen_copy(backbone), frozen_head_copy(dino_head, heads[0]),
            frozen_head_copy(ibot_head, heads[1]) if heads[1] is not None else None))
        patch_dim = cfg.ibot_out_dim if cfg.separate_ibot_head else cfg.out_dim
        self.dino_targets = TeacherTargets(cfg.out_dim, cfg.centering, cfg.center_momentum, cfg.sinkhorn_iterations)
        self.ibot_targets = TeacherTargets(patch_dim, cfg.centering, cfg.center_momentum, cfg.sinkhorn_iterations)
        self.augment = MultiViewAugment(list(cfg.global_views) + [cfg.local_view] * cfg.n_local, cfg.normalize)
        self.normalize = Normalize(cfg.normalize)
        self.eval_minmax = cfg.intensity_minmax

    def intensity(self, images: torch.Tensor) -> torch.Tensor:
        return minmax_scale(images) if self.cfg.intensity_minmax else images

    def views(self, batch: Batch) -> Views:
        views = self.augment(self.intensity(batch.images), batch.sizes)
        grid = self.cfg.global_views[0].size // self.patch_size
        cfg = self.cfg
        masks = block_masks(2 * len(batch), grid, grid, cfg.mask_fraction, cfg.mask_ratio, cfg.mask_min_patches,
                            cfg.mask_min_aspect, device=views.crops[0].device)
        return dataclasses.replace(views, patch_masks=masks)

    def training_step(self, views: Views, progress: Progress) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        temp = cfg.teacher_temp(progress)
        crops = torch.cat(views.crops[:2])  # the 2B global crops, masks in the same order
        masks = views.patch_masks.flatten(1)
        hidden = masked_indices(masks)
        with torch.no_grad():  # the teacher sees the unmasked crops
            t_cls, t_patches = self.teacher.tokens(crops)
            t_dino = self.dino_targets(self.teacher.dino_head(t_cls), temp)
            t_ibot = self.ibot_targets(self.teacher.patch_head(_rows(t_patches, hidden)), temp)
        s_cls, s_patches = self.student.tokens(crops, masks)
        cls = [s_cls]
        if cfg.n_local:
            cls.append(self.student.tokens(torch.cat(views.crops[2:]))[0])
        s_dino = self.student.dino_head(torch.cat(cls))
        dino = cross_view_loss(list(t_dino.chunk(2)), list(s_dino.chunk(2 + cfg.n_local)), cfg.student_temp)
        ibot = masked_patch_loss(t_ibot, self.student.patch_head(_rows(s_patches, hidden)), masks, cfg.student_temp,
                                 hidden)
        koleo = koleo_loss(s_cls, 2)
        loss = cfg.dino_weight * dino + cfg.ibot_weight * ibot + cfg.koleo_weight * koleo
        # collapse diagnostics: the student DINO head's output for global crop 1 (the logits the CLS loss
        # acts on), and the CLS loss pair teacher crop 1 / student crop 2
        student_crops = s_dino.chunk(2 + cfg.n_local)
        return {"loss": loss, "dino": dino.detach(), "ibot": ibot.detach(), "koleo": koleo.detach(),
                "embeddings": student_crops[0].detach(),
                **distillation_pair(t_dino.chunk(2)[0], student_crops[1], cfg.student_temp)}

    def last_layers(self) -> list[nn.Module]:
        heads = [self.student.dino_head, self.student.ibot_head]
        return [h.last_layer for h in heads if h is not None]

    def param_groups(self, optim_cfg: OptimConfig) -> list[dict]:
        """DINOv2's groups (get_params_groups_with_decay): backbone lr x decay^(L + 1 - layer), layer 0 =
        patch/position embeddings, CLS, registers and mask token, layer i + 1 = block i, L + 1 = final
        norm and the heads; patch embedding lr x 0.2 on top; no weight decay on biases, norms and layer
        scales (names with .bias, norm, gamma). Unlike timm's param_groups_layer_decay, position
        embedding and tokens keep weight decay, as in DINOv2, and the mask token sits outside the ViT."""
        depth = len(self.student.backbone.vit.blocks)
        groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
        for part, module in self.student.named_children():
            for name, p in module.named_parameters():
                if not p.requires_grad:
                    continue
                scale = self.cfg.layer_decay ** (depth + 1 - vit_layer(name, depth)) if part == "backbone" else 1.0
                if "patch_embed" in name:
                    scale *= self.cfg.patch_embed_lr_mult
                decay = not (name.endswith(".bias") or "norm" in name or "gamma" in name)
                groups.setdefault((scale, decay), []).append(p)
        return [{"params": params, "lr_scale": scale, "weight_decay": optim_cfg.weight_decay if decay else 0.0}
                for (scale, decay), params in groups.items()]

    def backbone(self) -> nn.Module:
        return self.teacher.backbone.vit


    @preview
    def log_images(self, views: Views) -> dict[str, torch.Tensor]:
        """The views, and the first global crops with the student's masked patches darkened."""
        grids = super().log_images(views)
        n = min(8, views.crops[0].shape[0])
        crop = self.normalize.inverse(views.crops[0][:n]).clamp(0, 1)
        masks = views.patch_masks[:n].repeat_interleave(self.patch_size, 1).repeat_interleave(self.patch_size, 2)
        grids["masks/global_0"] = image_grid(torch.where(masks[:, None], 0.25 * crop, crop))
        return grids


def vit_layer(name: str, depth: int) -> int:
    """Layer id of a parameter of the masked ViT for lr decay: 0 embeddings and tokens, i + 1 for block i,
    depth + 1 for what follows the blocks (final norm)."""
    if name.startswith("vit.blocks."):
        return int(name.split(".")[2]) + 1
    if name == "mask_token" or name.startswith(("vit.patch_embed", "vit.pos_embed", "vit.cls_token", "vit.reg_token")):
        return 0
    return depth + 1
