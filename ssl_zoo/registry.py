"""Method registry: config names map to Method classes.

A name may hold several algorithms, one class each (SiT latest / v1, SatMAE++ group / RGB); the
`method.variant` key picks among them, so `method.name: sit` with `variant: v1` selects the v1 class
and a config without `variant` gets the name's default.
"""

from __future__ import annotations

import difflib
from typing import Callable

from ssl_zoo.errors import ConfigError

_METHODS: dict[str, dict[str, type]] = {}  # name -> variant -> class ("" for a name with one algorithm)
_DEFAULT_VARIANT: dict[str, str] = {}


def register(name: str, variant: str = "", default: bool = False) -> Callable[[type], type]:
    """Register a class under `name` (and `variant`, for a name with several algorithms; one of them
    registered with `default=True`)."""

    def wrap(cls: type) -> type:
        variants = _METHODS.setdefault(name, {})
        if variant in variants or "" in variants or (variants and not variant):
            raise ValueError(f"method {name!r} (variant {variant!r}) registered twice")
        cls.registry_name = name
        variants[variant] = cls
        if default or not variant:
            _DEFAULT_VARIANT[name] = variant
        return cls

    return wrap


def _load_builtin() -> None:
    import ssl_zoo.methods  # noqa: F401  (registers the built-in methods)


def available_methods() -> dict[str, type]:
    """name -> class (the default variant's, for a name with several)."""
    _load_builtin()
    return {name: _METHODS[name][_DEFAULT_VARIANT[name]] for name in sorted(_METHODS)}


def method_variants(name: str) -> dict[str, type]:
    """variant -> class for a name with several algorithms; empty for a name with one."""
    _load_builtin()
    return {v: cls for v, cls in _METHODS.get(name, {}).items() if v}


def get_method_class(name: str, variant: str | None = None) -> type:
    """The class `method.name` (and `method.variant`, where the name has variants; None: the default) selects."""
    methods = available_methods()
    if name not in methods:
        close = difflib.get_close_matches(str(name), list(methods), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"method.name: unknown method {name!r}.{hint} Valid choices: {', '.join(methods)}")
    variants = method_variants(name)
    if not variants or variant is None:
        return methods[name]
    if variant not in variants:
        raise ConfigError(f"method.variant: {variant!r} is not a variant of {name}; valid choices: "
                          f"{', '.join(map(repr, variants))}")
    return variants[variant]


def resolve_method(raw: dict) -> tuple[type, dict]:
    """The class a `method:` mapping selects and the mapping its Config is built from: without the keys
    the class lists in `retired_keys` (a config saved when one class held several algorithms carries the
    other algorithm's fields, which were ignored then and are ignored now)."""
    cls = get_method_class(raw["name"], raw.get("variant"))
    return cls, {key: value for key, value in raw.items() if key not in cls.retired_keys}
