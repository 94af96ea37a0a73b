"""Real multi-process DDP on CPU (gloo), no mocks.

Each test launches 2 worker processes of this very file (`python tests/test_ddp.py MODE ARGS`)
with the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), which
`ssl_zoo.distributed.init_distributed` reads, and compares what the ranks wrote to disk.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ssl_zoo.launch.local_ranks import failures, run_ranks

WORLD = 2
ROOT = Path(__file__).resolve().parents[1]


def launch(mode: str, args: dict, world: int = WORLD, timeout: float = 180) -> None:
    """Run `world` ranks of this file in `mode`; fail with every rank's output if any rank fails."""
    report = failures(run_ranks([__file__, mode, json.dumps(args)], world, ROOT, timeout=timeout))
    if report:
        pytest.fail("DDP workers failed:\n" + report)


# --------------------------------------------------------------------------- workers (in the ranks)


def _worker_train(args: dict) -> None:
    from ssl_zoo import distributed as dist_utils
    from ssl_zoo.experiment import load_config
    from ssl_zoo.trainer import Trainer

    trainer = Trainer(load_config(args["config"]), progress_bar=False)
    assert trainer.dist.world_size == WORLD and dist_utils.world_size() == WORLD
    result = trainer.fit()
    torch.save({"state": trainer.method.state_dict(), "peak_lr": trainer.peak_lr,
                "global_batch": trainer.global_batch, "step": result.step, "status": result.status},
               Path(args["out"]) / f"rank{trainer.dist.rank}.pt")
    dist_utils.cleanup()


def _fixed_embeddings(n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)


def _simclr_loss_module():
    from torch import nn

    from ssl_zoo.methods.simclrv2 import SimCLRv2

    backbone = nn.Identity()
    backbone.num_features = 8
    method = SimCLRv2(SimCLRv2.Config(), backbone)  # paper defaults: tau 0.1, gather_distributed
    assert method.cfg.gather_distributed
    return method


def _worker_loss(args: dict) -> None:
    from ssl_zoo import distributed as dist_utils

    info = dist_utils.init_distributed("cpu")
    z0, z1 = _fixed_embeddings(args["n"], args["dim"])
    local = slice(info.rank * args["n"] // WORLD, (info.rank + 1) * args["n"] // WORLD)
    z0, z1 = z0[local].clone().requires_grad_(True), z1[local].clone().requires_grad_(True)
    loss = _simclr_loss_module().loss(z0, z1)
    loss.backward()
    torch.save({"loss": loss.detach(), "g0": z0.grad, "g1": z1.grad},
               Path(args["out"]) / f"rank{info.rank}.pt")
    dist_utils.cleanup()


def _worker_queue(args: dict) -> None:
    from ssl_zoo import distributed as dist_utils
    from ssl_zoo.methods.simclrv2 import NegativeQueue

    info = dist_utils.init_distributed("cpu")
    queue = NegativeQueue(args["size"], 4)
    queue.push(torch.full((3, 4), float(info.rank + 1)))  # each rank's own keys
    torch.save({"keys": queue.keys, "position": queue.position}, Path(args["out"]) / f"rank{info.rank}.pt")
    dist_utils.cleanup()


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_two_rank_training_keeps_ranks_in_sync(tmp_path):
    from conftest import tiny_config

    from ssl_zoo.experiment import load_config
    from ssl_zoo.optim import scaled_lr

    batch = 16
    cfg = tiny_config("simclrv2", tmp_path, train={"batch_size": batch, "max_steps": 4, "threads": 1,
                                                    "log_every": 2})
    out = tmp_path / "out"
    out.mkdir()
    launch("train", {"config": cfg, "out": str(out)})

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [r["step"] for r in ranks] == [4, 4] and {r["status"] for r in ranks} == {"completed"}

    # lr scaled on the GLOBAL batch (per-rank batch x world size), linear rule
    resolved = load_config(cfg)
    assert resolved.optim.lr_scaling == "linear"
    expected_lr = resolved.optim.base_lr * batch * WORLD / resolved.optim.lr_reference_batch
    for r in ranks:
        assert r["global_batch"] == batch * WORLD
        assert r["peak_lr"] == pytest.approx(expected_lr)
        assert r["peak_lr"] == pytest.approx(scaled_lr(resolved.optim, batch * WORLD))

    # every parameter is bit-identical on both ranks after 4 DDP steps
    s0, s1 = ranks[0]["state"], ranks[1]["state"]
    assert s0.keys() == s1.keys()
    param_names = {name for name, _ in _simclr_param_names(resolved)}
    assert param_names and param_names <= s0.keys()
    differing = {k for k in s0 if not torch.equal(s0[k], s1[k])}
    assert not (differing & param_names), f"parameters diverged across ranks: {sorted(differing & param_names)}"
    # The only tensors allowed to differ: BatchNorm running statistics. On CPU there is no
    # SyncBatchNorm; DDP broadcasts rank 0's buffers before each forward, then each rank's
    # forward updates them with its own local batch.
    assert all(k.endswith(("running_mean", "running_var")) for k in differing), sorted(differing)
    # the ranks really saw different data/augmentations (else the check above would be vacuous)
    assert differing, "BN statistics identical on both ranks: ranks did not get different batches"

    # rank 0 alone wrote the run's files
    run_dir = Path(resolved.train.output_dir) / resolved.train.name
    last = run_dir / "checkpoints" / "last.pt"
    assert last.is_file() and (run_dir / "metrics.jsonl").is_file() and (run_dir / "config.yaml").is_file()
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["world_size"] == WORLD and ckpt["step"] == 4
    assert len(ckpt["rng"]) == WORLD
    assert not torch.equal(ckpt["rng"][0]["cpu"], ckpt["rng"][1]["cpu"]), "ranks share one augmentation stream"
    assert all(torch.equal(ckpt["model"][k], s0[k]) for k in s0), "checkpoint is not rank 0's final state"

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [2, 4]  # one writer: no duplicated lines from rank 1
    first_lr = next(r["lr"] for r in records if "lr" in r)
    assert 0 < first_lr <= expected_lr * (1 + 1e-9)


def _simclr_param_names(cfg):
    from ssl_zoo.methods.base import build_method

    return build_method(cfg).named_parameters()


def test_simclrv2_negatives_and_gradients_across_ranks(tmp_path):
    n, dim = 8, 16
    launch("loss", {"n": n, "dim": dim, "out": str(tmp_path)})
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    # single process on the whole batch: the reference
    z0, z1 = (z.clone().requires_grad_(True) for z in _fixed_embeddings(n, dim))
    full = _simclr_loss_module().loss(z0, z1)
    full.backward()

    # Each rank's loss averages over its LOCAL anchors (2n/W of them) with negatives from ALL
    # ranks; with equal local batches the full-batch loss is their mean (what the trainer logs
    # through all_reduce_mean). A rank that did not gather would see only n/W - 1 negatives.
    rank_losses = torch.stack([r["loss"] for r in ranks])
    assert torch.allclose(rank_losses.mean(), full.detach(), atol=1e-6, rtol=1e-5)
    local_only = _simclr_loss_module()
    local_only.cfg.gather_distributed = False
    assert not torch.allclose(rank_losses[0], local_only.loss(z0[: n // WORLD], z1[: n // WORLD]).detach())

    # Gradients: lightly's GatherLayer sums the gathered copies' gradients over ranks, so rank r's
    # local gradient is d(sum_r' L_r')/dz_r = W * dL_full/dz_r. DDP then AVERAGES parameter
    # gradients over the W ranks, which cancels the factor W: the update equals the full-batch one.
    for rank, r in enumerate(ranks):
        local = slice(rank * n // WORLD, (rank + 1) * n // WORLD)
        for key, full_grad in (("g0", z0.grad), ("g1", z1.grad)):
            g = r[key]
            assert g is not None and g.abs().sum() > 0
            assert torch.allclose(g, WORLD * full_grad[local], atol=1e-6, rtol=1e-4), (rank, key)


def test_local_rank_launcher_reports_each_ranks_exit_and_kills_at_the_timeout():
    script = "import os, sys; print(os.environ['RANK'], os.environ['WORLD_SIZE']); sys.exit(int(os.environ['RANK']))"
    results = run_ranks(["-c", script], 2, ROOT)
    assert [(r.returncode, r.output.split()) for r in results] == [(0, ["0", "2"]), (1, ["1", "2"])]
    assert "--- rank 1 (exit 1) ---" in failures(results) and "rank 0" in failures(results)
    assert not failures(results[:1])
    slow = run_ranks(["-c", "import time; time.sleep(60)"], 2, ROOT, timeout=1)
    assert [r.returncode for r in slow] == [None, None] and "(exit timeout)" in failures(slow)


def test_simclrv2_memory_queues_the_keys_of_every_rank(tmp_path):
    launch("queue", {"size": 8, "out": str(tmp_path)})
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for r in ranks:  # (the random initial keys are rank 0's everywhere once DDP broadcasts buffers)
        assert int(r["position"]) == 6
        assert torch.equal(r["keys"][:6], torch.tensor([1.0, 1, 1, 2, 2, 2])[:, None].expand(6, 4))


# --------------------------------------------------------------------------- entry point for the ranks

if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, raw = sys.argv[1], json.loads(sys.argv[2])
    {"train": _worker_train, "loss": _worker_loss, "queue": _worker_queue}[mode](raw)
