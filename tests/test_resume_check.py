"""The resume check's pure parts: which config changes change a run, and one-line summaries."""

import dataclasses

import pytest
import torch

from ssl_zoo.checkpoint import CheckpointError
from ssl_zoo.config import TrainConfig, to_dict
from ssl_zoo.experiment import load_config
from ssl_zoo.resume_check import (HARMLESS_TRAIN, NOT_COMPARED, RUN_CHANGING_TRAIN, check_resume_config,
                                  config_changes, state_dict_mismatch)
from tests.conftest import tiny_config


def configs(tmp_path, *overrides: str) -> tuple[dict, dict]:
    raw = tiny_config("simclrv2", tmp_path)
    return to_dict(load_config(raw)), to_dict(load_config(raw, list(overrides)))


def test_run_changing_and_harmless_keys_are_told_apart(tmp_path):
    old, new = configs(tmp_path, "train.batch_size=64", "optim.base_lr=0.1", "method.temperature=0.5",
                       "data.synthetic_size=128", "train.max_steps=9", "train.seed=3",
                       "train.log_every=5", "train.threads=2", "train.precision=bf16", "data.num_workers=2",
                       "eval.knn_k=5", "train.resume=false", "train.resume_changes=allow")
    run, harmless = config_changes(old, new)
    assert [str(c) for c in run] == ["data.synthetic_size: 256 -> 128", "method.temperature: 0.2 -> 0.5",
                                     "optim.base_lr: 0.3 -> 0.1", "train.batch_size: 32 -> 64",
                                     "train.max_steps: 6 -> 9", "train.seed: 0 -> 3"]
    assert [c.key for c in harmless] == ["data.num_workers", "eval.knn_k", "train.log_every", "train.precision",
                                         "train.threads"]


def test_a_run_saved_when_sit_held_both_algorithms_resumes_without_a_change(tmp_path):
    """Its config carries v1's `distortion` (ignored by latest then); today's latest Config has no such
    field: not a change to the run. A real change is still one."""
    raw = tiny_config("sit", tmp_path)
    new = to_dict(load_config(raw))
    saved = {**new, "method": {**new["method"], "distortion": {"blur_kernel": 5}}}
    assert check_resume_config(saved, new, "refuse", tmp_path / "last.pt") is None
    changed = {**saved, "method": {**saved["method"], "temperature": 0.3}}
    with pytest.raises(CheckpointError, match=r"method.temperature: 0.3 -> 0.2"):
        check_resume_config(changed, new, "refuse", tmp_path / "last.pt")


def test_every_train_key_is_classified_once():
    """A new train key must be placed knowingly: harmless, run-changing, or about resuming itself."""
    keys = {f.name for f in dataclasses.fields(TrainConfig)}
    about_resume = {k.split(".", 1)[1] for k in NOT_COMPARED}
    assert keys == HARMLESS_TRAIN | RUN_CHANGING_TRAIN | about_resume
    assert not (HARMLESS_TRAIN & RUN_CHANGING_TRAIN or HARMLESS_TRAIN & about_resume
                or RUN_CHANGING_TRAIN & about_resume)


def test_keys_missing_on_one_side_count_as_changes():
    old = {"method": {"name": "mae"}, "train": {"log_every": 1}}
    new = {"method": {"name": "mae", "norm_pix_loss": True}, "train": {"log_every": 1, "resume_changes": "refuse"}}
    run, harmless = config_changes(old, new)
    assert [str(c) for c in run] == ["method.norm_pix_loss: '<absent>' -> True"] and harmless == []


def test_a_key_added_since_the_checkpoint_is_no_change_at_its_default_only(tmp_path):
    """A checkpoint written before model.depth existed resumes without a reported change while the key is
    at its default (0: the architecture's own depth), and is refused when the key changes the model."""
    old, new = configs(tmp_path)
    saved = {**old, "model": {k: v for k, v in old["model"].items() if k != "depth"}}
    assert config_changes(saved, new) == ([], [])
    _, deeper = configs(tmp_path, "model.depth=3")
    run, _ = config_changes(saved, deeper)
    assert [str(c) for c in run] == ["model.depth: '<absent>' -> 3"]


def test_a_run_changing_difference_is_refused_in_one_line_with_the_way_out(tmp_path):
    old, new = configs(tmp_path, "train.batch_size=64", "train.log_every=5")
    with pytest.raises(CheckpointError) as e:
        check_resume_config(old, new, "refuse", tmp_path / "last.pt")
    message = str(e.value)
    assert "\n" not in message
    assert "train.batch_size: 32 -> 64" in message and "log_every" not in message
    assert "another train.name" in message and "train.resume_changes=allow" in message


def test_allowed_and_harmless_differences_come_back_as_one_info_line(tmp_path):
    old, new = configs(tmp_path, "train.batch_size=64", "train.log_every=5")
    note = check_resume_config(old, new, "allow", tmp_path / "last.pt")
    assert "\n" not in note
    assert "changes to the run: train.batch_size: 32 -> 64" in note
    assert "do not change the run: train.log_every: 1 -> 5" in note
    old, new = configs(tmp_path, "train.ckpt_every=7")
    assert check_resume_config(old, new, "refuse", tmp_path / "last.pt") == (
        "resuming with changed settings that do not change the run: train.ckpt_every: 1000 -> 7")
    assert check_resume_config(old, old, "refuse", tmp_path / "last.pt") is None


def test_many_differences_are_summarised(tmp_path):
    old, _ = configs(tmp_path)
    new = to_dict(load_config(tiny_config("mae", tmp_path)))
    new["method"]["name"] = "simclrv2"
    with pytest.raises(CheckpointError, match=r"\.\.\. and \d+ more\)") as e:
        check_resume_config(old, new, "refuse", tmp_path / "last.pt")
    assert "\n" not in str(e.value) and len(str(e.value)) < 1000


def test_a_checkpoint_without_config_is_refused_unless_allowed(tmp_path):
    _, new = configs(tmp_path)
    with pytest.raises(CheckpointError, match="holds no config"):
        check_resume_config(None, new, "refuse", tmp_path / "last.pt")
    assert "resuming without comparing" in check_resume_config(None, new, "allow", tmp_path / "last.pt")


def test_state_dict_mismatch_counts_and_names_the_first_few():
    expected = {f"block{i}.weight": torch.zeros(4, 4) for i in range(300)} | {"head.weight": torch.zeros(8, 4)}
    found = {f"block{i}.weight": torch.zeros(4, 4) for i in range(100)} | {"head.weight": torch.zeros(16, 4),
                                                                           "extra.bias": torch.zeros(2)}
    line = state_dict_mismatch(expected, found)
    assert line == ("200 missing (block100.weight, block101.weight, block102.weight, ...); "
                    "1 unexpected (extra.bias); "
                    "1 of another shape (head.weight: [16, 4] in the checkpoint, [8, 4] here)")
