"""SiT (Atito et al., "SiT: Self-supervised vIsion Transformer"), two generations of the official code,
one class each under the registry name `sit` (`method.variant` picks):

SiTLatest, variant "latest" (default; Sara-Ahmed/SiT main.py at its latest): a student ViT sees
GMML-corrupted views and an EMA teacher the clean ones; a MoCo-v3 style contrastive loss on the class
token (student view a vs teacher view b) plus lambda x L1 on the corrupted pixels of the student's
reconstruction.

SiTV1, variant "v1" (the 2021 paper): one ViT with a rotation and a contrastive token; each view is
rotated by a labelled multiple of 90 degrees and distorted; 4-way rotation CE, NT-Xent between the
two views, L1 reconstruction of the rotated clean view over all pixels, combined with learned
uncertainty weights as the July 2021 revision of the official losses.py weighs them
(`uncertainty_weighted`: exp(-adj s) L + s / 2, adj 0.5 for the L1).

What they share (two views, the ViT built at the view size, the optimiser defaults, the image preview)
lives in the SiT base class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightly.models.modules.heads import ProjectionHead
from lightly.utils import dist as lightly_dist
from torch import nn

from ssl_zoo import distributed as dist
from ssl_zoo.augment import MultiViewAugment, Normalize, Views, ViewSpec
from ssl_zoo.config import ExperimentConfig, OptimConfig, bounded
from ssl_zoo.contrastive import nt_xent_loss
from ssl_zoo.corruption import GroupCorruption, V1Distortion, v1_distort
from ssl_zoo.data import Batch
from ssl_zoo.methods.base import EMA, Method, disable_drop_path, frozen_copy, preview
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


def sit_v1_views() -> list[ViewSpec]:
    return [sit_v1_view(), sit_v1_view()]


def check_two_views(views: list[ViewSpec], one_size: bool = False) -> None:
    """Both generations pair exactly two views; v1 also runs them through one network in one batch."""
    if len(views) != 2:
        raise ValueError(f"method.views: SiT uses exactly 2 views, got {len(views)}")
    if one_size and any(v.size != views[0].size for v in views):
        raise ValueError("method.views: v1 reconstructs both views with one network; use one size")


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
    """SiT v1's learned task weighting, as the July 2021 revision of the official losses.py
    (`LearnedLoss.calculate_weighted_loss`, Sara-Ahmed/SiT commit 2ec822e): sum_i exp(-scale_i s_i) L_i + s_i / 2.
    losses, log_vars s, scales (adj: 1 for CE and NT-Xent, 0.5 for L1): (T,) each -> scalar.

    Why this revision and not the first one (`adj * exp(-s) * L + s / 2`, commit 1767b91): the two agree
    for CE and NT-Xent (adj 1) and differ only for L1, where the later one is the Laplace negative
    log-likelihood L / b + log b with b = exp(s / 2), the uncertainty weighting that fits an L1 loss
    (the first one is the Gaussian 0.5 L / sigma^2 + log sigma of an L2 loss), and it is the authors' own
    correction of the first."""
    return (torch.exp(-scales * log_vars) * losses + 0.5 * log_vars).sum()


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


class SiT(Method):
    """What both generations share: two views, a ViT built at their size, the optimiser and backbone
    defaults, the preview of clean | corrupted | reconstructed | mask. Subclasses build `views` with
    `corrupted` and `corruption_masks`, and say how they reconstruct (`reconstruction`)."""

    needs_vit = True

    @classmethod
    def paper_optim(cls) -> OptimConfig:
        """The latest recipe: DINO's (which SiT's code keeps) with weight decay ending at 0.1; the v1
        recipe is V1_OPTIM (set in the v1 config's optim section)."""
        return dataclasses.replace(DINO.paper_optim(), weight_decay_end=0.1)

    @classmethod
    def default_model(cls) -> dict:
        return DINO.default_model()  # ViT-S/16, drop-path 0.1

    @classmethod
    def backbone_options(cls, cfg: ExperimentConfig) -> dict:
        return {"img_size": cfg.method.views[0].size}

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.augment = MultiViewAugment(list(cfg.views), cfg.normalize)
        self.normalize = Normalize(cfg.normalize)

    def reconstruction(self, corrupted: torch.Tensor) -> torch.Tensor:
        """The network's image reconstruction of corrupted views."""
        raise NotImplementedError

    @preview
    def log_images(self, views: Views) -> dict[str, torch.Tensor]:
        corrupted = views.corrupted[0][:8]
        recon = self.reconstruction(corrupted)
        grid = reconstruction_grid(self.normalize, views.crops[0][:8], corrupted, recon.float(),
                                   views.corruption_masks[0][:8])
        return {f"sit_{self.cfg.variant}/clean_corrupted_reconstruction_mask": grid}


@register("sit", variant="latest", default=True)
class SiTLatest(SiT):
    description = ("SiT: corrupted student + EMA teacher, MoCo-v3 contrastive + masked L1 (variant v1: "
                   "rotation + contrastive tokens, uncertainty-weighted losses)")
    retired_keys = frozenset({"distortion"})  # v1's, in configs saved when one class held both

    @dataclass
    class Config:
        name: Literal["sit"] = "sit"
        variant: Literal["latest"] = "latest"
        views: list[ViewSpec] = field(default_factory=sit_views)
        temperature: float = bounded(0.2, 1e-4)  # MoCo v3
        out_dim: int = bounded(256, 1)
        hidden_dim: int = bounded(4096, 1)
        recon_weight: float = bounded(1.0, 0.0)  # lambda; the authors suggest 5 for small datasets
        momentum: Cosine = field(default_factory=lambda: Cosine(start=0.996, end=1.0))
        corruption: GroupCorruption = field(default_factory=sit_corruption)
        gather_distributed: bool = True  # contrastive keys from every rank
        normalize: Literal["imagenet", "none"] = "imagenet"

        def __post_init__(self) -> None:
            check_two_views(self.views)

    def __init__(self, cfg: Config, vit: nn.Module) -> None:
        super().__init__(cfg)
        self.student = LatestNetwork(vit, cfg.hidden_dim, cfg.out_dim)
        self.teacher = disable_drop_path(frozen_copy(self.student))

    def views(self, batch: Batch) -> Views:
        """Clean views in crops, GMML-corrupted copies and their masks beside them."""
        return corrupt_views(self.augment(batch.images, batch.sizes), self.cfg.corruption)

    def contrastive_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Symmetric: student view 1 against teacher view 2 and vice versa, summed."""
        s1, s2 = student.chunk(2)
        t1, t2 = teacher.chunk(2)
        with torch.autocast(student.device.type, enabled=False):
            tau, gather = self.cfg.temperature, self.cfg.gather_distributed
            return moco_v3_loss(s1, t2, tau, gather) + moco_v3_loss(s2, t1, tau, gather)

    def training_step(self, views: Views, progress: Progress) -> dict[str, torch.Tensor]:
        clean, corrupted = torch.cat(views.crops[:2]), torch.cat(views.corrupted)
        with torch.no_grad():
            teacher_z = self.teacher.embed(clean)
        student_z, recon = self.student(corrupted)
        contrastive = self.contrastive_loss(student_z, teacher_z)
        reconstruction = masked_l1(recon, clean, torch.cat(views.corruption_masks))
        loss = contrastive + self.cfg.recon_weight * reconstruction
        # collapse diagnostics: the student head's output for view 1 (the query of the contrastive loss); no
        # teacher distribution: the teacher gives MoCo-v3 keys, the softmax runs over the batch's keys
        return {"loss": loss, "contrastive_loss": contrastive.detach(), "reconstruction_loss": reconstruction.detach(),
                "embeddings": student_z.chunk(2)[0].detach()}

    def ema(self) -> list[EMA]:
        return [EMA("student", "teacher", self.cfg.momentum)]

    def backbone(self) -> nn.Module:
        return self.teacher.vit

    def reconstruction(self, corrupted: torch.Tensor) -> torch.Tensor:
        return self.student(corrupted)[1]


@register("sit", variant="v1")
class SiTV1(SiT):
    description = "SiT v1: rotation + contrastive tokens, rotation CE + NT-Xent + L1, uncertainty-weighted losses"
    # latest's, in configs saved when one class held both
    retired_keys = frozenset({"hidden_dim", "recon_weight", "momentum", "corruption", "gather_distributed"})

    @dataclass
    class Config:
        """Losses weighted as the July 2021 revision of the official losses.py (`uncertainty_weighted`)."""

        name: Literal["sit"] = "sit"
        variant: Literal["v1"] = "v1"
        views: list[ViewSpec] = field(default_factory=sit_v1_views)
        temperature: float = bounded(0.5, 1e-4)  # NT-Xent
        out_dim: int = bounded(512, 1)
        distortion: V1Distortion = field(default_factory=V1Distortion)
        normalize: Literal["imagenet", "none"] = "imagenet"

        def __post_init__(self) -> None:
            check_two_views(self.views, one_size=True)

    @classmethod
    def backbone_options(cls, cfg: ExperimentConfig) -> dict:
        return {**super().backbone_options(cfg), "reg_tokens": 1}  # the second extra token

    def __init__(self, cfg: Config, vit: nn.Module) -> None:
        super().__init__(cfg)
        self.net = V1Network(vit, cfg.out_dim)
        self.log_vars = nn.Parameter(torch.ones(3))  # rotation, contrastive, reconstruction; init 1.0
        self.register_buffer("uncertainty_adj", torch.tensor([1.0, 1.0, 0.5]), persistent=False)  # CE, NT-Xent, L1

    def views(self, batch: Batch) -> Views:
        """Each augmented view rotated by its label (boxes and flips describe it before the rotation), so
        the label always names the rotation seen; the official loader rotates before its random flip,
        which mirrors half of the 90/270 views. Then distorted: copies and masks beside the crops."""
        views = self.augment(batch.images, batch.sizes)
        rotations = [torch.randint(0, 4, (len(batch),), device=c.device) for c in views.crops]
        crops = [rotate90(c, k) for c, k in zip(views.crops, rotations)]
        corrupted, masks = zip(*(v1_distort(c, self.cfg.distortion) for c in crops))
        return dataclasses.replace(views, crops=crops, rotations=rotations, corrupted=list(corrupted),
                                   corruption_masks=list(masks))

    def training_step(self, views: Views, progress: Progress) -> dict[str, torch.Tensor]:
        clean, corrupted = torch.cat(views.crops[:2]), torch.cat(views.corrupted)
        rot_logits, z, recon = self.net(corrupted)
        with torch.autocast(z.device.type, enabled=False):
            losses = torch.stack([F.cross_entropy(rot_logits.float(), torch.cat(views.rotations)),
                                  nt_xent_loss(*z.float().chunk(2), self.cfg.temperature),  # per-rank batch, as official
                                  F.l1_loss(recon.float(), clean.float())])  # all pixels, against the rotated clean view
            loss = uncertainty_weighted(losses, self.log_vars, self.uncertainty_adj)
        # collapse diagnostics: the contrastive head's output for view 1, what NT-Xent acts on
        return {"loss": loss, "rotation_loss": losses[0].detach(), "contrastive_loss": losses[1].detach(),
                "reconstruction_loss": losses[2].detach(), "embeddings": z.chunk(2)[0].detach()}

    def backbone(self) -> nn.Module:
        return self.net.vit

    def reconstruction(self, corrupted: torch.Tensor) -> torch.Tensor:
        return self.net(corrupted)[2]
