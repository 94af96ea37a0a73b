"""Shared helpers: small configs that train in seconds on 2 CPU cores."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# `make test` runs two pytest workers (xdist): one thread each keeps the 2 cores busy without
# oversubscribing them; a single pytest process uses up to 2
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // WORKERS))

# The `slurm` tests need the real local cluster (slurm/local-cluster.sh), and starting it needs root: it
# installs Debian packages and rewrites /etc/slurm/slurm.conf. SSL_ZOO_SLURM_TESTS says what to do:
# auto (default): run them as root or when the cluster is already up, else skip them and say so once;
# require (CI): always run them, so a cluster that cannot start fails the run instead of skipping;
# skip: never run them (and `make test` leaves the machine's SLURM alone).
SLURM_MODES = ("auto", "require", "skip")
SLURM_SKIPPED = "SLURM tests skipped"
SLURM_HOW_TO = ("run them as root (`sudo make test`: it starts the local cluster with slurm/local-cluster.sh up), "
                "or start the cluster once (`sudo slurm/local-cluster.sh up`) and rerun `make test`")


def slurm_skip_reason(mode: str, is_root: bool, cluster_up) -> str | None:
    """Why the `slurm` tests are skipped (None: they run). `cluster_up` is called only when it matters."""
    if mode not in SLURM_MODES:
        raise pytest.UsageError(f"SSL_ZOO_SLURM_TESTS={mode!r}; valid: {', '.join(SLURM_MODES)}")
    if mode == "skip":
        return f"{SLURM_SKIPPED}: SSL_ZOO_SLURM_TESTS=skip"
    if mode == "require" or is_root or cluster_up():
        return None
    return f"{SLURM_SKIPPED}: not root and the local SLURM cluster is not running"


def _local_cluster_up() -> bool:
    status = subprocess.run([str(ROOT / "slurm/local-cluster.sh"), "status"], capture_output=True, timeout=60)
    return status.returncode == 0


def pytest_collection_modifyitems(config, items):
    slurm_items = [item for item in items if item.get_closest_marker("slurm")]
    if not slurm_items:
        return
    reason = slurm_skip_reason(os.environ.get("SSL_ZOO_SLURM_TESTS", "auto"), os.geteuid() == 0, _local_cluster_up)
    if reason:
        for item in slurm_items:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter):
    """One line for all skipped SLURM tests (in the xdist controller too), with how to run them."""
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if isinstance(r.longrepr, tuple) and SLURM_SKIPPED in str(r.longrepr[-1])]
    if skipped:
        reason = str(skipped[0].longrepr[-1]).removeprefix("Skipped: ")
        terminalreporter.write_line(f"{len(skipped)} {reason}. To run them: {SLURM_HOW_TO}.")

TINY_VIEW = {"size": 28, "scale": [0.3, 1.0], "interpolation": "bilinear", "jitter": [0.4, 0.4, 0.0, 0.0],
             "gray_p": 0.0, "blur_p": 0.0}

TINY = {
    "simclrv2": {"method": {"name": "simclrv2", "temperature": 0.2, "head_hidden_dim": 64, "out_dim": 32,
                            "view": TINY_VIEW},
                 "model": {"backbone": "resnet18"},
                 "optim": {"name": "lars", "base_lr": 0.3, "warmup_epochs": 0.0, "weight_decay": 1e-6}},
    "dino": {"method": {"name": "dino", "out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32, "n_local": 2,
                        "global_views": [dict(TINY_VIEW, blur_p=1.0), dict(TINY_VIEW, blur_p=0.1, solarize_p=0.2)],
                        "local_view": dict(TINY_VIEW, size=14, scale=[0.1, 0.4], blur_p=0.5),
                        "teacher_temp": {"start": 0.04, "end": 0.07, "epochs": 1},
                        "freeze_last_layer_epochs": 0.0},
             "model": {"backbone": "vit_tiny_patch16_224", "patch_size": 7, "img_size": 28, "drop_path_rate": 0.1},
             "optim": {"warmup_epochs": 0.0, "base_lr": 1e-3}},
    "mae": {"method": {"name": "mae", "decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 4,
                       "view": {"size": 28, "scale": [0.2, 1.0], "jitter_p": 0.0, "gray_p": 0.0}},
            "model": {"backbone": "vit_tiny_patch16_224", "patch_size": 4, "img_size": 28},
            "optim": {"warmup_epochs": 0.0, "base_lr": 1.5e-3}},
    "gmml": {"method": {"name": "gmml", "view": {"size": 28, "scale": [0.05, 1.0], "interpolation": "bilinear",
                                                 "jitter": [0.1, 0.1, 0.0, 0.0], "jitter_p": 0.3, "gray_p": 0.0,
                                                 "blur_p": 0.0}},
             "model": {"backbone": "vit_tiny_patch16_224", "patch_size": 7, "img_size": 28},
             "optim": {"warmup_epochs": 0.0, "base_lr": 1e-3}},
    "sit": {"method": {"name": "sit", "hidden_dim": 64, "out_dim": 32,
                       "views": [dict(TINY_VIEW, blur_p=1.0), dict(TINY_VIEW, blur_p=0.1, solarize_p=0.2)]},
            "model": {"backbone": "vit_tiny_patch16_224", "patch_size": 7, "img_size": 28, "drop_path_rate": 0.1},
            "optim": {"warmup_epochs": 0.0, "base_lr": 1e-3}},
    "selfie": {"method": {"name": "selfie", "patch_size": 7, "num_masked": 4, "depth": 1, "heads": 4,
                          "view": {"size": 28, "scale": [0.3, 1.0], "interpolation": "bilinear", "jitter_p": 0.0,
                                   "gray_p": 0.0}},
               "model": {"backbone": "resnet10t", "stem": "no_maxpool"},
               "optim": {"warmup_epochs": 0.0, "base_lr": 2e-3}},
    "pixpro": {"method": {"name": "pixpro", "hidden_dim": 64, "out_dim": 32,  # 40 px, no max-pool: 3x3 C5 map
                          "views": [dict(TINY_VIEW, size=40, blur_p=1.0), dict(TINY_VIEW, size=40, solarize_p=0.2)]},
               "model": {"backbone": "resnet10t", "stem": "no_maxpool"},
               "optim": {"warmup_epochs": 0.0, "base_lr": 1.0, "weight_decay": 1e-5}},
    # CroCo trains on pairs and SatMAE++ on multispectral bands: see TINY_DATA
    # SatMAE++: 48 px crop (x4 target) -> 12 px input, p = 4
    "satmae_pp": {"method": {"name": "satmae_pp", "groups": [[0, 1], [2]], "group_embed_dim": 64, "decoder_dim": 64,
                             "decoder_depth": 1, "decoder_heads": 4, "decoder_group_embed_dim": 16,
                             "view": {"size": 48, "scale": [0.6, 1.0], "interpolation": "bilinear", "jitter_p": 0.0,
                                      "gray_p": 0.0}},
                  "model": {"backbone": "satmae_group_vit_tiny_p8", "patch_size": 4},
                  "optim": {"warmup_epochs": 0.0, "base_lr": 1.5e-3}},
    "croco": {"method": {"name": "croco", "decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 4, "crop_size": 28},
              "model": {"backbone": "vit_tiny_patch16_224", "patch_size": 7, "img_size": 28},
              "optim": {"warmup_epochs": 0.0, "base_lr": 1.5e-3}},
    "rad_dino": {"method": {"name": "rad_dino", "out_dim": 256, "ibot_out_dim": 256, "hidden_dim": 64,
                            "bottleneck_dim": 32, "n_local": 2,
                            "global_views": [dict(TINY_VIEW, blur_p=1.0), dict(TINY_VIEW, blur_p=0.1, solarize_p=0.2)],
                            "local_view": dict(TINY_VIEW, size=14, scale=[0.1, 0.32], blur_p=0.5),
                            "teacher_temp": {"start": 0.04, "end": 0.07, "epochs": 1},
                            "freeze_last_layer_epochs": 0.0},
                 "model": {"backbone": "vit_tiny_patch16_224", "patch_size": 7, "img_size": 28, "drop_path_rate": 0.1},
                 "optim": {"warmup_epochs": 0.0, "base_lr": 1e-3}},
}


# The synthetic data each method trains on at its tiny size, where plain RGB images do not fit it; so
# that tests over the whole registry need no per-method branches.
TINY_DATA = {
    "croco": {"kind": "synthetic_pairs", "pairs_source": "synthetic", "load_size": 32},
    "satmae_pp": {"kind": "synthetic_multispectral", "channels": 3, "load_size": 48},  # TINY's 2 band groups
}


# Every algorithm of a name with several (method.variant) at its tiny size: TINY's sections updated with
# these (the default variant is TINY's own). Tests over every variant fail on one missing here.
TINY_VARIANTS = {
    ("sit", "latest"): {},
    ("sit", "v1"): {"method": {"variant": "v1"}},
    ("satmae_pp", "group"): {},
    ("satmae_pp", "rgb"): {"method": {"variant": "rgb", "normalize": "fmow_rgb",  # MAE on RGB: 28 px input, p = 4
                                      "view": {"size": 56, "jitter_p": 0.0, "gray_p": 0.0}},
                           "model": {"backbone": "vit_tiny_patch16_224"}},
}


def tiny_config(method: str, tmp_path: Path, data: str = "synthetic", variant: str | None = None,
                **sections) -> dict:
    """A dict config for `load_config`: tiny model and data (the method's TINY_DATA when synthetic),
    output under tmp_path; `variant`: one of TINY_VARIANTS (None: the name's default)."""
    cfg = copy.deepcopy(TINY[method])
    if variant:
        for section, values in TINY_VARIANTS[method, variant].items():
            cfg[section].update(copy.deepcopy(values))
    cfg["data"] = ({"synthetic_size": 256, **TINY_DATA.get(method, {"kind": "synthetic", "load_size": 28})}
                   if data == "synthetic" else {"kind": "fashion_mnist", "limit": 2048})
    cfg["train"] = {"output_dir": str(tmp_path / "runs"), "name": f"{method}_test", "batch_size": 32,
                    "max_steps": 6, "log_every": 1, "ckpt_every": 1000, "seed": 0,
                    "precision": "fp32"}  # the same numbers on every CPU (auto picks bf16 where it is native)
    cfg["eval"] = {"final_knn": False}
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def tiny_method(method: str, tmp_path: Path, **overrides):
    """The tiny `method` of TINY (synthetic data), with method-section overrides, built."""
    from ssl_zoo.experiment import load_config
    from ssl_zoo.methods.base import build_method

    raw = tiny_config(method, tmp_path)
    raw["method"].update(overrides)
    return build_method(load_config(raw))


def random_images(n: int, size: int = 28, seed: int = 0):
    """A Batch of n random uint8 RGB images (labels 0), seeded."""
    from ssl_zoo.data import Batch

    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                 torch.zeros(n, dtype=torch.long), torch.arange(n))


def logged_losses(run_dir: Path) -> list[float]:
    """The loss of every logged step of a run (metrics.jsonl)."""
    import json

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def fit_losses(raw: dict, steps: int) -> list[float]:
    """Train the dict config `raw` to completion; its per-step losses (one per step, all finite)."""
    import math

    from ssl_zoo.experiment import load_config
    from ssl_zoo.trainer import Trainer

    result = Trainer(load_config(raw), progress_bar=False).fit()
    assert result.status == "completed" and result.step == steps
    losses = logged_losses(result.run_dir)
    assert len(losses) == steps and all(math.isfinite(v) for v in losses)
    return losses


def final_weights(run_dir: Path) -> dict:
    """The model state in a run's last checkpoint."""
    from ssl_zoo.checkpoint import load_checkpoint

    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def stop_and_resume(base: dict, stop_after: int, sig: int = signal.SIGUSR1, name: str = "stopped"):
    """Run `base` as train.name=`name`, stopped by `sig` raised in this process from after_step of step
    `stop_after` + 1 (the trainer's real handler sees it mid-run), then restarted to the end: the TrainResult
    of the restart. Under DDP every rank raises it, as SLURM signals every task. The trainer reads the stop
    flag once per step, before applying it (with the NaN check), so it stops after step `stop_after` + 2."""
    from ssl_zoo.experiment import load_config
    from ssl_zoo.trainer import Trainer

    trainer = Trainer(load_config(base, [f"train.name={name}"]), progress_bar=False)
    original = trainer.method.after_step

    def after_step(progress):
        original(progress)
        if progress.step == stop_after:
            os.kill(os.getpid(), sig)

    trainer.method.after_step = after_step
    first = trainer.fit()
    assert (first.status, first.step, first.signal) == ("interrupted", stop_after + 2, sig)
    second = Trainer(load_config(base, [f"train.name={name}"]), progress_bar=False).fit()
    assert second.status == "completed"
    return second


def assert_stop_and_resume_matches_straight_run(base: dict, stop_after: int, sig: int = signal.SIGUSR1) -> None:
    """A signal during step `stop_after` + 1, a restart, and the same final weights as a straight run."""
    from ssl_zoo.experiment import load_config
    from ssl_zoo.trainer import Trainer

    straight = Trainer(load_config(base, ["train.name=straight"]), progress_bar=False).fit()
    resumed = stop_and_resume(base, stop_after, sig)
    assert resumed.step == straight.step
    assert_same_weights(final_weights(straight.run_dir), final_weights(resumed.run_dir))


@pytest.fixture
def one_thread():
    """For tiny models: one thread is as fast on a quiet machine, and on a busy shared 2-core one two
    threads per process wait on each other (measured up to 10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def python_exe() -> str:
    return sys.executable


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    """Every test's caches (image-folder indexes, evaluation features, hub downloads) in a folder of its
    own, never ~/.cache/ssl_zoo: a test cannot pass on what an earlier one or a user left there."""
    monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def restore_threads():
    """Trainers may set train.threads; keep that from leaking into later tests."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
