"""DINO (Caron et al., 2021, "Emerging Properties in Self-Supervised Vision Transformers").

Multi-crop views, a student and an EMA teacher with the same architecture, centring and
sharpening of the teacher, cross-entropy between every teacher global view and every other
student view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from torch import nn

from ssl_zoo.augment import MultiViewAugment, Normalize, Views, ViewSpec
from ssl_zoo.config import ExperimentConfig, OptimConfig, bounded
from ssl_zoo.diagnostics import distillation_pair
from ssl_zoo.methods.base import EMA, Method, disable_drop_path, frozen_copy
from ssl_zoo.registry import register
from ssl_zoo.schedules import Cosine, Progress, Warmup


def dino_global_views(size: int = 224) -> list[ViewSpec]:
    """Global crop 1: blur always; global crop 2: blur 0.1 and solarize 0.2."""
    common = dict(size=size, scale=(0.4, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.2)
    return [ViewSpec(**common, blur_p=1.0), ViewSpec(**common, blur_p=0.1, solarize_p=0.2)]


def dino_local_view(size: int = 96) -> ViewSpec:
    return ViewSpec(size=size, scale=(0.05, 0.4), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.2,
                    blur_p=0.5)


class MultiCropNetwork(nn.Module):
    """Backbone + head; crops of one resolution go through the backbone in one pass."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = []
        start = 0
        while start < len(crops):  # group consecutive crops of equal size
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            feats.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        out = self.head(torch.cat(feats))
        return list(out.chunk(len(crops)))


def frozen_head_copy(make_head: Callable[[], nn.Module], head: nn.Module) -> nn.Module:
    """A frozen twin of a weight-normed head. deepcopy cannot copy it (weight_norm keeps
    `last_layer.weight` as a non-leaf tensor), so the twin is built anew and takes the weights."""
    twin = make_head()
    twin.load_state_dict(head.state_dict())
    return twin.requires_grad_(False)


class SelfDistillation(Method):
    """What DINO and RAD-DINO (DINOv2) share: a student and its EMA teacher (`self.student`,
    `self.teacher`, same parameter order), the heads' last layers frozen early in training, the
    teacher's backbone exported, the backbone built at the global crops' size. Configs carry `momentum`,
    `teacher_temp`, `freeze_last_layer_epochs`, `global_views`."""

    @classmethod
    def backbone_options(cls, cfg: ExperimentConfig) -> dict:
        return {"img_size": cfg.method.global_views[0].size}

    def last_layers(self) -> list[nn.Module]:
        """The head layers kept frozen for the first `freeze_last_layer_epochs`."""
        return [self.student.head.last_layer]

    def after_backward(self, progress: Progress) -> None:
        if progress.epoch_float < self.cfg.freeze_last_layer_epochs:
            for layer in self.last_layers():
                for p in layer.parameters():
                    p.grad = None

    def ema(self) -> list[EMA]:
        return [EMA("student", "teacher", self.cfg.momentum)]

    def schedule_values(self, progress: Progress) -> dict[str, float]:
        return {**super().schedule_values(progress), "teacher_temp": self.cfg.teacher_temp(progress)}

    def backbone(self) -> nn.Module:
        return self.teacher.backbone


@register("dino")
class DINO(SelfDistillation):
    description = "DINO: multi-crop self-distillation with an EMA teacher, centring and sharpening (ViT-S/16)"

    @dataclass
    class Config:
        name: Literal["dino"] = "dino"
        out_dim: int = bounded(65536, 1)
        hidden_dim: int = bounded(2048, 1)
        bottleneck_dim: int = bounded(256, 1)
        use_bn_in_head: bool = False
        norm_last_layer: bool = True
        student_temp: float = bounded(0.1, 1e-4)
        teacher_temp: Warmup = field(default_factory=lambda: Warmup(start=0.04, end=0.07, epochs=30, stairs=30))
        momentum: Cosine = field(default_factory=lambda: Cosine(start=0.996, end=1.0))
        center_momentum: float = bounded(0.9, 0.0, 1.0)
        global_views: list[ViewSpec] = field(default_factory=dino_global_views)
        local_view: ViewSpec = field(default_factory=dino_local_view)
        n_local: int = bounded(8, 0)
        freeze_last_layer_epochs: float = bounded(1.0, 0.0)
        normalize: Literal["imagenet", "none"] = "imagenet"

    @classmethod
    def paper_optim(cls) -> OptimConfig:
        return OptimConfig(name="adamw", base_lr=5e-4, lr_scaling="linear", min_lr=1e-6, warmup_epochs=10,
                           weight_decay=0.04, weight_decay_end=0.4, clip_grad=3.0, clip_mode="per_parameter")

    @classmethod
    def default_model(cls) -> dict:
        return {"backbone": "vit_small_patch16_224", "drop_path_rate": 0.1}

    def __init__(self, cfg: Config, backbone: nn.Module) -> None:
        super().__init__(cfg)
        if len(cfg.global_views) != 2:
            raise ValueError(f"method.global_views: DINO uses exactly 2 global views, got {len(cfg.global_views)}")
        def make_head() -> DINOProjectionHead:
            return DINOProjectionHead(backbone.num_features, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim,
                                      batch_norm=cfg.use_bn_in_head, norm_last_layer=cfg.norm_last_layer)

        head = make_head()
        self.student = MultiCropNetwork(backbone, head)
        self.teacher = disable_drop_path(MultiCropNetwork(frozen_copy(backbone), frozen_head_copy(make_head, head)))
        self.criterion = DINOLoss(output_dim=cfg.out_dim, warmup_teacher_temp=cfg.teacher_temp.start,
                                  teacher_temp=cfg.teacher_temp.end, student_temp=cfg.student_temp,
                                  center_momentum=cfg.center_momentum)
        self.augment = MultiViewAugment(list(cfg.global_views) + [cfg.local_view] * cfg.n_local, cfg.normalize)
        self.normalize = Normalize(cfg.normalize)

    def training_step(self, views: Views, progress: Progress) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            teacher_out = self.teacher(views.crops[:2])
        student_out = self.student(views.crops)
        teacher_temp = self.cfg.teacher_temp(progress)
        # the loss in fp32 outside autocast: CUDA autocast runs log_softmax in fp32 by itself, CPU autocast
        # keeps it and the cross-entropy sum in bf16, whose 0.4% steps are larger than a near-uniform
        # teacher's deviations from uniform (the signal DINO starts from)
        with torch.autocast(student_out[0].device.type, enabled=False):
            teacher_out, student_out = [t.float() for t in teacher_out], [s.float() for s in student_out]
            # global view 1's targets, taken before the loss moves the centre: the ones this step's loss uses
            targets = torch.softmax((teacher_out[0] - self.criterion.center[0]) / teacher_temp, dim=-1)
            loss = self.criterion(teacher_out, student_out, teacher_temp=teacher_temp)
        # collapse diagnostics: the student head's output for global view 1 (the logits the loss acts on)
        return {"loss": loss, "embeddings": student_out[0].detach(),
                **distillation_pair(targets, student_out[1], self.cfg.student_temp)}
