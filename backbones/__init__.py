"""Backbone builders over timm: every backbone exposes `num_features` and returns pooled features.

timm models are used unchanged wherever timm has the architecture, so exported weights load
into `timm.create_model` without prefix surgery.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import timm
from torch import nn

from ssl_zoo.backbones import satmae  # noqa: F401  (registers SatMAE++'s group ViTs with timm)
from ssl_zoo.config import ConfigError, ModelConfig


def _check_name(name: str) -> None:
    if name in timm.list_models():
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise ConfigError(f"model.backbone: unknown timm architecture {name!r}.{hint}")


@dataclass(frozen=True)
class BackboneSpec:
    """How a backbone was built, so the hub can rebuild it: timm name, constructor args, stem."""

    architecture: str
    model_args: dict = field(default_factory=dict)
    stem: str = "imagenet"

    @property
    def timm_compatible(self) -> bool:
        """Whether plain timm (no ssl_zoo import) builds this exact architecture with `timm.create_model`."""
        return self.stem == "imagenet" and self.architecture not in satmae.ARCHITECTURES


def spec_of(model: nn.Module) -> BackboneSpec:
    spec = getattr(model, "zoo_spec", None)
    if not isinstance(spec, BackboneSpec):
        raise TypeError(f"{type(model).__name__} was not built by ssl_zoo.backbones.build_backbone")
    return spec


def rebuild_backbone(spec: BackboneSpec, num_classes: int = 0) -> nn.Module:
    """An untrained backbone of the same architecture (for loading exported weights)."""
    model = timm.create_model(spec.architecture, num_classes=num_classes, **spec.model_args)
    adapt_stem(model, spec.stem)
    model.zoo_spec = spec
    return model


def is_vit(model: nn.Module) -> bool:
    return hasattr(model, "patch_embed") and hasattr(model, "blocks")


STEMS = ("imagenet", "cifar", "no_maxpool", "no_layer_scale")  # what adapt_stem can redo


def adapt_stem(model: nn.Module, stem: str) -> nn.Module:
    """Changes timm has no constructor argument for, recorded in BackboneSpec.stem so the hub can
    redo them. ResNet stems for small images: 'cifar' = 3x3 stride-1 conv, no max-pool (what GPU
    recipes use; 4x4 less downsampling); 'no_maxpool' = the ImageNet 7x7/2 conv without the max-pool
    (2x2 less downsampling, a quarter of cifar's cost). 'no_layer_scale': an Eva (RoPE ViT) without
    LayerScale, which timm.create_model cannot build (it drops init_values=None and keeps the
    architecture's default). 'imagenet' leaves timm's model as is."""
    if stem == "imagenet":
        return model
    if stem == "no_layer_scale":
        if not hasattr(model, "blocks") or not all(hasattr(b, "gamma_1") for b in model.blocks):
            raise ConfigError(f"stem no_layer_scale applies to timm Eva models only, not {type(model).__name__}")
        for block in model.blocks:
            block.gamma_1 = block.gamma_2 = None  # Eva's blocks skip the scale when it is None
        return model
    if not hasattr(model, "conv1") or not hasattr(model, "maxpool"):
        raise ConfigError(f"model.stem={stem} applies to ResNets only, not {type(model).__name__}")
    if stem == "cifar":
        old = model.conv1
        model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_backbone(cfg: ModelConfig, in_chans: int = 3, img_size: int = 224, **overrides) -> nn.Module:
    """A timm model without classifier (num_classes=0), so forward returns pooled features."""
    _check_name(cfg.backbone)
    kwargs: dict = {"num_classes": 0, "in_chans": in_chans}
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    if cfg.depth and not cfg.backbone.startswith(("vit", "deit")):
        raise ConfigError(f"model.depth={cfg.depth}: only timm ViT backbones (vit_*, deit_*) take a depth, "
                          f"not {cfg.backbone!r}; use 0 (the architecture's own)")
    if cfg.backbone.startswith(("vit", "deit", "satmae_group_vit")):
        kwargs["img_size"] = cfg.img_size or img_size
        if cfg.patch_size:
            kwargs["patch_size"] = cfg.patch_size
        if cfg.depth:
            kwargs["depth"] = cfg.depth
        if not cfg.backbone.startswith("satmae"):  # SatMAE++'s group ViT is fixed to one size
            kwargs["dynamic_img_size"] = True  # multi-crop: global and local crops of different sizes
    kwargs.update(overrides)
    model = timm.create_model(cfg.backbone, **kwargs)
    adapt_stem(model, cfg.stem)
    # drop_path only matters in training; num_classes is chosen by whoever loads the weights
    build_args = {k: v for k, v in kwargs.items() if k not in ("num_classes", "drop_path_rate")}
    model.zoo_spec = BackboneSpec(cfg.backbone, build_args, cfg.stem)
    return model

