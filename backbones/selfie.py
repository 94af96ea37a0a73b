"""Selfie's patch network P: the first three stages of a timm ResNet, applied to every patch.

P is a plain timm ResNet whose fourth stage has zero blocks (`layers=(n1, n2, n3, 0)`), followed by
timm's global average pool, so:
- it returns one pooled vector per input (per patch during pretraining, per image for k-NN);
- its weights carry plain timm ResNet names (conv1, bn1, layer1..layer3): fine-tuning reuses P as
  the first three stages of the full ResNet, e.g.
  `timm.create_model("resnet50", num_classes=K).load_state_dict(state, strict=False)` leaves only
  layer4 and fc freshly initialised;
- the hub rebuilds exactly this trunk with `timm.create_model(arch, layers=..., channels=...)` from
  the recorded spec, no custom class and no key surgery.
"""

from __future__ import annotations

import torch
from lightly.models.utils import patchify
from timm.models.resnet import ResNet
from torch import nn

from ssl_zoo.backbones import build_backbone
from ssl_zoo.config import ConfigError, ModelConfig


def build_patch_network(cfg: ModelConfig, in_chans: int = 3) -> nn.Module:
    """`cfg.backbone` (a timm ResNet) truncated after stage 3, pooled; `num_features` = stage-3 width.

    Fine-tuning reuses it as the first three stages of `cfg.backbone` (see the module docstring).
    """
    with torch.device("meta"):  # only to read the stage layout; no memory, no init cost
        full = build_backbone(cfg, in_chans=in_chans)
    if not isinstance(full, ResNet):
        raise ConfigError(f"model.backbone: Selfie's patch network is the first three stages of a timm ResNet "
                          f"(e.g. resnet50, resnet18), not {cfg.backbone!r}")
    stages = [full.layer1, full.layer2, full.layer3]
    layers = tuple(len(s) for s in stages) + (0,)
    planes = tuple(info["num_chs"] // type(s[0]).expansion for info, s in zip(full.feature_info[1:4], stages))
    # an empty layer4 keeps timm's forward (it calls layer4) and sets num_features = planes[-1] x expansion
    return build_backbone(cfg, in_chans=in_chans, layers=layers, channels=planes + planes[-1:])


def per_patch(network: nn.Module, images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Apply `network` to each non-overlapping patch (patches folded into the batch): (B, N, D).

    Patches are numbered row-major (index = row x grid + column), as lightly's `patchify`.
    """
    batch, chans = images.shape[:2]
    patches = patchify(images, patch_size)  # (B, N, p*p*C), pixels in (p, p, C) order
    num = patches.shape[1]
    patches = patches.reshape(batch * num, patch_size, patch_size, chans).permute(0, 3, 1, 2)
    return network(patches).reshape(batch, num, -1)
