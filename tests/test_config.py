import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ssl_zoo.config import (ConfigError, DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig, build_dataclass,
                            dump_yaml, parse_overrides)
from ssl_zoo.experiment import load_config
from ssl_zoo.registry import available_methods, method_variants
from tests.conftest import ROOT


def test_paper_defaults_fill_optim_section():
    cfg = load_config({"method": {"name": "dino"}})
    assert cfg.optim.name == "adamw" and cfg.optim.base_lr == 5e-4
    assert cfg.optim.weight_decay == 0.04 and cfg.optim.weight_decay_end == 0.4
    assert cfg.optim.clip_mode == "per_parameter" and cfg.optim.clip_grad == 3.0
    assert cfg.model.backbone == "vit_small_patch16_224" and cfg.model.drop_path_rate == 0.1
    assert cfg.method.out_dim == 65536 and cfg.method.n_local == 8


def test_yaml_section_overrides_single_fields_only():
    cfg = load_config({"method": {"name": "mae"}, "optim": {"base_lr": 1e-3}})
    assert cfg.optim.base_lr == 1e-3
    assert cfg.optim.betas == (0.9, 0.95)  # still the paper's


def test_dotted_overrides_are_yaml_typed():
    cfg = load_config(ROOT / "configs/simclrv2/resnet18_fashion_mnist.yaml",
                      ["optim.base_lr=0.5", "method.view.scale=[0.2,1.0]", "train.compile=true"])
    assert cfg.optim.base_lr == 0.5
    assert cfg.method.view.scale == (0.2, 1.0)
    assert cfg.train.compile is True


def test_exponent_without_dot_is_a_number():
    cfg = load_config({"method": {"name": "simclrv2"}}, ["optim.weight_decay=1e-5"])
    assert cfg.optim.weight_decay == 1e-5
    with pytest.raises(ConfigError, match=r"optim.weight_decay: expected a number, got 'lots'"):
        load_config({"method": {"name": "simclrv2"}}, ["optim.weight_decay=lots"])


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.base_lrr'.*Did you mean 'base_lr'"):
        load_config({"method": {"name": "simclrv2"}, "optim": {"base_lrr": 1.0}})


def test_unknown_section_and_method_name_choices():
    with pytest.raises(ConfigError, match="Valid sections"):
        load_config({"method": {"name": "simclrv2"}, "trian": {}})
    with pytest.raises(ConfigError, match=r"unknown method 'dinoo'.*Did you mean 'dino'.*Valid choices: croco, dino, gmml, mae, pixpro, rad_dino, satmae_pp, selfie, simclrv2, sit"):
        load_config({"method": {"name": "dinoo"}})


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"train.batch_size: expected an integer, got 'big'"):
        load_config({"method": {"name": "simclrv2"}, "train": {"batch_size": "big"}})


def test_out_of_range_names_range():
    with pytest.raises(ConfigError, match=r"method.mask_ratio: value 1.5 is out of range; valid range: \[0.0, 0.99\]"):
        load_config({"method": {"name": "mae", "mask_ratio": 1.5}})


def test_bad_choice_lists_valid_choices():
    with pytest.raises(ConfigError, match=r"optim.name: invalid value 'adam'; valid choices: 'sgd', 'adamw', 'lars'"):
        load_config({"method": {"name": "simclrv2"}, "optim": {"name": "adam"}})


def test_nested_dataclass_and_tuple_lengths_checked():
    with pytest.raises(ConfigError, match=r"method.view.scale: expected 2 values"):
        load_config({"method": {"name": "simclrv2", "view": {"scale": [0.1, 0.5, 1.0]}}})
    with pytest.raises(ConfigError, match=r"method.view.sizee"):
        load_config({"method": {"name": "simclrv2", "view": {"sizee": 3}}})


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        parse_overrides(["optim.lr"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config({"method": {"name": "simclrv2"}, "optim": {"base_lr": 1.0}}, ["optim.base_lr.x=1"])


def test_missing_config_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_every_shipped_config_resolves_and_round_trips():
    files = sorted((ROOT / "configs").glob("*/*.yaml"))
    assert files, "no configs shipped"
    for path in files:
        cfg = load_config(path)
        import yaml

        again = load_config(yaml.safe_load(dump_yaml(cfg)))
        assert dump_yaml(again) == dump_yaml(cfg), path


def numeric_leaves(cls: type, prefix: str) -> Iterator[tuple[str, Callable[[Any], dict]]]:
    """(path the error must name, value -> raw section fragment) for every float, float tuple and nested
    dataclass field of `cls`, so each check below covers fields added later without being edited."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], f"{prefix}.{f.name}"
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is float:
            yield path, lambda v, n=f.name: {n: v}
        elif origin is tuple and float in args:
            yield f"{path}[0]", lambda v, n=f.name, k=len(args): {n: [v] * k}
        elif dataclasses.is_dataclass(tp):
            for sub, make in numeric_leaves(tp, path):
                yield sub, lambda v, n=f.name, m=make: {n: m(v)}
        elif origin is list and args and dataclasses.is_dataclass(args[0]):
            for sub, make in numeric_leaves(args[0], f"{path}[0]"):
                yield sub, lambda v, n=f.name, m=make: {n: [m(v)]}


def every_numeric_leaf() -> Iterator[tuple[str, dict]]:
    """(path, raw config) with a placeholder `VALUE` in each numeric field of every section and method."""
    sections = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig,
                "eval": EvalConfig}
    for name, default in available_methods().items():
        for variant, cls in (method_variants(name) or {None: default}).items():
            selects = {"name": name} if variant is None else {"name": name, "variant": variant}
            for path, make in numeric_leaves(cls.Config, "method"):
                yield path, lambda v, selects=selects, make=make: {"method": {**selects, **make(v)}}
    for section, cls in sections.items():
        for path, make in numeric_leaves(cls, section):
            yield path, lambda v, section=section, make=make: {"method": {"name": "simclrv2"}, section: make(v)}


@pytest.mark.parametrize("bad", [math.nan, math.inf, "-inf"])
def test_every_float_field_of_every_method_and_section_rejects_non_finite_values(bad):
    leaves = list(every_numeric_leaf())
    assert {"method.view.scale[0]", "method.global_views[0].flip_p", "optim.betas[0]",
            "method.mask_ratio"} <= {path for path, _ in leaves}  # the walk reaches nested and listed fields
    for path, make in leaves:
        with pytest.raises(ConfigError, match=rf"^{re.escape(path)}: expected a finite number, got -?(nan|inf)$"):
            load_config(make(bad))


def test_every_probability_field_is_checked_to_lie_in_0_1():
    probabilities = [(path, make) for path, make in every_numeric_leaf() if path.endswith("_p")]
    assert len(probabilities) > 10
    for path, make in probabilities:
        with pytest.raises(ConfigError, match=rf"^{re.escape(path)}: value 1.5 is out of range; valid range: "
                                              r"\[0.0, 1.0\]"):
            load_config(make(1.5))

    @dataclasses.dataclass
    class NewAugment:  # a field added without bounds: its name makes it a probability
        drop_p: float = 0.1

    with pytest.raises(ConfigError, match=r"^aug.drop_p: value -0.5 is out of range; valid range: \[0.0, 1.0\]$"):
        build_dataclass(NewAugment, {"drop_p": -0.5}, "aug")
    assert build_dataclass(NewAugment, {"drop_p": 1.0}, "aug").drop_p == 1.0


def test_reversed_ranges_are_refused_with_the_fix():
    base = {"method": {"name": "simclrv2"}}
    with pytest.raises(ConfigError, match=r"^method.view.scale: \[1.0, 0.3\] is a \(low, high\) range with "
                                          r"low > high; did you mean \[0.3, 1.0\]\?$"):
        load_config(base, ["method.view.scale=[1.0, 0.3]"])
    with pytest.raises(ConfigError, match=r"^method.global_views\[1\].blur_sigma: \[2.0, 0.1\] is a \(low, high\)"):
        load_config({"method": {"name": "dino", "global_views": [{}, {"blur_sigma": [2.0, 0.1]}]}})
    with pytest.raises(ConfigError, match=r"^method.view.ratio: \[1.3, 0.7\] is a \(low, high\)"):
        load_config(base, ["method.view.ratio=[1.3, 0.7]"])
    assert load_config(base, ["method.view.scale=[0.5, 0.5]"]).method.view.scale == (0.5, 0.5)  # a point is a range


def test_adam_betas_must_lie_in_0_1_half_open():
    base = {"method": {"name": "mae"}}
    for betas, bad in (([0.9, 1.0], "1.0"), ([-0.1, 0.99], "-0.1"), ([1.5, 0.9], "1.5")):
        with pytest.raises(ConfigError, match=rf"^optim.betas: value {bad} is out of range; valid range: \[0.0, 1.0\)"):
            load_config(base, [f"optim.betas={betas}"])
    assert load_config(base, ["optim.betas=[0.0, 0.999]"]).optim.betas == (0.0, 0.999)


@pytest.mark.parametrize("raw, message", [
    ({"method": 3}, r"^method: expected a mapping with at least 'name' \(method.name is required; one of croco, "
                    r"dino.*\) and that method's keys, got 3$"),
    ({"method": {"name": "simclrv2"}, "train": 5},
     r"^train: expected a mapping \(key: value lines\), got 5; valid keys: name, output_dir, epochs, .*resume_changes$"),
    ({"method": {"name": "simclrv2"}, "optim": [1, 2]},
     r"^optim: expected a mapping .*got \[1, 2\]; valid keys: name, base_lr"),
    ({"method": {"name": "simclrv2"}, "data": "fashion_mnist"}, r"^data: expected a mapping .*valid keys: kind, path"),
    ({"method": {"name": "simclrv2", "view": 0.5}},
     r"^method.view: expected a mapping .*got 0.5; valid keys: size, scale, ratio, .*solarize_p$"),
])
def test_a_section_given_as_a_plain_value_names_the_section_and_its_keys(raw, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        load_config(raw)
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  name: simclrv2\ntrain:\noptim:\n")  # an empty section (null) changes nothing
    assert load_config(path).train.batch_size == 256


def test_weight_decay_start_without_its_scheduled_end_is_refused():
    """DINO's paper optimiser schedules weight decay 0.04 -> 0.4; a config that sets only the start would
    silently inherit the end (an SGD recipe's 1e-4 rising to 0.4)."""
    with pytest.raises(ConfigError, match=r"optim.weight_decay=0.0001 is set but optim.weight_decay_end is the "
                                          r"method's default 0.4.*or -1 for a constant"):
        load_config({"method": {"name": "dino"}, "optim": {"name": "sgd", "weight_decay": 1e-4}})
    constant = load_config({"method": {"name": "dino"}}, ["optim.weight_decay=1e-4", "optim.weight_decay_end=-1"])
    assert (constant.optim.weight_decay, constant.optim.weight_decay_end) == (1e-4, -1.0)
    unscheduled = load_config({"method": {"name": "simclrv2"}}, ["optim.weight_decay=1e-5"])  # paper's is constant
    assert unscheduled.optim.weight_decay_end < 0
