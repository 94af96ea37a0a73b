"""Load an experiment: YAML + overrides + the chosen method's paper defaults -> ExperimentConfig.

Why a module of its own: choosing the method needs the registry (which imports every method, which
import the schema), so this step sits above the registry and `ssl_zoo.config` stays at the bottom,
knowing nothing of methods.
"""

from __future__ import annotations

from pathlib import Path

from ssl_zoo.config import ExperimentConfig, build_config, read_raw
from ssl_zoo.errors import ConfigError
from ssl_zoo.registry import available_methods, resolve_method


def load_config(source: str | Path | dict, overrides: list[str] | None = None) -> ExperimentConfig:
    """Resolve a YAML file (or dict) plus dotted overrides into a validated ExperimentConfig.

    The optimiser and model sections start from the method's paper defaults (`Method.paper_optim`,
    `Method.default_model`), so a config only states what it changes.
    """
    raw, name_hint = read_raw(source, overrides)
    method_raw = raw.get("method")
    if not isinstance(method_raw, dict) or "name" not in method_raw:
        raise ConfigError(f"method: expected a mapping with at least 'name' (method.name is required; one of "
                          f"{', '.join(available_methods())}) and that method's keys, got {method_raw!r}")
    method_cls, method_raw = resolve_method(method_raw)  # method.variant picks the class; retired keys dropped
    return build_config({**raw, "method": method_raw}, method_cls.Config, optim_defaults=method_cls.paper_optim(),
                        model_defaults=method_cls.default_model(), name_hint=name_hint)
