"""The base-class contracts every method relies on, over every case of the state-dict layout test
(each method's tiny config and its variants): EMA teachers are declared (and so updated and logged),
and a method that needs a ViT refuses a CNN with one ConfigError naming it."""

from __future__ import annotations

import re

import pytest
import torch

from ssl_zoo.config import ConfigError
from ssl_zoo.experiment import load_config
from ssl_zoo.methods.base import build_method
from ssl_zoo.schedules import Progress
from tests.test_state_dict_layout import CASES, case_config

pytestmark = pytest.mark.usefixtures("one_thread")


def frozen_children(method: torch.nn.Module) -> set[str]:
    """Top-level submodules whose parameters are all frozen: EMA teachers or momentum copies."""
    return {name for name, child in method.named_children()
            if any(True for _ in child.parameters()) and not any(p.requires_grad for p in child.parameters())}


@pytest.mark.parametrize("case", list(CASES))
def test_every_frozen_copy_is_a_declared_ema_teacher_that_after_step_updates_and_logs(case, tmp_path):
    method = build_method(load_config(case_config(case, tmp_path)))
    pairs = method.ema()
    assert {pair.teacher for pair in pairs} == frozen_children(method)
    progress = Progress(3, 10, 0, 10)
    for pair in pairs:
        online, teacher = method.get_submodule(pair.online), method.get_submodule(pair.teacher)
        with torch.no_grad():
            for p in online.parameters():
                p.add_(1.0)
        before = [t.clone() for t in teacher.parameters()]
        m = pair.value_after_step(progress)  # this step's m, or the next one's for updates before the forward
        assert m == pair.value(Progress(4, 10, 0, 10) if pair.before_forward else progress)
        method.after_step(progress)
        for t0, s, t1 in zip(before, online.parameters(), teacher.parameters()):
            assert torch.allclose(t1, m * t0 + (1 - m) * s, atol=1e-6)
        assert method.schedule_values(progress)[pair.log_as] == pair.value(progress)


def method_class(case: str) -> type:
    from ssl_zoo.registry import get_method_class

    name, overrides, _ = CASES[case]
    return get_method_class(name, overrides.get("variant"))


@pytest.mark.parametrize("case", [case for case in CASES if method_class(case).needs_vit])
def test_a_method_that_needs_a_vit_refuses_a_cnn_in_one_config_error(case, tmp_path):
    raw = case_config(case, tmp_path)
    raw["model"]["backbone"] = "resnet18"
    with pytest.raises(ConfigError, match=rf"^model.backbone: {re.escape(method_class(case).title())} needs a ViT, got 'resnet18'"):
        build_method(load_config(raw))
