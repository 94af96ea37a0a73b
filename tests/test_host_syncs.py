"""No host syncs in a training step, over every registered method and variant (the cases of the
state-dict layout test): views, training_step, the optimiser step and after_step, counted by
tests/host_syncs.py on the step after a warm-up (first steps create optimiser state and copy
constants to the device once).

The syncs that remain are data-dependent by the algorithm; EXPLAINED lists them with the reason, and
the count must match exactly, so a fix (or a new sync) updates this file.
"""

from __future__ import annotations

import pytest
import torch

from ssl_zoo.data import build_dataset
from ssl_zoo.experiment import load_config
from ssl_zoo.methods.base import build_method
from ssl_zoo.optim import build_optimizer
from ssl_zoo.registry import available_methods, method_variants
from ssl_zoo.schedules import Progress
from tests.host_syncs import HostSyncCounter
from tests.test_state_dict_layout import CASES, case_config

pytestmark = pytest.mark.usefixtures("one_thread")

PHASES = ("views", "training_step", "optimizer", "after_step")
# (case, phase) -> host syncs left, and why (see the functions named)
EXPLAINED = {
    # corruption.block_masks: GMML's blocks are added until each image's UNION coverage reaches its
    # target; a block may add nothing new, so no count is known in advance: one read per call, all views
    ("gmml", "views"): 1,
    ("sit", "views"): 1,  # SiT (latest) corrupts its views with GMML's rule
    # rad_dino.masked_indices: iBOT's heads and Sinkhorn-Knopp run over exactly the masked patches
    ("rad_dino", "training_step"): 1,
    ("rad_dino/shared_ibot_head", "training_step"): 1,
}
BATCH = 8


def count_step(method, batch, optimizer, progress) -> dict[str, HostSyncCounter]:
    counters = {phase: HostSyncCounter() for phase in PHASES}
    with counters["views"]:
        views = method.views(batch)
    with counters["training_step"]:
        loss = method(views, progress)["loss"]
    loss.backward()
    method.after_backward(progress)
    with counters["optimizer"]:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with counters["after_step"]:
        method.after_step(progress)
    return counters


def test_the_cases_cover_every_registered_method_and_variant():
    covered = {(name, overrides.get("variant", "")) for name, overrides, _ in CASES.values()}
    registered = {(name, "") for name in available_methods()} | {
        (name, variant) for name in available_methods() for variant in method_variants(name)}
    defaults = {(name, v) for name in available_methods() for v in method_variants(name)
                if method_variants(name)[v] is available_methods()[name]}
    assert registered - defaults - covered == set()


@pytest.mark.parametrize("case", list(CASES))
def test_a_training_step_reads_nothing_on_the_host(case, tmp_path):
    cfg = load_config(case_config(case, tmp_path))
    torch.manual_seed(0)
    method = build_method(cfg).train()
    batch = build_dataset(cfg.data, "train").__getitems__(list(range(BATCH)))
    optimizer = build_optimizer(method.param_groups(cfg.optim), cfg.optim)
    count_step(method, batch, optimizer, Progress(0, 10, 0, 5))  # warm-up
    counters = count_step(method, batch, optimizer, Progress(1, 10, 0, 5))
    found = {phase: dict(c.calls) for phase, c in counters.items() if c.total != EXPLAINED.get((case, phase), 0)}
    assert not found, f"{case}: host syncs {found} (explained: " \
                      f"{ {p: EXPLAINED.get((case, p), 0) for p in PHASES} })"


def test_the_trainer_adds_one_host_sync_per_optimizer_step(tmp_path):
    """The combined non-finite/stop flag (one all-reduce, one read) is the trainer's only per-step sync;
    grad norm and loss stay on the device until a log step. Counted as the difference between a 7-step
    and a 3-step run of a sync-free method inside one epoch (8 steps: a new epoch starts the DataLoader's
    iterator, which draws its seeds on the host), so set-up and the final checkpoint cancel out."""
    from ssl_zoo.trainer import Trainer
    from tests.conftest import tiny_config

    def syncs(steps: int) -> int:
        raw = tiny_config("mae", tmp_path / str(steps), train={"max_steps": steps, "log_every": 1000,
                                                                "ckpt_every": 1000, "image_every": 0})
        raw["eval"] = {"knn_every": 0, "final_knn": False}
        trainer = Trainer(load_config(raw), progress_bar=False)
        with HostSyncCounter() as counter:
            trainer.fit()
        return counter.total

    assert syncs(7) - syncs(3) == 4
