"""SiT (Atito et al., "SiT: Self-supervised vIsion Transformer"), two generations of the official code.

variant "latest" (default; Sara-Ahmed/SiT main.py at its latest): a student ViT sees GMML-corrupted
views and an EMA teacher the clean ones; a MoCo-v3 style contrastive loss on the class token
(student view a vs teacher view b) plus lambda x L1 on the corrupted pixels of the student's
reconstruction.

variant "v1" (the 2021 paper): one ViT with a rotation and a contrastive token; each view is
rotated by a labelled multiple of 90 degrees and distorted; 4-way rotation CE, NT-Xent between the
two views, L1 reconstruction of the rotated clean view over all pixels, combined with learned
uncertainty weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import ProjectionHead
from lightly.models.utils import update_momentum
from lightly.utils import dist as lightly_dist
from torch import nn

from ssl_zoo import distributed as dist
from ssl_zoo.augment import MultiViewAugment, Normalize, Views, ViewSpec
from ssl_zoo.backbones import build_backbone, is_vit
from ssl_zoo.config import ConfigError, ExperimentConfig, OptimConfig, bounded
from ssl_zoo.corruption import GroupCorruption, V1Distortion, v1_distort
from ssl_zoo.data import Batch
from ssl_zoo.methods.base import Method, disable_drop_path, frozen_copy, preview
from ssl_zoo.methods.dino import DINO, dino_global_views
from ssl_zoo.methods.gmml import ReconstructionHead, corrupt_views, masked_l1, reconstruction_grid
from ssl_zoo.registry import register
from ssl_zoo.schedules import Cosine, Progress

# the 2021 recipe (DeiT/timm training script): lr 5e-4 x bs/512, wd 0.05, 5 warm-up epochs, cosine to 1e-5,
# no clipping; used by configs/sit/vit_small_v1_imagenet.yaml (paper_optim holds the latest recipe)
V1_OPTIM = OptimConfig(name="adamw", base_lr=5e-4, lr_scaling="linear", lr_reference_batch=512, min_lr=1e-5,
                       warmup_epochs=5, weight_decay=0.05)


def sit_views(size: int = 224) -> list[ViewSpec]:
    """Latest: BYOL/DINO global crops at scale (0.2, 1): blur 1.0 / (blur 0.1 + solarize 0.2)."""
    return [dataclasses.replace(v, scale=(0.2, 1.0)) for v in dino_global_views(size)]


def sit_v1_view(size: int = 224) -> ViewSpec:
    """v1: timm's training transform without auto-augment: RandomResizedCrop(0.08, 1), flip, ColorJitter(0.4, 0.4, 0.4)."""
    return ViewSpec(size=size, scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.4, 0.0), jitter_p=1.0, gray_p=0.0, blur_p=0.0)


def sit_corruption() -> GroupCorruption:
    """Latest: 50% of the pixels zeroed, or 30% pasted from another image with p = 0.5."""
    return GroupCorruption(coverage=0.5, fill="zeros", paste_p=0.5, paste_coverage=0.3)


def rotate90(images: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate image i by k[i] x 90 degrees counter-clockwise (PIL's ROTATE_90 direction), batched."""
    turns = torch.stack([images.rot90(q, dims=(-2, -1)) for q in range(4)])
    return turns[k, torch.arange(images.shape[0], device=images.device)]


def moco_v3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """MoCo v3 contrastive loss: CE of q against the keys of all ranks, positive = own key, x 2 tau.

    Not NT-Xent: queries are compared with keys only (no query-query negatives); keys carry no gradient.
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    if gather and dist.is_distributed():
        k = torch.cat(lightly_dist.gather(k))
    logits = q @ k.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * (dist.rank() if gather else 0)
    return F.cross_entropy(logits, labels) * (2 * temperature)


def uncertainty_weighted(losses: torch.Tensor, log_vars: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """SiT v1's learned task weighting: sum_i scale_i * exp(-s_i) * L_i + s_i / 2."""
    return (scales * torch.exp(-log_vars) * losses + 0.5 * log_vars).sum()


class LatestNetwork(nn.Module):
    """ViT + contrastive MLP on the class token + reconstruction head on the patch tokens (final block)."""

    def __init__(self, vit: nn.Module, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        d = vit.embed_dim
        self.vit = vit
        # official CLSHead: Linear-BN-ReLU, Linear-BN-GELU, Linear-BN(affine=False); the biases before
        # BN are dropped (BN removes them)
        self.head = ProjectionHead([(d, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU()),
                                    (hidden_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.GELU()),
                                    (hidden_dim, out_dim, nn.BatchNorm1d(out_dim, affine=False), None)])
        self.recon = ReconstructionHead(d, vit.patch_embed.proj.in_channels, vit.patch_embed.patch_size[0])

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Contrastive embedding only (what the teacher computes)."""
        return self.head(self.vit(images))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.vit.forward_features(images)
        z = self.head(self.vit.forward_head(tokens, pre_logits=True))
        grid = self.vit.patch_embed.dynamic_feat_size(images.shape[-2:])
        return z, self.recon(tokens[:, self.vit.num_prefix_tokens:], grid)


class V1Network(nn.Module):
    """ViT with two extra tokens and no other: timm's class token is the contrastive token (so the
    exported ViT pools it) and one register token is the rotation token; both have position
    embeddings, as in the official model (the order of the two is immaterial to a transformer).
    Heads: rotation Linear(D, 4), contrastive Linear(D, out_dim), ConvTranspose2d on the patch tokens.
    """

    def __init__(self, vit: nn.Module, out_dim: int) -> None:
        super().__init__()
        if vit.num_prefix_tokens != 2 or vit.cls_token is None:
            raise ValueError("SiT v1 needs a ViT with a class token and one register token")
        d = vit.embed_dim
        self.vit = vit
        self.rotation_head = nn.Linear(d, 4)
        self.contrastive_head = nn.Linear(d, out_dim)
        self.recon = ReconstructionHead(d, vit.patch_embed.proj.in_channels, vit.patch_embed.patch_size[0], layers=0)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens = self.vit.forward_features(images)  # (B, 2 + N, D): contrastive, rotation, patches
        grid = self.vit.patch_embed.dynamic_feat_size(images.shape[-2:])
        return self.rotation_head(tokens[:, 1]), self.contrastive_head(tokens[:, 0]), self.recon(tokens[:, 2:], grid)


@register("sit")
class SiT(Method):
    description = ("SiT: corrupted student + EMA teacher, MoCo-v3 contrastive + masked L1 (variant v1: "
                   "rotation + contrastive tokens, uncertainty-weighted losses)")

    @dataclass
    class Config:
        name: Literal["sit"] = "sit"
        variant: Literal["latest", "v1"] = "latest"
        views: list[ViewSpec] | None = None  # None: the variant's recipe (sit_views / 2 x sit_v1_view)
        temperature: float | None = bounded(None, 1e-4)  # None: latest 0.2 (MoCo v3), v1 0.5 (NT-Xent)
        out_dim: int | None = bounded(None, 1)  # None: latest 256, v1 512
        # latest only
        hidden_dim: int = bounded(4096, 1)
        recon_weight: float = bounded(1.0, 0.0)  # lambda; the authors suggest 5 for small datasets
        momentum: Cosine = field(default_factory=lambda: Cosine(start=0.996, end=1.0))
        corruption: GroupCorruption = field(default_factory=sit_corruption)
        gather_distributed: bool = True  # contrastive keys from every rank
        # v1 only
        distortion: V1Distortion = field(default_factory=V1Distortion)
        normalize: Literal["imagenet", "none"] = "imagenet"

        def __post_init__(self) -> None:
            latest = self.variant == "latest"
            if self.views is None:
                self.views = sit_views() if latest else [sit_v1_view(), sit_v1_view()]
            if self.temperature is None:
                self.temperature = 0.2 if latest else 0.5
            if self.out_dim is None:
                self.out_dim = 256 if latest else 512
            if len(self.views) != 2:
                raise ValueError(f"method.views: SiT uses exactly 2 views, got {len(self.views)}")
            if not latest and any(v.size != self.views[0].size for v in self.views):
                raise ValueError("method.views: v1 reconstructs both views with one network; use one size")

    @classmethod
    def paper_optim(cls) -> OptimConfig:
        """The latest recipe: DINO's (which SiT's code keeps) with weight decay ending at 0.1; the v1
        recipe is V1_OPTIM (set in the v1 config's optim section)."""
        return dataclasses.replace(DINO.paper_optim(), weight_decay_end=0.1)

    @classmethod
    def default_model(cls) -> dict:
        return DINO.default_model()  # ViT-S/16, drop-path 0.1

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> "SiT":
        tokens = {"reg_tokens": 1} if cfg.method.variant == "v1" else {}  # v1's second extra token
        try:
            vit = build_backbone(cfg.model, in_chans=cfg.data.channels, img_size=cfg.method.views[0].size, **tokens)
        except TypeError as e:  # a non-ViT timm model refuses reg_tokens
            raise ConfigError(f"model.backbone: SiT needs a ViT, got {cfg.model.backbone!r} ({e})") from e
        if not is_vit(vit):
            raise ConfigError(f"model.backbone: SiT needs a ViT, got {cfg.model.backbone!r}")
        return cls(cfg.method, vit)

    def __init__(self, cfg: Config, vit: nn.Module) -> None:
        super().__init__(cfg)
        self.augment = MultiViewAugment(list(cfg.views), cfg.normalize)
        self.normalize = Normalize(cfg.normalize)
        if cfg.variant == "latest":
            self.student = LatestNetwork(vit, cfg.hidden_dim, cfg.out_dim)
            self.teacher = disable_drop_path(frozen_copy(self.student))
        else:
            self.net = V1Network(vit, cfg.out_dim)
            self.log_vars = nn.Parameter(torch.ones(3))  # rotation, contrastive, reconstruction; init 1.0
            self.register_buffer("loss_scales", torch.tensor([1.0, 1.0, 0.5]), persistent=False)  # CE, NT-Xent, L1
            self.ntxent = NTXentLoss(temperature=cfg.temperature)  # per-rank batch, as the official loss

    # ---- views ------------------------------------------------------------------------------
    def views(self, batch: Batch) -> Views:
        """Clean views in crops, corrupted copies and masks in extra. v1 rotates each augmented view
        (boxes and flips describe it before the rotation), so the label always names the rotation seen;
        the official loader rotates before its random flip, which mirrors half of the 90/270 views."""
        views = self.augment(batch.images, batch.sizes)
        if self.cfg.variant == "latest":
            return corrupt_views(views, self.cfg.corruption)
        rotations = [torch.randint(0, 4, (len(batch),), device=c.device) for c in views.crops]
        views.crops = [rotate90(c, k) for c, k in zip(views.crops, rotations)]
        corrupted, masks = zip(*(v1_distort(c, self.cfg.distortion) for c in views.crops))
        views.extra.update(rotations=rotations, corrupted=list(corrupted), masks=list(masks))
        return views

    # ---- losses -----------------------------------------------------------------------------
    def contrastive_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Symmetric: student view 1 against teacher view 2 and vice versa, summed."""
        s1, s2 = student.chunk(2)
        t1, t2 = teacher.chunk(2)
        with torch.autocast(student.device.type, enabled=False):
            tau, gather = self.cfg.temperature, self.cfg.gather_distributed
            return moco_v3_loss(s1, t2, tau, gather) + moco_v3_loss(s2, t1, tau, gather)

    def training_step(self, views: Views, progress: Progress) -> dict[str, torch.Tensor]:
        clean, corrupted = torch.cat(views.crops[:2]), torch.cat(views.extra["corrupted"])
        if self.cfg.variant == "latest":
            with torch.no_grad():
                teacher_z = self.teacher.embed(clean)
            student_z, recon = self.student(corrupted)
            contrastive = self.contrastive_loss(student_z, teacher_z)
            reconstruction = masked_l1(recon, clean, torch.cat(views.extra["masks"]))
            loss = contrastive + self.cfg.recon_weight * reconstruction
            return {"loss": loss, "contrastive_loss": contrastive.detach(), "reconstruction_loss": reconstruction.detach()}
        rot_logits, z, recon = self.net(corrupted)
        with torch.autocast(z.device.type, enabled=False):
            losses = torch.stack([F.cross_entropy(rot_logits.float(), torch.cat(views.extra["rotations"])),
                                  self.ntxent(*z.float().chunk(2)),
                                  F.l1_loss(recon.float(), clean.float())])  # all pixels, against the rotated clean view
            loss = uncertainty_weighted(losses, self.log_vars, self.loss_scales)
        return {"loss": loss, "rotation_loss": losses[0].detach(), "contrastive_loss": losses[1].detach(),
                "reconstruction_loss": losses[2].detach()}

    # ---- state after the step ------------------------------------------------------------------
    @torch.no_grad()
    def after_step(self, progress: Progress) -> None:
        if self.cfg.variant == "latest":
            update_momentum(self.student, self.teacher, m=self.cfg.momentum(progress))

    def schedule_values(self, progress: Progress) -> dict[str, float]:
        return {"momentum": self.cfg.momentum(progress)} if self.cfg.variant == "latest" else {}

    def backbone(self) -> nn.Module:
        return self.teacher.vit if self.cfg.variant == "latest" else self.net.vit

    @preview
    def log_images(self, views: Views) -> dict[str, torch.Tensor]:
        corrupted = views.extra["corrupted"][0][:8]
        recon = self.student(corrupted)[1] if self.cfg.variant == "latest" else self.net(corrupted)[2]
        grid = reconstruction_grid(self.normalize, views.crops[0][:8], corrupted, recon.float(),
                                   views.extra["masks"][0][:8])
        return {f"sit_{self.cfg.variant}/clean_corrupted_reconstruction_mask": grid}
