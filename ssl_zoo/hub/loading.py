"""Turn a verified model folder into a ready model: timm's own loader, or the zoo's for non-timm stems."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import timm
from timm.models import PretrainedCfg
from torch import nn

from ssl_zoo.backbones import BackboneSpec, rebuild_backbone
from ssl_zoo.hub.download import sha256_file
from ssl_zoo.hub.index import HubError
from ssl_zoo.hub.model_config import CONFIG_FILE, read_model_config
from ssl_zoo.hub.source import WEIGHTS_FILE, resolve

_PRETRAINED_FIELDS = {f.name for f in dataclasses.fields(PretrainedCfg)}


def read_weights(folder: Path, expected_sha256: str | None = None) -> tuple[dict, dict]:
    """(state dict, config) after checking the file's sha256 against the config and the index."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_model_config(folder)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise HubError(f"no {WEIGHTS_FILE} in {folder}")
    actual = sha256_file(path)
    for source, expected in (("config.json", config["ssl_zoo"].get("sha256")), ("the hub index", expected_sha256)):
        if expected and expected != actual:
            raise HubError(f"sha256 mismatch for {path}: {source} says {expected}, the file has {actual}")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise HubError(f"{path} is not a readable safetensors file: {e}") from e
    return state, config


def spec_from_config(config: dict) -> BackboneSpec:
    """How to rebuild the exported backbone, from its config.json."""
    return BackboneSpec(config["architecture"], config.get("model_args", {}), config["ssl_zoo"].get("stem", "imagenet"))


def build_from_folder(folder: Path, num_classes: int = 0, expected_sha256: str | None = None) -> nn.Module:
    """The exported backbone (timm model where timm has the architecture), classifier reset to `num_classes`."""
    state, config = read_weights(folder, expected_sha256)
    spec = spec_from_config(config)
    pretrained_cfg = {k: v for k, v in config["pretrained_cfg"].items() if k in _PRETRAINED_FIELDS}
    try:
        if spec.timm_compatible:
            model = timm.create_model(spec.architecture, pretrained=True, num_classes=num_classes,
                                      pretrained_cfg_overlay=dict(pretrained_cfg, state_dict=state),
                                      **spec.model_args)
            model.zoo_spec = spec
        else:
            model = rebuild_backbone(spec)
            model.load_state_dict(state, strict=True)
            model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}), **pretrained_cfg)
            if num_classes:
                model.reset_classifier(num_classes)
    except TypeError as e:  # a constructor argument the architecture does not take
        raise HubError(f"{folder / CONFIG_FILE}: field 'model_args' does not fit {spec.architecture}: {e}") from e
    except RuntimeError as e:  # missing/unexpected keys or shape mismatches
        raise HubError(f"weights in {folder} do not fit {spec.architecture} {spec.model_args}: {e}") from e
    return model.eval()


def load(spec: str | Path, hub: str | Path | None = None, num_classes: int = 0,
         cache_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """A pretrained backbone from a hub name, a model folder, a `file://`/`http(s)://` URL or `hf-hub:org/name`.

    `hub` (or $SSL_ZOO_HUB) is needed for names; downloads go to `cache_dir` (or $SSL_ZOO_CACHE,
    default ~/.cache/ssl_zoo). `num_classes=0` returns pooled features.
    """
    folder, expected = resolve(spec, hub, cache_dir, progress)
    return build_from_folder(folder, num_classes, expected)
