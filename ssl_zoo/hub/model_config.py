"""A hub model's config.json, read and checked field by field before anything is built from it.

Why: config.json comes from other people's hubs; a wrong type, a missing field or an architecture
this timm does not know would otherwise surface as a timm traceback or as a misleading "weights do
not fit". Each problem is one line naming the file, the field and what is wrong.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import timm

from ssl_zoo.backbones import STEMS  # importing the zoo's backbones registers its own timm architectures
from ssl_zoo.hub.index import HubError, check_sha256

CONFIG_FILE = "config.json"
REQUIRED = ("architecture", "pretrained_cfg", "ssl_zoo")
FIELD_TYPES: dict[str, tuple[type, str]] = {  # dotted field -> (type, what it must be)
    "architecture": (str, "a timm model name (a string)"),
    "model_args": (dict, "an object of constructor arguments"),
    "pretrained_cfg": (dict, "an object (timm's pretrained_cfg)"),
    "ssl_zoo": (dict, "an object"),
    "ssl_zoo.stem": (str, f"one of {', '.join(STEMS)}"),
    "ssl_zoo.sha256": (str, "64 hex digits"),
    "ssl_zoo.size_bytes": (int, "a whole number of bytes"),
}


def _get(config: dict, dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def check_architecture(name: str, where: str) -> None:
    """`name` must be an architecture timm (with the zoo's registrations) can build."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f"; the closest timm name is {close[0]!r}" if close else ""
        raise HubError(f"{where}: field 'architecture': timm {timm.__version__} does not know {name!r}{hint}")


def check_model_config(config: Any, where: str) -> dict:
    """`config` if every field config.json needs is there with the right type and a usable value."""
    if not isinstance(config, dict):
        raise HubError(f"{where}: expected a JSON object, got {type(config).__name__}")
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise HubError(f"{where} lacks {', '.join(missing)}: not an ssl-zoo export")
    for dotted, (tp, what) in FIELD_TYPES.items():
        value = _get(config, dotted)
        if value is not None and (not isinstance(value, tp) or isinstance(value, bool)):
            raise HubError(f"{where}: field '{dotted}' must be {what}, got {value!r}")
    stem = _get(config, "ssl_zoo.stem")
    if stem not in (None, *STEMS):
        raise HubError(f"{where}: field 'ssl_zoo.stem' must be one of {', '.join(STEMS)}, got {stem!r}")
    if _get(config, "ssl_zoo.sha256") is not None:
        check_sha256(config["ssl_zoo"]["sha256"], f"{where}: field 'ssl_zoo.sha256'")
    if (_get(config, "ssl_zoo.size_bytes") or 0) < 0:
        raise HubError(f"{where}: field 'ssl_zoo.size_bytes' must be >= 0, got {config['ssl_zoo']['size_bytes']}")
    check_architecture(config["architecture"], where)
    return config


def read_model_config(folder: Path) -> dict:
    """The checked config.json of a model folder."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise HubError(f"{folder} is not a hub model folder: no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HubError(f"{path} is not valid JSON: {e}") from e
    return check_model_config(config, str(path))
