import subprocess
import sys

import pytest
import yaml

from ssl_zoo.cli import build_parser, main
from tests.conftest import ROOT, tiny_config


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ssl_zoo", *args], cwd=ROOT, capture_output=True, text=True)


def test_methods_lists_one_line_each(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [
        "croco", "dino", "gmml", "mae", "pixpro", "rad_dino", "satmae_pp", "selfie", "simclrv2", "sit"]


@pytest.mark.parametrize("command", [[], ["methods"], ["train"], ["config"], ["config", "show"], ["eval"],
                                     ["eval", "knn"], ["eval", "linear"], ["finetune"], ["distill"], ["export"],
                                     ["hub"], ["hub", "list"],
                                     ["hub", "info"], ["hub", "download"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: ssl-zoo" in capsys.readouterr().out


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
