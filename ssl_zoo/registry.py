"""Method registry: config names map to Method classes."""

from __future__ import annotations

import difflib
from typing import Callable

from ssl_zoo.errors import ConfigError

_METHODS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        cls.registry_name = name
        _METHODS[name] = cls
        return cls

    return wrap


def _load_builtin() -> None:
    import ssl_zoo.methods  # noqa: F401  (registers the built-in methods)


def available_methods() -> dict[str, type]:
    _load_builtin()
    return dict(sorted(_METHODS.items()))


def get_method_class(name: str) -> type:
    methods = available_methods()
    if name not in methods:
        close = difflib.get_close_matches(str(name), list(methods), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"method.name: unknown method {name!r}.{hint} Valid choices: {', '.join(methods)}")
    return methods[name]
