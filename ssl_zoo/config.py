"""Typed experiment configuration: dataclasses are the schema, YAML fills them.

Why: a typo in a cluster config should fail before a job waits hours in a queue, so every key,
type, choice and range is checked at load time and the error names the key, the bad value and
what would have been valid.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ssl_zoo.errors import ConfigError



def bounded(default: Any, lo: float | None = None, hi: float | None = None, *, hi_open: bool = False,
            ordered: bool = False, **kw: Any) -> Any:
    """A dataclass field whose numeric value (each value, for a tuple) must lie in [lo, hi], or [lo, hi)
    with `hi_open`; `ordered` marks a (low, high) range, so a pair given as (high, low) is refused at load
    instead of sampling from an empty interval later."""
    metadata = {"lo": lo, "hi": hi, "hi_open": hi_open, "ordered": ordered}
    if callable(default) and not isinstance(default, (int, float)):
        return field(default_factory=default, metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


# ----------------------------------------------------------------------------- schema


@dataclass
class DataConfig:
    kind: Literal["fashion_mnist", "image_folder", "synthetic", "pairs", "synthetic_pairs", "multispectral",
                  "synthetic_multispectral"] = "fashion_mnist"
    path: str = ""  # empty: the kind's default (fashion_mnist: /usr/share/datasets/fashion-mnist)
    pairs_file: str = ""  # pairs: text/CSV file, one "path1,path2" per line (relative to data.path, else the file)
    pairs_source: Literal["fashion_mnist", "image_folder", "synthetic"] = "image_folder"  # synthetic_pairs: images
    eval_path: str = ""  # image_folder / multispectral: labelled folder used as k-NN query set
    load_size: int = bounded(28, 8, 4096)  # images leave the loader at this square size (uint8)
    # image_folder training: the short side goes to load_size and the long side is kept up to about max_aspect x
    # load_size (whole photos for RandomResizedCrop, padded into squares); 1: the centre load_size square
    max_aspect: float = bounded(4 / 3, 1.0, 16.0)
    channels: int = bounded(3, 1, 64)  # grayscale data is replicated to this many channels
    num_workers: int = bounded(0, 0, 256)
    on_bad_image: Literal["skip", "error"] = "skip"
    limit: int = bounded(0, 0)  # use only N training images, spread over the split (0: all)
    synthetic_size: int = bounded(512, 1)
    synthetic_classes: int = bounded(4, 1)
    # multispectral: band indices kept from each file (empty: all), and per kept band the mean/std that map
    # mean +- 2 std to [0, 255] (empty: estimated from the files, see ssl_zoo.data.multispectral)
    bands: list[int] = field(default_factory=list)
    band_mean: list[float] = field(default_factory=list)
    band_std: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.bands and (len(set(self.bands)) != len(self.bands) or min(self.bands) < 0):
            raise ConfigError(f"data.bands={self.bands}: band indices must be distinct and >= 0")
        if self.bands and len(self.bands) != self.channels:
            raise ConfigError(f"data.bands keeps {len(self.bands)} bands but data.channels={self.channels}; "
                              f"set data.channels={len(self.bands)}")
        for key in ("band_mean", "band_std"):
            values = getattr(self, key)
            if values and len(values) != self.channels:
                raise ConfigError(f"data.{key} has {len(values)} values, one per kept band needed "
                                  f"(data.channels={self.channels})")
        if bool(self.band_mean) != bool(self.band_std) or any(v <= 0 for v in self.band_std):
            raise ConfigError(f"data.band_mean/band_std: give both, with every std > 0 (got {self.band_std})")


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  # any timm model name
    stem: Literal["imagenet", "cifar", "no_maxpool"] = "imagenet"  # ResNets: cifar = 3x3/1 conv, no max-pool
    img_size: int = bounded(0, 0)  # ViTs: 0 = data.load_size
    patch_size: int = bounded(0, 0)  # ViTs: 0 = timm default
    depth: int = bounded(0, 0)  # ViTs: transformer blocks, 0 = timm default (a size for short CPU runs)
    drop_path_rate: float = bounded(0.0, 0.0, 1.0)
    init_from: str = ""  # start from a hub backbone: name (with $SSL_ZOO_HUB), model folder, URL or hf-hub:


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw", "lars"] = "adamw"
    base_lr: float = bounded(1e-3, 0.0)  # lr before the scaling rule
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    lr_reference_batch: int = bounded(256, 1)  # lr = base_lr * f(global_batch / this)
    min_lr: float = bounded(0.0, 0.0)
    warmup_epochs: float = bounded(0.0, 0.0)
    weight_decay: float = bounded(0.0, 0.0)
    weight_decay_end: float = bounded(-1.0, -1.0)  # < 0: constant weight decay
    betas: tuple[float, float] = bounded((0.9, 0.999), 0.0, 1.0, hi_open=True)  # Adam: each in [0, 1)
    momentum: float = bounded(0.9, 0.0, 1.0)
    lars_eta: float = bounded(0.001, 0.0)
    clip_grad: float = bounded(0.0, 0.0)  # 0: no clipping
    clip_mode: Literal["global", "per_parameter"] = "global"


@dataclass
class TrainConfig:
    name: str = ""  # run directory name under output_dir (empty: derived from the config file)
    output_dir: str = "runs"
    epochs: float = bounded(1.0, 0.0)
    max_steps: int = bounded(0, 0)  # > 0 overrides epochs
    # > 0: after a few measured steps, total_steps is fixed so that training and the k-NN evaluations end
    # within this many minutes (epochs / max_steps stay the upper limit; epoch-counted schedules scale with the
    # steps chosen); see ssl_zoo/budget.py and docs/default-job.md
    time_budget_min: float = bounded(0.0, 0.0)
    batch_size: int = bounded(256, 1)  # per rank, per optimizer step (before accumulation split)
    # > 0: the global batch stays this as the rank count changes: batch_size = global_batch / ranks, set by
    # `ssl-zoo submit` and `ssl-zoo train` (per_rank_batch), so adding nodes does not change the recipe
    global_batch: int = bounded(0, 0)
    accumulate: int = bounded(1, 1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 on GPUs that support it (else fp16 + grad scaler); on CPUs bf16 only with native bf16
    # instructions (avx512_bf16 / amx_bf16), else fp32 (ssl_zoo/runtime.py)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    channels_last: bool = False
    sync_batchnorm: bool = True  # only under DDP
    deterministic: bool = False
    threads: int = bounded(0, 0)  # CPU threads (0: torch default)
    log_every: int = bounded(10, 1)
    image_every: int = bounded(0, 0)  # tensorboard view grids every N steps (0: first step only)
    ckpt_every: int = bounded(200, 1)
    keep_last: int = bounded(2, 1)
    resume: bool = True
    resume_changes: Literal["refuse", "allow"] = "refuse"  # resume with a config that changes the run?


@dataclass
class EvalConfig:
    knn_every: int = bounded(0, 0)  # steps between k-NN evals during training (0: only at end)
    knn_k: int = bounded(20, 1)
    knn_temperature: float = bounded(0.07, 1e-6)
    knn_train_limit: int = bounded(10000, 0)  # subset for periodic evals (0: all); final eval uses all
    knn_test_limit: int = bounded(2000, 0)
    final_knn: bool = True
    batch_size: int = bounded(512, 1)


@dataclass
class ExperimentConfig:
    method: Any = None  # the registered method's Config dataclass (chosen by method.name)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def method_name(self) -> str:
        return self.method.name


# ----------------------------------------------------------------------------- loading


def _closest(key: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(key, choices, n=1)
    return f" Did you mean '{match[0]}'?" if match else ""


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: invalid value {value!r}; valid choices: {', '.join(map(repr, args))}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        seq = [_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build_dataclass(tp, _expect_mapping(value, path, [f.name for f in dataclasses.fields(tp)]), path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{path}: unsupported field type {tp!r}")


PROBABILITY_SUFFIX = "_p"  # a field named like `flip_p` is a probability: [0, 1] unless declared otherwise


def _limits(f: dataclasses.Field) -> tuple[float | None, float | None, bool]:
    """(lo, hi, hi_open) of a field: its `bounded` metadata, else [0, 1] for probabilities (`*_p`)."""
    if f.metadata.get("lo") is None and f.metadata.get("hi") is None and f.name.endswith(PROBABILITY_SUFFIX):
        return 0.0, 1.0, False
    return f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("hi_open", False)


def _check_range(value: Any, f: dataclasses.Field, path: str) -> None:
    lo, hi, hi_open = _limits(f)
    values = value if isinstance(value, (tuple, list)) else (value,)
    if not all(isinstance(v, (int, float)) for v in values):  # None, or not numbers: nothing to bound
        return
    for v in values:
        if (lo is not None and v < lo) or (hi is not None and (v >= hi if hi_open else v > hi)):
            valid = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{')' if hi_open else ']'}"
            raise ConfigError(f"{path}: value {v!r} is out of range; valid range: {valid}")
    if f.metadata.get("ordered") and len(values) == 2 and values[0] > values[1]:
        raise ConfigError(f"{path}: {list(values)} is a (low, high) range with low > high; "
                          f"did you mean {[values[1], values[0]]}?")


def _expect_mapping(value: Any, path: str, keys: list[str]) -> dict:
    """`value` if it is a mapping; anything else is an error naming the section and its valid keys."""
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping (key: value lines), got {value!r}; "
                          f"valid keys: {', '.join(keys)}")
    return value


def build_dataclass(cls: type, data: dict, path: str = "") -> Any:
    """Build `cls` from a plain dict, rejecting unknown keys and checking types and ranges."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else key
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{full}'.{_closest(key, list(fields))} "
                f"Valid keys{' under ' + path if path else ''}: {', '.join(fields)}"
            )
        coerced = _coerce(value, hints[key], full)
        _check_range(coerced, fields[key], full)
        kwargs[key] = coerced
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path or cls.__name__}: {e}") from e
    return obj


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{dotted}': '{k}' is a value, not a section")
        node = nxt
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parse CLI `key.sub=value` strings; values are YAML (numbers, lists, true/false)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip(), value))
    return parsed


def read_yaml_mapping(path: Path) -> dict:
    """A YAML file whose top level is a mapping (configs, cluster profiles); clear errors otherwise."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys to values")
    return data


def read_raw(source: str | Path | dict, overrides: list[str] | None = None) -> tuple[dict, str]:
    """The raw mapping of a YAML file (or a copy of a dict) with dotted overrides applied, and the name a
    run takes when `train.name` is unset (the file's stem)."""
    if isinstance(source, dict):
        raw, name_hint = copy.deepcopy(source), ""  # overrides must not write into the caller's dict
    else:
        path = Path(source)
        raw, name_hint = read_yaml_mapping(path), path.stem
    for key, value in parse_overrides(overrides or []):
        _set_dotted(raw, key, value)
    sections = {f.name for f in dataclasses.fields(ExperimentConfig)}
    for key in raw:
        if key not in sections:
            raise ConfigError(f"unknown config section '{key}'.{_closest(key, sorted(sections))} "
                              f"Valid sections: {', '.join(sorted(sections))}")
    return raw, name_hint


def _check_weight_decay_pair(optim_raw: dict, defaults: OptimConfig) -> None:
    """Refuse an optim section that sets `weight_decay` while the method's default `weight_decay_end`
    schedules it elsewhere (DINO: 0.04 -> 0.4): the mix is silent (an SGD recipe's 1e-4 would rise to 0.4)."""
    if "weight_decay" in optim_raw and "weight_decay_end" not in optim_raw and defaults.weight_decay_end >= 0:
        raise ConfigError(f"optim.weight_decay={optim_raw['weight_decay']} is set but optim.weight_decay_end is the "
                          f"method's default {defaults.weight_decay_end} (a cosine schedule from the one to the other); "
                          f"set optim.weight_decay_end too: the end value, or -1 for a constant weight decay")


def build_config(raw: dict, method_config: type, *, optim_defaults: OptimConfig, model_defaults: dict,
                 name_hint: str = "") -> ExperimentConfig:
    """Validate `raw` into an ExperimentConfig, once, with nothing changed afterwards: the optimiser and
    model sections start from the method's paper defaults, and an unset `train.name` is `name_hint` (else
    the method's name). The caller picks `method_config` and the defaults (ssl_zoo.experiment asks the
    method registry), so the schema knows nothing of methods."""

    def section(name: str, cls: type) -> dict:  # an empty YAML section (`train:`) is null: no changes
        value = raw.get(name)
        return {} if value is None else _expect_mapping(value, name, [f.name for f in dataclasses.fields(cls)])

    method_cfg = build_dataclass(method_config, raw["method"], "method")
    optim_raw = section("optim", OptimConfig)
    _check_weight_decay_pair(optim_raw, optim_defaults)
    train_raw = section("train", TrainConfig)
    if not train_raw.get("name"):
        train_raw = {**train_raw, "name": name_hint or method_cfg.name}
    return ExperimentConfig(
        method=method_cfg,
        data=build_dataclass(DataConfig, section("data", DataConfig), "data"),
        model=build_dataclass(ModelConfig, {**model_defaults, **section("model", ModelConfig)}, "model"),
        optim=build_dataclass(OptimConfig, {**dataclasses.asdict(optim_defaults), **optim_raw}, "optim"),
        train=build_dataclass(TrainConfig, train_raw, "train"),
        eval=build_dataclass(EvalConfig, section("eval", EvalConfig), "eval"),
    )


def per_rank_batch(train: TrainConfig, ranks: int) -> int:
    """The per-rank batch of `ranks` ranks: train.global_batch / ranks when it is set, else train.batch_size."""
    if not train.global_batch:
        return train.batch_size
    if train.global_batch % ranks:
        raise ConfigError(f"train.global_batch={train.global_batch} does not divide into {ranks} ranks; "
                          f"use a rank count that divides it, or train.global_batch=0 to set train.batch_size per rank")
    return train.global_batch // ranks


def to_dict(cfg: Any) -> Any:
    """Plain-data view of a config (tuples become lists) for YAML, JSON and checkpoints."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def dump_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
