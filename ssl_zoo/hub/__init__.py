"""Pretrained-checkpoint hub: export runs, list and download models, load them into timm.

    ssl_zoo.hub.load("simclrv2_resnet18_fmnist", hub="https://host/hub")  # or a folder, file://, hf-hub:org/name
"""

from ssl_zoo.hub.index import HubError, check_name
from ssl_zoo.hub.loading import build_from_folder, load
from ssl_zoo.hub.model_config import read_model_config
from ssl_zoo.cache import cache_root
from ssl_zoo.hub.source import open_hub, resolve

__all__ = ["HubError", "build_from_folder", "cache_root", "check_name", "load", "open_hub", "read_model_config",
           "resolve"]
