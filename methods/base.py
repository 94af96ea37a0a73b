"""The method contract: an nn.Module holding networks and loss, nothing about loops.

The trainer owns the loop (devices, DDP, optimiser, schedules, checkpoints); a method owns
`views -> loss` and what happens to its own state after a step (EMA teachers, centres).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import timm.optim
import torch
import torchvision.utils
from lightly.models.utils import update_momentum
from torch import nn

from ssl_zoo.augment import EvalView, MultiViewAugment, Normalize, Views
from ssl_zoo.backbones import build_backbone, is_vit
from ssl_zoo.config import ConfigError, ExperimentConfig, OptimConfig
from ssl_zoo.data import Batch
from ssl_zoo.schedules import Progress


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """`module` and all its children in eval mode inside; each one's own flag restored after (not the
    root's flag copied down: a submodule may be in another mode than its parent)."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in flags:
            m.training = training


def preview(log_images: Callable) -> Callable:
    """Decorates every `log_images`. The trainer calls it on rank 0 only, between steps, so its forward
    passes must leave training as it was and stay local: no grad, and eval mode: no BatchNorm statistics
    updated, no SyncBatchNorm collective that the other ranks never join (a hang on CUDA), no dropout or
    drop-path draws from the RNG."""

    @functools.wraps(log_images)
    def wrapped(self: nn.Module, views: Views) -> dict[str, torch.Tensor]:
        with torch.no_grad(), eval_mode(self):
            return log_images(self, views)

    return wrapped


@dataclass(frozen=True)
class EMA:
    """A teacher that follows an online module: once per optimiser step the teacher's weights become
    m * teacher + (1 - m) * online (lightly's update_momentum), in `Method.after_step`. Declared by a method
    (`Method.ema`) so that the update and the logging of m are written once, in the base class.

    `before_forward`: the official code updates the teacher at the START of step t's forward with m(t)
    (PixPro). after_step then runs that update after step t - 1's optimiser step: with m(t + 1) after step t,
    and none after the last step. The official first update, m(0) before step 0, is left out: the teacher
    starts as a copy of the online module, so it is a no-op (up to float rounding). Either way the update
    stays a pure function of the progress, so a resumed run continues the same sequence."""

    online: str  # attribute (dotted path) of the module trained by the optimiser
    teacher: str  # attribute of its frozen copy
    momentum: Callable[[Progress], float] | float  # a schedule of training progress, or a constant
    log_as: str = "momentum"  # the key of m in schedule_values
    before_forward: bool = False

    def value(self, progress: Progress) -> float:
        """m of step `progress.step`'s update (what schedule_values logs)."""
        return self.momentum(progress) if callable(self.momentum) else self.momentum

    def value_after_step(self, progress: Progress) -> float | None:
        """m of the update that after_step applies after optimiser step `progress.step`; None: no update."""
        if not self.before_forward:
            return self.value(progress)
        step = progress.step + 1
        if step >= progress.total_steps:
            return None
        return self.value(dataclasses.replace(progress, step=step, epoch=int(step // max(progress.steps_per_epoch, 1))))


class Method(nn.Module):
    """Base class; subclasses are registered with `ssl_zoo.registry.register`."""

    Config: ClassVar[type]
    description: ClassVar[str] = ""  # "<Title>: what it does"; `ssl-zoo methods` lists it
    registry_name: ClassVar[str] = ""
    needs_vit: ClassVar[bool] = False  # the default from_config refuses any other backbone
    # keys that configs saved when this class shared one Config with another algorithm carry for that
    # algorithm; ignored then, so accepted and dropped on load (ssl_zoo.registry.resolve_method)
    retired_keys: ClassVar[frozenset[str]] = frozenset()
    normalize: Normalize
    augment: MultiViewAugment
    eval_size: int = 0  # > 0: evaluation images are centre-cropped (or resized) to this side
    eval_resize: ClassVar[bool] = False  # True: the whole image is resized to eval_size instead
    eval_minmax: bool = False  # True: each image's own intensity min-max first (as its training views)

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg

    # ---- construction from an experiment config --------------------------------------------
    @classmethod
    def title(cls) -> str:
        """The method's name in messages: its description up to the first colon ("RAD-DINO")."""
        return cls.description.partition(":")[0]

    @classmethod
    def backbone_options(cls, cfg: ExperimentConfig) -> dict:
        """build_backbone keyword arguments beyond `cfg.model` and the band count (e.g. the crop size)."""
        return {}

    @classmethod
    def make_backbone(cls, cfg: ExperimentConfig) -> nn.Module:
        """The backbone of `cfg.model`; with `needs_vit`, a ConfigError for anything but a ViT (a timm CNN
        given ViT-only options such as reg_tokens fails with a TypeError first)."""
        def refuse(detail: str = "") -> ConfigError:
            return ConfigError(f"model.backbone: {cls.title()} needs a ViT, got {cfg.model.backbone!r}{detail}")

        try:
            backbone = build_backbone(cfg.model, in_chans=cfg.data.channels, **cls.backbone_options(cfg))
        except TypeError as e:
            if cls.needs_vit:
                raise refuse(f" ({e})") from e
            raise
        if cls.needs_vit and not is_vit(backbone):
            raise refuse()
        return backbone

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> "Method":
        """Build the backbone (`make_backbone`) and the method around it."""
        return cls(cfg.method, cls.make_backbone(cfg))

    # ---- defaults the config loader starts from -------------------------------------------
    @classmethod
    def paper_optim(cls) -> OptimConfig:
        """The paper's optimiser recipe; a YAML `optim:` section overrides single fields."""
        return OptimConfig()

    @classmethod
    def default_model(cls) -> dict:
        """The paper's backbone (`model:` section defaults)."""
        return {}

    # ---- the contract ---------------------------------------------------------------------
    def views(self, batch: Batch) -> Views:
        """Augmented views on the batch's device; by default the method's `augment` pipeline."""
        return self.augment(batch.images, batch.sizes)

    def training_step(self, views: Views, progress: Progress) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, views: Views, progress: Progress) -> dict[str, torch.Tensor]:
        # DDP hooks into forward(), so the trainer calls the method through it.
        return self.training_step(views, progress)

    def after_backward(self, progress: Progress) -> None:
        """Edit gradients before clipping/stepping (e.g. DINO's frozen last layer)."""

    def ema(self) -> list[EMA]:
        """The method's EMA teachers; after_step updates them and schedule_values logs their momentum."""
        return []

    @torch.no_grad()
    def after_step(self, progress: Progress) -> None:
        """Update non-gradient state after the optimiser step: the EMA teachers of `ema`."""
        for pair in self.ema():
            m = pair.value_after_step(progress)
            if m is not None:
                update_momentum(self.get_submodule(pair.online), self.get_submodule(pair.teacher), m=m)

    def schedule_values(self, progress: Progress) -> dict[str, float]:
        """Scalars of the method's own schedules, for logging: the EMA momentum; overrides add theirs
        (temperatures) to super()'s."""
        return {pair.log_as: pair.value(progress) for pair in self.ema()}

    def param_groups(self, optim_cfg: OptimConfig) -> list[dict]:
        """Weight decay on weights only (not biases or 1-D params), trainable params only."""
        return timm.optim.param_groups_weight_decay(self, weight_decay=optim_cfg.weight_decay)

    def backbone(self) -> nn.Module:
        """The network the hub exports and k-NN evaluates."""
        raise NotImplementedError

    def init_backbone(self, state: dict[str, torch.Tensor]) -> int:
        """Load pretrained backbone weights into every copy of the backbone the method holds (the
        online network and EMA teachers alike: each submodule of backbone()'s class and keys).
        Returns how many copies were loaded."""
        target = self.backbone()
        keys = set(target.state_dict())
        copies = [m for m in self.modules() if type(m) is type(target) and set(m.state_dict()) == keys]
        for module in copies:
            module.load_state_dict(state, strict=True)
        return len(copies)

    def finetune_head(self) -> nn.Module | None:
        """A `linear_bn_relu` layer after backbone() that fine-tuning keeps (SimCLRv2: the first
        projection-head layer); None: fine-tune from the backbone's features."""
        return None

    def eval_view(self, side: int = 0) -> EvalView:
        """The evaluation input from uint8 images: eval_size when the method has one, else `side` (the
        load size; 0 keeps the images' size). Evaluation commands and the hub use it, as does `embed`."""
        return EvalView(self.eval_size or side, self.normalize, resize=self.eval_resize, minmax=self.eval_minmax)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Features for evaluation from uint8 images at the load size."""
        return self.backbone()(self.eval_view()(images))

    @preview
    def log_images(self, views: Views) -> dict[str, torch.Tensor]:
        """Image grids for tensorboard; by default the first images of every view, de-normalised.
        Overrides keep the @preview decorator (tests/test_method_matrix.py checks every method)."""
        grids = {}
        for i, crop in enumerate(views.crops[:4]):
            grids[f"views/{i}"] = image_grid(self.normalize.inverse(crop[:8]))
        return grids


def image_grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    return torchvision.utils.make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow)


def linear_bn_relu(in_dim: int, out_dim: int) -> nn.Sequential:
    """Linear (no bias: BN follows) -> BatchNorm1d -> ReLU, the hidden layer of BN projection heads."""
    return nn.Sequential(nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU())


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy that never receives gradients (EMA teachers, momentum encoders)."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def disable_drop_path(module: nn.Module) -> nn.Module:
    """Zero every stochastic-depth rate in `module` (teachers run without drop-path)."""
    for m in module.modules():
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    return module


def build_method(cfg: ExperimentConfig) -> Method:
    """Instantiate the configured method with its backbone."""
    from ssl_zoo.registry import get_method_class

    cls = get_method_class(cfg.method.name, getattr(cfg.method, "variant", None))
    return cls.from_config(cfg)
