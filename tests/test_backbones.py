"""Backbone builders: small-image ResNet stems, the recorded build spec, clear errors."""

import pytest
import torch
from torch import nn

from ssl_zoo.backbones import build_backbone, rebuild_backbone, spec_of
from ssl_zoo.config import ConfigError, ModelConfig


@pytest.mark.parametrize("stem, conv, side", [("imagenet", 7, 2), ("no_maxpool", 7, 4), ("cifar", 3, 8)])
def test_resnet_stems_set_the_downsampling(stem, conv, side):
    model = build_backbone(ModelConfig(backbone="resnet18", stem=stem))
    assert model.conv1.kernel_size == (conv, conv)
    assert isinstance(model.maxpool, nn.Identity) == (stem != "imagenet")
    assert model.forward_features(torch.zeros(1, 3, 64, 64)).shape[-1] == side
    assert spec_of(model).timm_compatible == (stem == "imagenet")


def test_rebuild_from_spec_has_the_same_architecture():
    model = build_backbone(ModelConfig(backbone="vit_tiny_patch16_224", patch_size=7, img_size=28), img_size=28)
    twin = rebuild_backbone(spec_of(model))
    twin.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(2, 3, 28, 28)
    assert torch.equal(twin.eval()(x), model.eval()(x))


def test_stem_on_a_vit_is_a_clear_error():
    with pytest.raises(ConfigError, match="applies to ResNets only"):
        build_backbone(ModelConfig(backbone="vit_tiny_patch16_224", stem="no_maxpool"), img_size=28)
    with pytest.raises(ConfigError, match="unknown timm architecture 'resnet181'"):
        build_backbone(ModelConfig(backbone="resnet181"))


def test_depth_sets_a_vits_blocks_and_travels_with_its_spec():
    model = build_backbone(ModelConfig(backbone="vit_tiny_patch16_224", patch_size=7, img_size=28, depth=3), img_size=28)
    assert len(model.blocks) == 3
    twin = rebuild_backbone(spec_of(model))  # what the hub rebuilds an exported backbone from
    twin.load_state_dict(model.state_dict(), strict=True)
    assert len(twin.blocks) == 3


def test_depth_on_a_resnet_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"model.depth=3: only timm ViT backbones .* not 'resnet18'"):
        build_backbone(ModelConfig(backbone="resnet18", depth=3))
