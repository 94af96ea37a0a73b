"""torch.hub entry points, one per model of a hub index (used by the repository's hubconf.py)."""

from __future__ import annotations

import warnings
from typing import Callable

from torch import nn

from ssl_zoo.hub.index import HubError
from ssl_zoo.hub.source import open_hub


def _entrypoint(name: str, hub: str, entry: dict) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = True, num_classes: int = 0, **kwargs) -> nn.Module:
        from ssl_zoo.hub.loading import load

        if not pretrained:
            raise HubError(f"{name}: hub entries are pretrained backbones; for random init use timm.create_model")
        return load(name, hub=hub, num_classes=num_classes, **kwargs)

    knn = entry.get("metrics", {}).get("knn_top1")
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = (f"{entry.get('architecture')} pretrained with {entry.get('method')} on {entry.get('dataset')}"
                          f" (k-NN top-1 {knn if knn is not None else 'n/a'}). Args: num_classes=0, cache_dir=None.")
    return entrypoint


def entrypoints(hub: str | None) -> dict[str, Callable[..., nn.Module]]:
    """{name: loader} for every model in `hub`; nothing when no hub is configured."""
    if not hub:
        return {}
    models = open_hub(hub).index()["models"]
    if "dependencies" in models:  # hubconf's reserved variable
        warnings.warn("hub model 'dependencies' cannot be a torch.hub entry point; load it with ssl_zoo.hub.load")
    return {name: _entrypoint(name, hub, entry) for name, entry in models.items() if name != "dependencies"}
