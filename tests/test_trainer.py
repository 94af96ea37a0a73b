"""Trainer behaviour: exact resume, atomic checkpoints, NaN guard, signals, logs."""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ssl_zoo.checkpoint import CheckpointError, CheckpointManager, load_checkpoint
from ssl_zoo.errors import ConfigError
from ssl_zoo.experiment import load_config
from ssl_zoo.trainer import NonFiniteLossError, Trainer
from tests.conftest import (ROOT, assert_same_weights, assert_stop_and_resume_matches_straight_run,
                            final_weights, tiny_config)


def write_config(tmp_path: Path, cfg: dict, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_train(config: Path, *overrides: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "ssl_zoo", "train", str(config), "--no-progress", *overrides],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def resume_config(tmp_path):
    return tiny_config("simclrv2", tmp_path, train={"max_steps": 24, "ckpt_every": 5, "threads": 1,
                                                    "deterministic": True, "log_every": 1})


def test_sigkill_then_restart_matches_uninterrupted_run(tmp_path):
    """8 steps per epoch, killed after step 10 (mid-epoch 2): same final weights as one straight run."""
    cfg = resume_config(tmp_path)
    config = write_config(tmp_path, cfg, "resume")
    ref = start_train(config, "train.name=straight")
    assert ref.wait(timeout=300) == 0, ref.stdout.read()

    run_dir = tmp_path / "runs" / "killed"
    proc = start_train(config, "train.name=killed")
    deadline = time.time() + 240
    while not (run_dir / "checkpoints" / "step_10.pt").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] < 24
    again = start_train(config, "train.name=killed")
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert "resumed from" in out
    assert_same_weights(final_weights(tmp_path / "runs" / "straight"), final_weights(run_dir))
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 24  # no duplicated steps after the resume


def test_sigterm_writes_checkpoint_and_exits_cleanly(tmp_path):
    cfg = tiny_config("simclrv2", tmp_path, train={"max_steps": 10000, "ckpt_every": 10000, "name": "term"})
    proc = start_train(write_config(tmp_path, cfg, "term"))
    metrics = tmp_path / "runs" / "term" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "status: interrupted" in out
    state = load_checkpoint(tmp_path / "runs" / "term" / "checkpoints" / "last.pt")
    assert 2 <= state["step"] < 10000


def test_usr1_interrupt_and_resume_in_process_dino_matches(tmp_path):
    """DINO state (EMA teacher, centre, frozen-layer timing) survives a signal-driven stop."""
    assert_stop_and_resume_matches_straight_run(
        tiny_config("dino", tmp_path, train={"max_steps": 8, "ckpt_every": 100, "threads": 1}), stop_after=3)


def test_truncated_last_checkpoint_falls_back_to_previous(tmp_path):
    cfg = tiny_config("simclrv2", tmp_path, train={"max_steps": 6, "ckpt_every": 2, "keep_last": 5})
    result = Trainer(load_config(cfg), progress_bar=False).fit()
    folder = result.run_dir / "checkpoints"
    assert sorted(p.name for p in folder.glob("step_*.pt")) == ["step_2.pt", "step_4.pt", "step_6.pt"]
    last = folder / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # a write cut short
    (folder / "step_6.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="cannot read checkpoint"):
        state, path = CheckpointManager(folder, 5).load_latest()
    assert path.name == "step_4.pt" and state["step"] == 4


def test_foreign_and_non_checkpoint_files_rejected(tmp_path):
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(2)}, junk)
    with pytest.raises(CheckpointError, match="not an ssl-zoo training checkpoint"):
        load_checkpoint(junk)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": Evil(), "step": 1}, evil)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(evil)

    cfg = tiny_config("simclrv2", tmp_path, train={"max_steps": 2, "name": "shared"})
    Trainer(load_config(cfg), progress_bar=False).fit()
    other = tiny_config("mae", tmp_path, train={"max_steps": 2, "name": "shared"})
    with pytest.raises(CheckpointError, match="written by method 'simclrv2', not 'mae'"):
        Trainer(load_config(other), progress_bar=False).fit()


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config("simclrv2", tmp_path, train={"max_steps": 10, "ckpt_every": 2})
    trainer = Trainer(load_config(cfg), progress_bar=False)
    original = trainer.method.training_step

    def poisoned(views, progress):
        out = original(views, progress)
        if progress.step == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    trainer.method.training_step = poisoned
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 3"):
        trainer.fit()
    state = load_checkpoint(trainer.run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 2


def test_run_directory_contents_and_tensorboard_readback(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config("simclrv2", tmp_path, train={"max_steps": 4, "log_every": 2},
                      eval={"final_knn": True, "knn_every": 2, "knn_train_limit": 128, "knn_test_limit": 32})
    result = Trainer(load_config(cfg), progress_bar=False).fit()
    assert (result.run_dir / "config.yaml").exists()
    assert load_config(yaml.safe_load((result.run_dir / "config.yaml").read_text())).train.max_steps == 4
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4]
    for key in ("step", "epoch", "loss", "lr", "img_per_s", "weight_decay", "grad_norm"):
        assert key in train_rows[0]
    knn_rows = [r for r in rows if "knn_top1" in r]
    assert [r["step"] for r in knn_rows] == [2, 4] and result.knn_top1 == knn_rows[-1]["knn_top1"]
    acc = EventAccumulator(str(result.tb_dir), size_guidance={"images": 0}).Reload()
    assert {"loss", "lr", "weight_decay", "img_per_s", "grad_norm", "knn_top1"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("loss")] == [2, 4]
    assert any(tag.startswith("views/") for tag in acc.Tags()["images"])


def test_gradient_accumulation_steps_once_per_accumulated_batch(tmp_path):
    cfg = tiny_config("mae", tmp_path, train={"max_steps": 3, "batch_size": 32, "accumulate": 2})
    trainer = Trainer(load_config(cfg), progress_bar=False)
    calls, steps = [], []
    original_step, original_train = trainer.optimizer.step, trainer.method.training_step

    def counted_train(views, progress):
        calls.append((progress.step, views.crops[0].shape[0]))
        return original_train(views, progress)

    def counted_step(*args, **kwargs):
        steps.append(1)
        return original_step(*args, **kwargs)

    trainer.method.training_step, trainer.optimizer.step = counted_train, counted_step
    trainer.fit()
    assert calls == [(0, 16), (0, 16), (1, 16), (1, 16), (2, 16), (2, 16)]
    assert len(steps) == 3


def test_bad_accumulation_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="must be divisible by train.accumulate=3"):
        Trainer(load_config(tiny_config("mae", tmp_path, train={"batch_size": 32, "accumulate": 3})))


def assert_every_checkpoint_finite(folder: Path) -> list[int]:
    steps = []
    for path in sorted(folder.glob("*.pt")):
        state = load_checkpoint(path)
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point()), path
        steps.append(state["step"])
    return steps


def test_non_finite_gradient_with_finite_loss_is_not_applied_nor_saved(tmp_path):
    cfg = tiny_config("simclrv2", tmp_path, train={"max_steps": 10, "ckpt_every": 2, "keep_last": 10})
    trainer = Trainer(load_config(cfg), progress_bar=False)
    weight = trainer.method.backbone().conv1.weight
    original = trainer.method.training_step

    def poisoned(views, progress):
        out = original(views, progress)
        if progress.step == 3:  # the loss stays finite; one gradient becomes inf
            weight.register_hook(lambda g: g * float("inf"))
        return out

    trainer.method.training_step = poisoned
    with pytest.raises(NonFiniteLossError, match=r"gradient norm is (inf|nan) at step 3; the step was not applied\. "
                                                 r"The newest checkpoint holds finite weights: .*last\.pt"):
        trainer.fit()
    assert torch.isfinite(weight).all()
    assert trainer.step == 3
    assert max(assert_every_checkpoint_finite(trainer.run_dir / "checkpoints")) == 2


def test_a_diverging_run_never_writes_a_non_finite_checkpoint(tmp_path):
    cfg = tiny_config("simclrv2", tmp_path, train={"max_steps": 10, "ckpt_every": 1, "keep_last": 10},
                      optim={"name": "sgd", "base_lr": 1e38, "lr_scaling": "none", "momentum": 0.0})
    trainer = Trainer(load_config(cfg), progress_bar=False)
    with pytest.raises(NonFiniteLossError, match=r"weights are not finite at step 1 \(.*\); not saved"):
        trainer.fit()
    assert trainer.step < 10
    assert_every_checkpoint_finite(trainer.run_dir / "checkpoints")


# ------------------------------------------------------------------ nothing lost (issue 17)


def unreadable_checkpoints(folder: Path) -> dict[str, bytes]:
    """A cut-short last.pt, random bytes and a foreign torch file: the three ways a checkpoint is unusable."""
    folder.mkdir(parents=True)
    torch.save({"weights": torch.zeros(2)}, folder / "step_2.pt")
    (folder / "step_4.pt").write_bytes(b"garbage")
    (folder / "last.pt").write_bytes((folder / "step_2.pt").read_bytes()[:200])
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_all_checkpoints_unreadable_stops_and_names_each_file(tmp_path, one_thread):
    cfg = tiny_config("simclrv2", tmp_path, train={"max_steps": 2})
    run_dir = tmp_path / "runs" / "simclrv2_test"
    before = unreadable_checkpoints(run_dir / "checkpoints")
    with pytest.raises(CheckpointError) as e:
        Trainer(load_config(cfg), progress_bar=False).fit()
    summary, *files = str(e.value).splitlines()
    assert "all 3 checkpoints" in summary and "train.resume=false" in summary
    assert len(files) == 3
    assert "last.pt: RuntimeError" in files[0] and "step_4.pt: UnpicklingError" in files[1]
    assert "step_2.pt is not an ssl-zoo training checkpoint" in files[2]
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()} == before  # nothing overwritten
    assert not (run_dir / "config.yaml").exists()


def test_resume_false_moves_unreadable_checkpoints_aside_and_says_so(tmp_path, one_thread, capsys):
    cfg = tiny_config("simclrv2", tmp_path, train={"max_steps": 2, "resume": False})
    folder = tmp_path / "runs" / "simclrv2_test" / "checkpoints"
    before = unreadable_checkpoints(folder)
    result = Trainer(load_config(cfg), progress_bar=False).fit()
    assert result.step == 2 and load_checkpoint(folder / "last.pt")["step"] == 2
    [aside] = folder.glob("unreadable-*")
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == before
    assert f"moved 3 unreadable checkpoints (last.pt, step_4.pt, step_2.pt) to {aside}" in capsys.readouterr().out


STUCK_WRITER = """
import sys, time
from pathlib import Path
from ssl_zoo.checkpoint import _atomic_write

def write(f):
    f.write(bytes(3_000_000))
    f.flush()
    print("writing", flush=True)
    time.sleep(600)

_atomic_write(Path(sys.argv[1]), write)
"""


def test_stale_temporaries_of_killed_writers_are_removed_at_start(tmp_path, one_thread, capsys):
    """A writer SIGKILLed inside a checkpoint save leaves `.last.pt.tmp<pid>`; the next start removes it."""
    run_dir = tmp_path / "runs" / "simclrv2_test"
    writer = subprocess.Popen([sys.executable, "-c", STUCK_WRITER, str(run_dir / "checkpoints" / "last.pt")],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "writing\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    killed = run_dir / "checkpoints" / f".last.pt.tmp{writer.pid}"
    assert killed.stat().st_size == 3_000_000
    (run_dir / f".metrics.jsonl.tmp{writer.pid}").write_bytes(bytes(1_000_000))
    live = run_dir / f".job_status.json.tmp{os.getppid()}"  # a live process's write in progress
    live.write_bytes(b"{}")
    Trainer(load_config(tiny_config("simclrv2", tmp_path, train={"max_steps": 1})), progress_bar=False).fit()
    assert not killed.exists() and not (run_dir / f".metrics.jsonl.tmp{writer.pid}").exists() and live.exists()
    out = capsys.readouterr().out
    assert "removed 2 stale temporary files of interrupted saves" in out and "(4.0 MB freed)" in out


def fit_with(cfg: dict, *overrides: str):
    """Train a copy of `cfg` with overrides (load_config writes overrides into the dict it is given)."""
    return Trainer(load_config(copy.deepcopy(cfg), list(overrides)), progress_bar=False).fit()


def test_resume_with_a_changed_config(tmp_path, one_thread, capsys):
    """Refused (config.yaml untouched) when the change alters the run; harmless or allowed ones resume."""
    cfg = tiny_config("simclrv2", tmp_path, train={"max_steps": 2})
    run_dir = fit_with(cfg).run_dir
    written = (run_dir / "config.yaml").read_text()
    with pytest.raises(CheckpointError) as e:
        fit_with(cfg, "train.batch_size=16", "train.log_every=2")
    assert "\n" not in str(e.value) and "train.batch_size: 32 -> 16" in str(e.value)
    assert "train.resume_changes=allow" in str(e.value) and "log_every" not in str(e.value)
    assert (run_dir / "config.yaml").read_text() == written
    capsys.readouterr()

    assert fit_with(cfg, "train.log_every=2").step == 2
    assert "do not change the run: train.log_every: 1 -> 2" in capsys.readouterr().out
    assert fit_with(cfg, "train.max_steps=3", "train.resume_changes=allow").step == 3
    assert "changes to the run: train.max_steps: 2 -> 3" in capsys.readouterr().out
    assert load_config(yaml.safe_load((run_dir / "config.yaml").read_text())).train.max_steps == 3


def test_allowed_changes_that_do_not_fit_the_checkpoint_fail_in_one_line(tmp_path, one_thread):
    cfg = tiny_config("simclrv2", tmp_path, train={"max_steps": 1})
    fit_with(cfg)
    with pytest.raises(CheckpointError, match=r"does not fit this model .*: \d+ of another shape \(") as e:
        fit_with(cfg, "method.head_hidden_dim=48", "train.resume_changes=allow")
    assert "\n" not in str(e.value) and "[64, 512] in the checkpoint, [48, 512] here" in str(e.value)
    with pytest.raises(CheckpointError, match="optimizer state does not fit") as e:  # no decay: 1 group, not 2
        fit_with(cfg, "optim.weight_decay=0", "train.resume_changes=allow")
    assert "\n" not in str(e.value)


def test_resume_past_a_cut_short_metrics_line_without_duplicated_steps(tmp_path, one_thread):
    cfg = tiny_config("simclrv2", tmp_path, train={"max_steps": 4, "ckpt_every": 2, "keep_last": 5})
    run_dir = Trainer(load_config(cfg), progress_bar=False).fit().run_dir
    for name in ("last.pt", "step_4.pt"):  # as if killed after logging step 3, mid-way through a line
        (run_dir / "checkpoints" / name).unlink()
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "lo')
    with pytest.warns(UserWarning, match="dropped its unparsable last line"):
        result = Trainer(load_config(cfg), progress_bar=False).fit()
    assert result.step == 4
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_a_batch_size_that_breaks_the_global_batch_is_refused_before_anything_is_built(tmp_path):
    cfg = load_config(tiny_config("simclrv2", tmp_path), ["train.global_batch=64", "train.batch_size=16"])
    with pytest.raises(ConfigError, match=r"^train.global_batch=64 but train.batch_size=16 x 1 rank\(s\) = 16; "
                                          r"set train.batch_size=64"):
        Trainer(cfg)
    assert not (tmp_path / "runs").exists()
