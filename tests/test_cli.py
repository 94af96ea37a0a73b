import argparse
import re
import subprocess
import sys

import pytest
import yaml

from ssl_zoo.cli import build_parser, main
from ssl_zoo.experiment import load_config
from tests.conftest import ROOT, tiny_config


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ssl_zoo", *args], cwd=ROOT, capture_output=True, text=True)


def test_methods_lists_one_line_each(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [
        "croco", "dino", "gmml", "mae", "pixpro", "rad_dino", "satmae_pp", "selfie", "simclrv2", "sit"]


def all_parsers(parser=None, path=()):
    """(command words, parser) for the top level and every subcommand, however deep."""
    parser = parser or build_parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, (*path, name))


COMMANDS = [path for path, _ in all_parsers()]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "ssl-zoo")
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: ssl-zoo" in capsys.readouterr().out


def test_every_option_argument_and_subcommand_has_help_text():
    missing = []
    for path, parser in all_parsers():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{' '.join(path)} {a.dest}" for a in action._choices_actions if not a.help]
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert len(COMMANDS) > 20 and not missing


def test_epilogs_suggest_only_overrides_that_exist_and_apply_to_the_command():
    """Training commands may suggest any key; evaluation commands read a stored config, where only the data
    and evaluation settings change what they do."""
    cfg = load_config(ROOT / "configs/simclrv2/resnet18_fashion_mnist.yaml")
    suggested = {}
    for path, parser in all_parsers():
        for key in re.findall(r"\b([a-z_]+(?:\.[a-z_]+)+)=", parser.epilog or ""):
            section, *rest = key.split(".")
            node = getattr(cfg, section)
            for part in rest[:-1]:
                node = getattr(node, part)
            assert hasattr(node, rest[-1]), (path, key)
            suggested.setdefault(path, set()).add(section)
    for command in (("eval", "knn"), ("eval", "linear"), ("finetune",)):
        assert suggested[command] == {"data", "eval"}, command
    assert suggested[("train",)] == suggested[("submit",)] == {"optim", "train", "data"}


def test_config_show_prints_resolved_config(capsys):
    assert main(["config", "show", str(ROOT / "configs/simclrv2/resnet18_fashion_mnist.yaml"),
                 "optim.base_lr=0.7"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["optim"]["base_lr"] == 0.7 and shown["method"]["name"] == "simclrv2"
    assert shown["optim"]["lars_eta"] == 0.001  # a paper default the file does not state


def test_bad_override_is_a_clear_error_with_exit_2():
    result = run_cli("train", str(ROOT / "configs/simclrv2/resnet18_fashion_mnist.yaml"), "optim.nmae=sgd")
    assert result.returncode == 2
    assert "unknown config key 'optim.nmae'" in result.stderr and "Did you mean 'name'" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_then_eval_knn_from_run_dir_and_checkpoint(tmp_path):
    cfg = tiny_config("simclrv2", tmp_path, train={"max_steps": 3, "name": "cli"},
                      eval={"final_knn": True})
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = run_cli("train", str(path), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "k-NN top-1" in result.stdout and "checkpoint:" in result.stdout and "tensorboard logs:" in result.stdout
    run_dir = tmp_path / "runs" / "cli"
    trained = float(result.stdout.split("on the test set: ")[1].split("%")[0])
    for source in (run_dir, run_dir / "checkpoints" / "last.pt"):
        out = run_cli("eval", "knn", str(source))
        assert out.returncode == 0, out.stderr
        assert float(out.stdout.split(": ")[-1].rstrip("%\n")) == pytest.approx(trained, abs=1e-6)
    missing = run_cli("eval", "knn", str(tmp_path / "none"))
    assert missing.returncode == 2 and "no such run directory, checkpoint or hub model folder" in missing.stderr


def test_every_zoo_error_is_one_line_from_the_cli(monkeypatch, capsys):
    """One base class: a new error class is caught by the CLI without editing it."""
    import inspect
    import re

    from ssl_zoo import cli, errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) >= 8 and all(issubclass(c, errors.SslZooError) for c in classes)
    assert not re.search(r"^\s*(from|import) ssl_zoo", inspect.getsource(errors), flags=re.M)  # the bottom layer
    for cls in classes:
        def fail(args, cls=cls):
            raise cls(f"{cls.__name__} happened")

        monkeypatch.setattr(cli, "cmd_train", fail)
        assert cli.main(["train", "any.yaml"]) == 2
        assert capsys.readouterr().err == f"ssl-zoo: error: {cls.__name__} happened\n"


def test_hub_export_and_its_top_level_alias_write_the_same_model(tmp_path, capsys):
    from ssl_zoo.trainer import Trainer

    run = Trainer(load_config(tiny_config("simclrv2", tmp_path, train={"max_steps": 2, "name": "exported"})),
                  progress_bar=False).fit().run_dir
    hub = tmp_path / "hub"
    assert main(["hub", "export", str(run), "--name", "via-hub", "--hub", str(hub)]) == 0
    assert main(["export", str(run), "--name", "via-alias", "--hub", str(hub)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"exported via-alias: {hub / 'via-alias'}")
    weights = [(hub / name / "model.safetensors").read_bytes() for name in ("via-hub", "via-alias")]
    assert weights[0] == weights[1]
    assert main(["hub", "list", "--hub", str(hub)]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["via-alias", "via-hub"]
