"""Every registered method against the trainer's contracts, at its tiny config (conftest TINY, TINY_DATA).

Parametrised over the registry, so a method registered tomorrow is checked without editing this file:
  a. one step gives every trainable parameter a gradient (the trainer's DDP runs with
     find_unused_parameters=False: one parameter without a gradient stops training at step 2);
  b. 2 real gloo ranks x 3 steps complete and end with equal parameters and buffers;
  c. a run stopped by SIGTERM mid-way and restarted ends equal to the uninterrupted run;
  d. export -> ssl_zoo.hub.load gives the run's backbone features;
  e. log_images (rank 0 only, between steps) changes no state and starts no collective;
  f. one step (every variant) returns what the collapse diagnostics read: detached, finite embeddings
     of the batch's images, and for self-distillation methods a teacher/student distribution pair.

b-d share ONE 2-rank job that trains every method in turn (starting ranks costs seconds of imports
each); this file is its entry point (`python tests/test_method_matrix.py ARGS.json`).
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ssl_zoo.launch.local_ranks import failures, free_port, run_ranks
from ssl_zoo.registry import available_methods, method_variants
from tests.conftest import ROOT, assert_same_weights, final_weights, stop_and_resume, tiny_config

WORLD, BATCH, STEPS = 2, 8, 3
STOP_AFTER = 0  # SIGTERM during step 1 of 3, acted on after step 2: the restart resumes mid-epoch (step 2 of 4)
METHODS = list(available_methods())
# (name, variant) of every registered algorithm; variant None for a name with one
VARIANTS = [(name, variant) for name in METHODS for variant in (method_variants(name) or [None])]


def matrix_config(method: str, root: Path, variant: str | None = None) -> dict:
    """The method's tiny config at batch 8 per rank, 4 steps per epoch (2 ranks)."""
    raw = tiny_config(method, root / method, variant=variant,
                      train={"batch_size": BATCH, "max_steps": STEPS, "threads": 1})
    raw["data"]["synthetic_size"] = WORLD * BATCH * 4
    return raw


def tiny_batch(method: str, tmp_path: Path, variant: str | None = None):
    """The tiny method (seeded, train mode) and one batch of its own tiny data."""
    from ssl_zoo.experiment import load_config
    from ssl_zoo.data import build_dataset
    from ssl_zoo.methods.base import build_method

    cfg = load_config(matrix_config(method, tmp_path, variant))
    torch.manual_seed(0)
    return build_method(cfg).train(), build_dataset(cfg.data, "train").__getitems__(list(range(BATCH)))


# --------------------------------------------------------------------------- in the ranks


def final_state(method: torch.nn.Module) -> dict:
    """Parameters and every buffer, persistent or not."""
    return {**dict(method.named_buffers()), **method.state_dict()}


def backbone_features(trainer) -> dict:
    """The run's backbone on a fixed input of the exported input size (hub config's rule)."""
    from ssl_zoo.methods.base import eval_mode

    backbone, data = trainer.method.backbone(), trainer.cfg.data
    side = trainer.method.eval_size or data.load_size
    x = torch.rand(2, data.channels, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), eval_mode(backbone):
        return {"x": x, "features": backbone(x)}


def train_every_method(configs: dict[str, dict], out: Path) -> None:
    """Per method: a straight DDP run (each rank's final state, rank 0's backbone features), then a run
    stopped by SIGTERM and restarted. The first failure ends the job: after it the ranks would no longer
    agree on the order of their collectives."""
    from ssl_zoo import distributed as dist_utils
    from ssl_zoo.experiment import load_config
    from ssl_zoo.trainer import Trainer

    rank = dist_utils.init_distributed("cpu").rank
    for method, raw in configs.items():
        folder = out / method
        folder.mkdir(exist_ok=True)
        try:
            trainer = Trainer(load_config(raw, ["train.name=straight"]), progress_bar=False)
            assert trainer.dist.world_size == WORLD
            result = trainer.fit()
            assert (result.status, result.step) == ("completed", STEPS)
            torch.save(final_state(trainer.method), folder / f"rank{rank}.pt")
            if rank == 0:
                torch.save(backbone_features(trainer), folder / "features.pt")
            stop_and_resume(raw, STOP_AFTER, signal.SIGTERM)
        except BaseException:
            (folder / f"error_rank{rank}.txt").write_text(traceback.format_exc())
            raise
    dist_utils.cleanup()


# --------------------------------------------------------------------------- the job


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict:
    """The 2-rank job over every method: its outputs, its runs and, if a rank failed, every rank's output."""
    root = tmp_path_factory.mktemp("matrix")
    out = root / "out"
    out.mkdir()
    args = root / "args.json"
    args.write_text(json.dumps({"configs": {m: matrix_config(m, root / "runs") for m in METHODS}, "out": str(out)}))
    results = run_ranks([__file__, str(args)], WORLD, ROOT, timeout=900)
    return {"out": out, "runs": root / "runs", "report": failures(results)}


def job_errors(job: dict, method: str) -> str:
    """The ranks' tracebacks for `method` (empty: none failed)."""
    return "\n".join(p.read_text() for p in sorted((job["out"] / method).glob("error_rank*.txt")))


def method_output(job: dict, method: str, *needed: str) -> Path:
    """The job's folder for `method`; fails with the ranks' tracebacks when a needed file is missing."""
    folder = job["out"] / method
    if not all((folder / name).is_file() for name in needed):
        pytest.fail(f"{method}: the 2-rank job did not write {needed}:\n"
                    f"{job_errors(job, method) or 'not reached'}\n{job['report']}")
    return folder


def run_dir(job: dict, method: str, name: str) -> Path:
    return job["runs"] / method / "runs" / name


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_end_with_equal_parameters_and_buffers(job, method):
    """Everything agrees except BatchNorm running statistics: DDP broadcasts rank 0's buffers before each
    forward, then each rank's forward updates them from its own batch (SyncBatchNorm only on CUDA)."""
    folder = method_output(job, method, "rank0.pt", "rank1.pt")
    s0, s1 = (torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert s0.keys() == s1.keys()
    differing = sorted(k for k in s0 if not torch.equal(s0[k], s1[k]))
    assert all(k.endswith(("running_mean", "running_var")) for k in differing), differing


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_sigterm_stop_and_restart_ends_equal_to_the_straight_run(job, method):
    """EMA teachers, queues and centres in the state; masks' RNG and sampler position in the final weights."""
    method_output(job, method, "rank0.pt", "rank1.pt")
    errors = job_errors(job, method)
    assert not errors, errors  # the stopped run or its restart failed
    assert_same_weights(final_weights(run_dir(job, method, "straight")), final_weights(run_dir(job, method, "stopped")))


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_hub_export_loads_back_with_the_runs_backbone_features(job, method, tmp_path):
    from ssl_zoo import hub
    from ssl_zoo.hub.export import export

    folder = method_output(job, method, "features.pt")
    expected = torch.load(folder / "features.pt", weights_only=True)
    model = hub.load(export(run_dir(job, method, "straight"), method, tmp_path / "hub"))
    with torch.no_grad():
        got = model.eval()(expected["x"])
    assert got.shape == expected["features"].shape
    assert torch.allclose(got, expected["features"], atol=1e-5), (got - expected["features"]).abs().max()


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_evaluation_commands_and_the_hub_see_the_input_the_in_training_knn_sees(job, method, tmp_path):
    """`ssl-zoo eval` / `finetune` (load_source on the run, and on its hub export) build each method's input as
    Method.embed does: SatMAE++ resizes the whole image to its model input, RAD-DINO min-maxes each image
    first. Narrow-range images, so a skipped min-max shows."""
    from ssl_zoo.eval.source import load_source
    from ssl_zoo.hub.export import export
    from ssl_zoo.run_dir import load_method

    method_output(job, method, "features.pt")
    straight = run_dir(job, method, "straight")
    run = load_method(straight)
    data = run.cfg.data
    images = torch.randint(60, 120, (2, data.channels, data.load_size, data.load_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    expected = run.method.embed(images)
    for source in (straight, export(straight, method, tmp_path / "hub")):
        evaluated = load_source(str(source))
        evaluated.backbone.eval()
        with torch.no_grad():
            got = evaluated.embed(images)
        assert torch.allclose(got, expected, atol=1e-5), (source, (got - expected).abs().max())


# --------------------------------------------------------------------------- in this process


@pytest.mark.parametrize("method", METHODS)
def test_one_step_gives_every_trainable_parameter_a_gradient(method, tmp_path, one_thread):
    from ssl_zoo.schedules import Progress

    model, batch = tiny_batch(method, tmp_path)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():  # zero-initialised gates (timm's zero_init_last BN gammas) hide what is behind them
        for p in trainable.values():
            if not p.any():
                p.normal_(0.0, 0.02)
    model.training_step(model.views(batch), Progress(0, STEPS, 0, 2))["loss"].backward()
    assert trainable
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert not missing, f"no gradient (DDP with find_unused_parameters=False stops on these): {missing}"
    zero = [n for n, p in trainable.items() if not p.grad.any()]
    assert not zero, f"zero gradient: {zero}"


# methods whose teacher gives a distribution over prototypes. Not SiT latest (its teacher gives MoCo-v3
# keys; the softmax runs over the batch's keys) nor PixPro (a cosine loss on momentum bins).
SELF_DISTILLATION = {"dino", "rad_dino"}


@pytest.mark.parametrize("method,variant", VARIANTS, ids=[f"{n}-{v}" if v else n for n, v in VARIANTS])
def test_one_step_returns_what_the_collapse_diagnostics_read(method, variant, tmp_path, one_thread):
    """The step's embeddings: one row per image of the batch (one view: B = BATCH, not views x images), detached,
    finite and not one placeholder row; self-distillation methods add the teacher's distribution for
    global view 1 and the student's log-probabilities for global view 2 (not view 1, whose head output
    the embeddings are)."""
    from ssl_zoo.schedules import Progress

    model, batch = tiny_batch(method, tmp_path, variant)
    assert type(model) is (method_variants(method)[variant] if variant else available_methods()[method])
    out = model.training_step(model.views(batch), Progress(0, STEPS, 0, 2))
    z = out["embeddings"]
    assert z.ndim == 2 and z.shape[0] == BATCH and z.shape[1] > 1, z.shape
    assert not z.requires_grad and torch.isfinite(z).all()
    assert (z.std(dim=0) > 0).any(), "every image has the same embedding at init"
    pair = {"teacher_probs", "student_log_probs"}
    assert pair <= set(out) if method in SELF_DISTILLATION else not pair & set(out)
    if method in SELF_DISTILLATION:
        teacher, student = out["teacher_probs"], out["student_log_probs"]
        assert teacher.shape == student.shape == (BATCH, model.cfg.out_dim)
        assert not teacher.requires_grad and not student.requires_grad
        assert (teacher >= 0).all() and torch.allclose(teacher.sum(-1), torch.ones(BATCH), atol=1e-5)
        assert torch.allclose(torch.logsumexp(student, dim=-1), torch.zeros(BATCH), atol=1e-5)
        assert not torch.allclose(student, torch.log_softmax(z / model.cfg.student_temp, dim=-1), atol=1e-3)


@pytest.mark.parametrize("method,variant", VARIANTS, ids=[f"{n}-{v}" if v else n for n, v in VARIANTS])
def test_losses_are_float32_under_cpu_bf16_autocast(method, variant, tmp_path, one_thread):
    """CUDA autocast runs softmax, log_softmax and norms in fp32 by itself; CPU autocast leaves them, and
    the matmuls and einsums of a loss, in bf16, whose 0.4% steps lose the small differences the losses
    learn from (a near-uniform DINO teacher, logits over a temperature of 0.1). So every method computes
    its losses in fp32 itself, and every loss it reports is float32 under CPU bf16 autocast."""
    from ssl_zoo.schedules import Progress

    model, batch = tiny_batch(method, tmp_path, variant)
    views = model.views(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.training_step(views, Progress(0, STEPS, 0, 2))
    losses = {k: v.dtype for k, v in out.items() if torch.is_tensor(v) and v.ndim == 0}
    assert "loss" in losses and all(d == torch.float32 for d in losses.values()), losses


COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
               "broadcast_object_list", "reduce", "reduce_scatter", "reduce_scatter_tensor", "all_to_all",
               "all_to_all_single", "barrier", "gather", "gather_object", "scatter", "send", "recv", "isend", "irecv")


@pytest.fixture
def single_rank_group():
    """A real world-size-1 gloo group: methods take their distributed code paths."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def record_collectives(monkeypatch) -> list[str]:
    """Names of the torch.distributed collectives called from now on (they still run)."""
    calls: list[str] = []

    def recorded(name, original, *args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    for name in COLLECTIVES:
        monkeypatch.setattr(dist, name, functools.partial(recorded, name, getattr(dist, name)))
    return calls


def snapshot(module: torch.nn.Module) -> tuple[dict, dict, torch.Tensor]:
    tensors = {n: t.detach().clone() for n, t in [*module.named_parameters(), *module.named_buffers()]}
    return tensors, {n: m.training for n, m in module.named_modules()}, torch.get_rng_state()


@pytest.mark.parametrize("method", METHODS)
def test_log_images_changes_no_state_and_starts_no_collective(method, tmp_path, one_thread, single_rank_group,
                                                              monkeypatch):
    """The trainer calls log_images on rank 0 only: a BatchNorm in training mode there (a SyncBatchNorm
    collective on CUDA) hangs the job, and any state it changes makes rank 0 differ from the others."""
    model, batch = tiny_batch(method, tmp_path)
    views = model.views(batch)
    before = snapshot(model)
    calls = record_collectives(monkeypatch)
    batchnorms_in_training = []
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.register_forward_pre_hook(lambda m, args: batchnorms_in_training.append(m) if m.training else None)
    grids = model.log_images(views)
    after = snapshot(model)

    assert grids and all(g.dim() == 3 for g in grids.values())
    assert not calls, f"collectives on one rank: {calls}"
    assert not batchnorms_in_training, f"{len(batchnorms_in_training)} BatchNorm forward(s) in training mode"
    assert [n for n in before[0] if not torch.equal(before[0][n], after[0][n])] == []
    assert before[1] == after[1], "training flags changed"
    assert torch.equal(before[2], after[2]), "the RNG moved"


if __name__ == "__main__":
    torch.set_num_threads(1)
    spec = json.loads(Path(sys.argv[1]).read_text())
    train_every_method(spec["configs"], Path(spec["out"]))
