import pytest

from ssl_zoo.config import ConfigError, dump_yaml, load_config, parse_overrides
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
