"""The one training loop every method runs through.

Owns: device and precision, DDP, data position, optimiser and schedules, clipping, the time budget,
accumulation, NaN guard, signals, logging, periodic k-NN, atomic checkpoints and exact resume.
Methods only turn a batch into views and views into a loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from ssl_zoo import distributed as dist_utils
from ssl_zoo.augment import Views
from ssl_zoo.budget import (MEASURE_STEPS, SKIP_STEPS, EvalCost, StepTimer, out_of_time, second_window_end,
                            steps_within_budget)
from ssl_zoo.checkpoint import CheckpointManager, atomic_write_text, remove_stale_temporaries
from ssl_zoo.config import ExperimentConfig, per_rank_batch, to_dict
from ssl_zoo.data import ResumableSampler, build_dataset, build_loader, pretraining_set
from ssl_zoo.diagnostics import collapse_diagnostics, collapse_warning
from ssl_zoo.errors import CheckpointError, ConfigError, NonFiniteLossError
from ssl_zoo.eval.features import extract_features
from ssl_zoo.eval.knn import knn_eval
from ssl_zoo.methods.base import Method, build_method
from ssl_zoo.metrics import LossMeter, MetricsLogger
from ssl_zoo.optim import Schedule, build_optimizer, clip_gradients, scaled_lr
from ssl_zoo.resume_check import check_resume_config, state_dict_mismatch
from ssl_zoo.run_lock import hold_run_dir
from ssl_zoo.runtime import (AUTOCAST_DTYPES, configure_cuda, pick_device, resolve_precision, rng_state, rng_untouched,
                             set_rng_state)
from ssl_zoo.schedules import Progress
from ssl_zoo.stop_signal import StopSignal



@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None
    tb_dir: Path
    step: int
    status: str  # "completed" or "interrupted"
    knn_top1: float | None = None
    signal: int | None = None  # the stop signal this rank received ("interrupted" runs)
    skipped_images: int = 0  # unreadable images replaced by readable ones, all ranks (data.on_bad_image=skip)


@dataclass
class StepOutputs:
    """One optimizer step's results, on the device until a log step reads them."""

    loss: torch.Tensor  # mean over the micro-batches
    grad_norm: torch.Tensor  # before clipping
    views: Views  # the last micro-batch's, for image logging
    outputs: dict[str, torch.Tensor]  # the last micro-batch's training_step outputs, detached (diagnostics)


def _check_global_batch(train, world_size: int) -> None:
    """train.global_batch is a promise about the recipe: refuse a per-rank batch that breaks it (a Trainer
    built in Python, not through `ssl-zoo train`/`submit`, which set batch_size from it)."""
    if train.global_batch and train.batch_size * world_size != train.global_batch:
        raise ConfigError(f"train.global_batch={train.global_batch} but train.batch_size={train.batch_size} x "
                          f"{world_size} rank(s) = {train.batch_size * world_size}; set "
                          f"train.batch_size={per_rank_batch(train, world_size)} (ssl-zoo train and submit do)")


def init_from_hub(method: Method, spec: str) -> None:
    """model.init_from: the backbone weights of a hub model (sha256-verified, safetensors) loaded
    into every copy of the method's backbone, before training starts (a resume then overrides them)."""
    from ssl_zoo.hub import HubError
    from ssl_zoo.hub.loading import read_weights
    from ssl_zoo.hub.source import resolve

    try:
        folder, expected = resolve(spec, os.environ.get("SSL_ZOO_HUB"))
        state, _ = read_weights(folder, expected)
        method.init_backbone(state)
    except (HubError, RuntimeError) as e:
        raise ConfigError(f"model.init_from={spec}: {str(e).splitlines()[0]}") from e


class Trainer:
    def __init__(self, cfg: ExperimentConfig, progress_bar: bool = True) -> None:
        self.started = time.perf_counter()  # train.time_budget_min counts from here
        self.cfg = cfg
        self.progress_bar = progress_bar
        device_hint = pick_device(cfg.train.device)
        self.dist = dist_utils.init_distributed(device_hint.type)
        _check_global_batch(cfg.train, self.dist.world_size)
        self.device = pick_device(cfg.train.device, self.dist.local_rank)
        if self.device.type == "cuda":
            configure_cuda()
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.amp_dtype = AUTOCAST_DTYPES[self.precision]
        self.run_dir = Path(cfg.train.output_dir) / cfg.train.name
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", cfg.train.keep_last)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        # data first: a missing dataset fails before any model is built
        self.train_set = build_dataset(cfg.data, "train")  # evaluation (k-NN memory): centre squares
        self.test_set = build_dataset(cfg.data, "test") if _has_labels(self.train_set) else None
        self.pretrain_set = pretraining_set(cfg.data, self.train_set)  # training: whole images
        if cfg.train.batch_size % cfg.train.accumulate:
            raise ValueError(f"train.batch_size={cfg.train.batch_size} must be divisible by "
                             f"train.accumulate={cfg.train.accumulate}")
        self.micro_batch = cfg.train.batch_size // cfg.train.accumulate
        self.sampler = ResumableSampler(len(self.pretrain_set), self.micro_batch, cfg.train.seed,
                                        self.dist.rank, self.dist.world_size)
        self.loader = build_loader(self.pretrain_set, self.micro_batch, cfg.data.num_workers, self.sampler,
                                   pin_memory=self.device.type == "cuda")
        self.steps_per_epoch = self.sampler.batches_per_epoch // cfg.train.accumulate
        if self.steps_per_epoch == 0:
            raise ValueError("one epoch holds fewer micro-batches than train.accumulate; lower it")
        # the config's length; under a time budget a cap, until the measured step rate fixes the count
        epochs_steps = max(1, int(round(cfg.train.epochs * self.steps_per_epoch)))
        self.total_steps = cfg.train.max_steps or epochs_steps
        self.config_steps = self.total_steps  # what a time budget may not exceed
        self.recipe_steps = min(self.config_steps, epochs_steps)  # the length the schedules are written for
        self.schedule_epoch: float = self.steps_per_epoch  # steps of one epoch of the schedules (time budget: scaled)
        self.steps_fixed = not cfg.train.time_budget_min
        self.eval_cost: EvalCost | None = None  # measured with the first step-rate estimate under a budget
        self.elapsed_before = 0.0  # seconds of earlier attempts of this run (a resumed run's budget is what is left)
        self.skipped_images = 0  # this rank's, since the run began (kept across resumes)

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        method = build_method(cfg)
        if cfg.model.init_from:
            init_from_hub(method, cfg.model.init_from)
        self.method: Method = method.to(self.device)
        if cfg.train.channels_last:
            self.method.to(memory_format=torch.channels_last)
        torch.manual_seed(cfg.train.seed + 1000 * self.dist.rank)  # distinct augmentations per rank

        self.global_batch = cfg.train.batch_size * self.dist.world_size
        self.peak_lr = scaled_lr(cfg.optim, self.global_batch)
        self.optimizer = build_optimizer(self.method.param_groups(cfg.optim), cfg.optim)
        self.schedule = Schedule(cfg.optim, self.peak_lr, self.schedule_epoch, self.total_steps)
        self.params = [p for p in self.method.parameters() if p.requires_grad]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.model: torch.nn.Module = self.method
        if self.dist.world_size > 1:
            if cfg.train.sync_batchnorm and self.device.type == "cuda":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.train.compile:  # the backbone only, in place: DDP's no_sync and the state-dict keys stay as they are
            self.method.backbone().compile()
        self.step = 0

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "total_steps": self.total_steps,
            "total_steps_fixed": self.steps_fixed,
            "schedule_epoch": self.schedule_epoch,
            "elapsed_s": self.elapsed_before + time.perf_counter() - self.started,
            "skipped_images": self._skipped_all_ranks(),
            "sampler": {"epoch": self.step // self.steps_per_epoch,
                        "batch": (self.step % self.steps_per_epoch) * self.cfg.train.accumulate},
            "rng": dist_utils.all_gather_object(rng_state(self.device)),
            "method": self.cfg.method.name,
            "config": to_dict(self.cfg),
            "world_size": self.dist.world_size,
        }

    def save(self) -> Path | None:
        """Checkpoint on rank 0 (every rank takes part in the RNG gather); never with non-finite weights."""
        bad = self._non_finite_state()
        if dist_utils.any_flags([bool(bad)], self.device)[0]:
            raise NonFiniteLossError(
                f"weights are not finite at step {self.step} ({', '.join(bad[:3]) or 'on another rank'}); "
                f"not saved. {self._way_back()}")
        state = self.state_dict()
        path = self.ckpt.save(state, self.step) if self.dist.is_main else None
        dist_utils.barrier()
        return path

    def _non_finite_state(self) -> list[str]:
        """Names of parameters and buffers holding NaN/inf (one host sync, at checkpoint time only)."""
        named = [(k, t) for k, t in self.method.state_dict().items() if t.is_floating_point()]
        finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist() if named else []
        return [k for (k, _), ok in zip(named, finite) if not ok]

    def _way_back(self) -> str:
        newest = self.ckpt.last if self.ckpt.last.exists() else None
        if newest is None:
            return "No checkpoint was written yet: lower optim.base_lr or set optim.clip_grad and start again."
        return (f"The newest checkpoint holds finite weights: {newest}. Lower optim.base_lr or set "
                f"optim.clip_grad and rerun to continue from it.")

    def resume(self) -> Path | None:
        found = self.ckpt.load_latest()  # raises when there are checkpoints but none is readable
        if found is None:
            return None
        state, path = found
        if state.get("method") != self.cfg.method.name:
            raise CheckpointError(f"{path} was written by method {state.get('method')!r}, "
                                  f"not {self.cfg.method.name!r}; use another train.name or train.resume=false")
        self._note(check_resume_config(state.get("config"), to_dict(self.cfg), self.cfg.train.resume_changes, path))
        try:
            self.method.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{path} does not fit this model (different backbone or sizes?): "
                                  f"{state_dict_mismatch(self.method.state_dict(), state['model'])}") from e
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: its optimizer state does not fit this run's parameter groups ({e}); "
                                  f"use another train.name") from e
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.skipped_images = int(state.get("skipped_images", 0)) if self.dist.is_main else 0  # the all-rank total
        if self.cfg.train.time_budget_min and state.get("total_steps_fixed"):
            # exact resume: the count chosen before and the schedules scaled to it
            self._set_total_steps(int(state["total_steps"]), schedule_epoch=state.get("schedule_epoch"))
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank], self.device)
        return path

    def _note(self, line: str | None) -> None:
        """A line for the user (resume, clean-up), from rank 0 only."""
        if line and self.dist.is_main:
            tqdm.write(line)

    # ------------------------------------------------------------------ one optimizer step
    def _forward_backward(self, batch, progress: Progress, last_micro: bool) -> tuple[dict[str, torch.Tensor], Views]:
        batch = batch.to(self.device)
        views = self.method.views(batch)
        if self.cfg.train.channels_last:
            views = dataclasses.replace(views, crops=[c.contiguous(memory_format=torch.channels_last)
                                                      for c in views.crops])  # a new Views: the method's stays as built
        sync = contextlib.nullcontext()
        if not last_micro and isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            sync = self.model.no_sync()
        with sync:
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                out = self.model(views, progress)
            loss = out["loss"].float()
            self.scaler.scale(loss / self.cfg.train.accumulate).backward()
        return {k: v.detach() for k, v in out.items()}, views

    def _gradients(self, micro_batches: list, progress: Progress) -> StepOutputs:
        """Forward/backward over the micro-batches of one step, all on the device: nothing here waits for it."""
        loss = torch.zeros((), device=self.device)
        for i, batch in enumerate(micro_batches):
            self.skipped_images += batch.skipped
            outputs, views = self._forward_backward(batch, progress, last_micro=i == len(micro_batches) - 1)
            loss = loss + outputs["loss"].float() / len(micro_batches)
        self.method.after_backward(progress)
        self.scaler.unscale_(self.optimizer)
        grad_norm = clip_gradients(self.params, self.cfg.optim.clip_grad, self.cfg.optim.clip_mode)
        return StepOutputs(loss, grad_norm, views, outputs)

    def _check(self, loss: torch.Tensor, grad_norm: torch.Tensor, stop: StopSignal) -> bool:
        """Before the optimizer step: stop with NonFiniteLossError if the loss or gradient norm is NaN/inf on
        any rank (nothing is applied); else whether a stop signal reached any rank. One all-reduce and one
        host sync per optimizer step. Under fp16 an inf gradient is the grad scaler's business (it skips)."""
        finite = torch.isfinite(loss) if self.scaler.is_enabled() else torch.isfinite(loss) & torch.isfinite(grad_norm)
        flags = torch.stack([(~finite).float(), torch.full((), float(stop.received is not None), device=self.device)])
        bad, stopping = dist_utils.any_flags(flags, self.device)
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            what = "loss" if not torch.isfinite(loss) else "gradient norm"
            value = float(loss if what == "loss" else grad_norm)
            raise NonFiniteLossError(f"{what} is {value if not math.isfinite(value) else 'not finite on another rank'} "
                                     f"at step {self.step}; the step was not applied. {self._way_back()}")
        return stopping

    def _apply(self, progress: Progress) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_step(progress)

    # ------------------------------------------------------------------ around the steps
    def _log_images(self, logger: MetricsLogger, views: Views) -> None:
        image_every = self.cfg.train.image_every
        if self.dist.is_main and (self.step == 0 or (image_every and self.step % image_every == 0)):
            with rng_untouched(self.device):
                logger.images(self.step, self.method.log_images(views))

    def _log(self, logger: MetricsLogger, bar: tqdm, meter: LossMeter, step: StepOutputs, progress: Progress) -> None:
        if not (self.step % self.cfg.train.log_every == 0 or self.step == self.total_steps):
            return
        mean_loss, rate = meter.read(self.step, self.global_batch)
        skipped = self._skipped_all_ranks()
        lr, wd = self.schedule.lr(progress.step), self.schedule.weight_decay(progress.step)
        diagnostics = collapse_diagnostics(step.outputs) if self.dist.is_main else {}
        self._note(collapse_warning(step.outputs, diagnostics, self.step))
        logger.log(self.step, {"epoch": round(self.step / self.steps_per_epoch, 4), "loss": mean_loss, "lr": lr,
                               "weight_decay": wd, "img_per_s": rate, "grad_norm": float(step.grad_norm),
                               "skipped_images": skipped,
                               **self.method.schedule_values(progress), **diagnostics})
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")

    def _skipped_all_ranks(self) -> int:
        count = torch.tensor(float(self.skipped_images), dtype=torch.float64, device=self.device)
        return round(dist_utils.all_reduce_mean(count).item() * self.dist.world_size)

    def _periodic(self, logger: MetricsLogger, timer: StepTimer) -> None:
        """Mid-run k-NN and checkpoints (the final ones run after the loop)."""
        cfg = self.cfg
        if self.step >= self.total_steps:
            return
        if cfg.eval.knn_every and self.step % cfg.eval.knn_every == 0:
            started = time.perf_counter()
            acc = self._eval_knn(full=False)
            timer.exclude(time.perf_counter() - started)  # the budget counts it apart from the step rate
            if acc is not None:
                logger.log(self.step, {"epoch": round(self.step / self.steps_per_epoch, 4), "knn_top1": acc})
        if self.step % cfg.train.ckpt_every == 0:
            self.save()

    def _eval_knn(self, full: bool) -> float | None:
        if self.test_set is None:
            return None
        ev = self.cfg.eval
        self.method.eval()
        dist_utils.broadcast_buffers(self.method)  # every rank embeds its share with rank 0's weights
        try:
            with rng_untouched(self.device):
                return knn_eval(self.method.embed, self.train_set, self.test_set, self.device, ev.knn_k,
                                ev.knn_temperature, ev.batch_size, 0 if full else ev.knn_train_limit,
                                0 if full else ev.knn_test_limit, progress=self.progress_bar and self.dist.is_main,
                                num_workers=self.cfg.data.num_workers)
        finally:
            self.method.train()

    # ------------------------------------------------------------------ the time budget
    def _set_total_steps(self, total: int, fixed: bool = True, schedule_epoch: float | None = None) -> None:
        """The run's length as the time budget chose it. The epoch-counted schedules (lr and teacher-temperature
        warm-ups, frozen last layer, ...) scale with it: each keeps its share of the recipe's epochs x
        steps-per-epoch, so a budget that shortens (or, over a raised max_steps, lengthens) the run compresses
        the recipe instead of cutting it (a 10-epoch warm-up in a run cut to 5 epochs would never end)."""
        self.total_steps, self.steps_fixed = total, fixed
        self.schedule_epoch = schedule_epoch or self.steps_per_epoch * total / self.recipe_steps
        self.schedule = Schedule(self.cfg.optim, self.peak_lr, self.schedule_epoch, total)

    def _eval_cost(self) -> EvalCost:
        """Seconds the k-NN evaluations will take, from the time to embed one evaluation batch (the second:
        the first one pays for one-off set-up of the evaluation shapes)."""
        ev = self.cfg.eval
        if self.test_set is None or not (ev.final_knn or ev.knn_every):
            return EvalCost(0.0, 0.0, 0)
        n = min(ev.batch_size, len(self.train_set))
        self.method.eval()
        try:
            with rng_untouched(self.device):
                for _ in range(2):
                    t0 = time.perf_counter()
                    extract_features(self.method.embed, self.train_set, self.device, ev.batch_size, n, progress=False)
                # each rank embeds 1/world of the images (ssl_zoo.eval.knn shards the extraction)
                per_image = (time.perf_counter() - t0) / n / self.dist.world_size
        finally:
            self.method.train()
        n_train, n_test = len(self.train_set), len(self.test_set)
        final = per_image * (n_train + n_test) * KNN_SEARCH_MARGIN if ev.final_knn else 0.0
        limited = min(ev.knn_train_limit or n_train, n_train) + min(ev.knn_test_limit or n_test, n_test)
        return EvalCost(final, per_image * limited * KNN_SEARCH_MARGIN, ev.knn_every)

    def _measured_eval_cost(self) -> EvalCost:
        """The evaluations' cost on the slowest rank, measured once per process."""
        if self.eval_cost is None:
            cost = self._eval_cost()
            slowest = dist_utils.all_reduce_max(torch.tensor([cost.final_s, cost.periodic_s], dtype=torch.float64,
                                                             device=self.device)).tolist()
            self.eval_cost = EvalCost(slowest[0], slowest[1], cost.periodic_every)
        return self.eval_cost

    def _budget_left_s(self) -> float:
        return self.cfg.train.time_budget_min * 60 - self.elapsed_before

    def _budget(self, timer: StepTimer, bar: tqdm) -> None:
        """Under train.time_budget_min: set total_steps from the measured step rate (a first estimate, then
        the fixed count; ssl_zoo.budget), and once fixed, stop if the steps slowed down past the budget."""
        if not self.cfg.train.time_budget_min:
            return
        if self.steps_fixed:
            self._stop_if_out_of_time(bar)
            return
        seconds_per_step = timer.observe(self.step, time.perf_counter())
        if seconds_per_step is None:
            return
        first = self.eval_cost is None
        cost = self._measured_eval_cost()
        seconds_per_step = float(dist_utils.all_reduce_max(torch.tensor(seconds_per_step, dtype=torch.float64,
                                                                        device=self.device)))
        total = steps_within_budget(self._budget_left_s(), time.perf_counter() - self.started, self.step,
                                    seconds_per_step, self.config_steps, cost)
        window_end = second_window_end(self.step, total)
        final = not first or window_end >= total
        self._set_total_steps(total, fixed=final)
        if not final:
            timer.extend(window_end, time.perf_counter())
        bar.total = total
        bar.refresh()
        if self.dist.is_main:
            self._write_config()
            length = "the config length" if total == self.config_steps else f"of {self.config_steps}"
            stage = "fixed" if final else f"first estimate, measured again to step {window_end}"
            tqdm.write(f"time budget {self.cfg.train.time_budget_min:g} min: {seconds_per_step:.3f} s/step, final "
                       f"k-NN ~{cost.final_s:.0f} s -> {total} steps ({length}; {stage})")

    def _stop_if_out_of_time(self, bar: tqdm) -> None:
        """Steps that slowed down after the count was fixed: end the run now, the final k-NN still fits."""
        elapsed = float(dist_utils.all_reduce_max(torch.tensor(time.perf_counter() - self.started,
                                                               dtype=torch.float64, device=self.device)))
        final_eval_s = self._measured_eval_cost().final_s
        if self.step >= self.total_steps or not out_of_time(self._budget_left_s(), elapsed, final_eval_s):
            return
        planned = self.total_steps
        self._set_total_steps(self.step, fixed=True, schedule_epoch=self.schedule_epoch)  # the steps done keep theirs
        bar.total = self.step
        if self.dist.is_main:
            self._write_config()
            tqdm.write(f"time budget {self.cfg.train.time_budget_min:g} min: steps slowed down; stopping at step "
                       f"{self.step} of the {planned} planned (the schedules end early)")

    # ------------------------------------------------------------------ the loop
    def _write_config(self) -> None:
        """config.yaml as the run runs: precision resolved from `auto`, the step count once fixed."""
        resolved = to_dict(self.cfg)
        resolved["train"]["precision"] = self.precision
        note = f"# as run: train.precision {self.cfg.train.precision} -> {self.precision}"
        if self.cfg.train.time_budget_min and self.steps_fixed:
            resolved["train"]["max_steps"] = self.total_steps
            note += f"; train.max_steps fixed by the {self.cfg.train.time_budget_min:g}-minute budget"
        atomic_write_text(note + "\n" + yaml.safe_dump(resolved, sort_keys=False), self.run_dir / "config.yaml")

    def _announce(self, resumed: Path | None) -> None:
        if not self.dist.is_main:
            return
        steps = (f"{self.total_steps} steps" if self.steps_fixed else
                 f"steps set from the step rate measured after {SKIP_STEPS + MEASURE_STEPS} to fit {self.cfg.train.time_budget_min:g} min "
                 f"(at most {self.total_steps})")
        tqdm.write(f"{self.cfg.train.name}: {self.cfg.method.name} on {self.device}, precision {self.precision}"
                   f"{' (auto)' if self.cfg.train.precision == 'auto' else ''}, {self.dist.world_size} rank(s), "
                   f"global batch {self.global_batch}, peak lr {self.peak_lr:.4g}, {steps}")
        if resumed:
            tqdm.write(f"resumed from {resumed} at step {self.step}")

    def _train(self, logger: MetricsLogger, bar: tqdm, stop: StopSignal) -> str:
        """Optimizer steps until total_steps or a stop signal; 'completed' or 'interrupted'."""
        accumulate = self.cfg.train.accumulate
        meter, timer = LossMeter(self.device, self.step), StepTimer(self.step)
        while self.step < self.total_steps:
            epoch, pos = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_position(epoch, pos * accumulate)
            for micro_batches in _groups(self.loader, accumulate):
                progress = Progress(self.step, self.total_steps, epoch, self.schedule_epoch)
                self.schedule.apply(self.optimizer, self.step)
                step = self._gradients(micro_batches, progress)
                stopping = self._check(step.loss, step.grad_norm, stop)
                self._apply(progress)
                self._log_images(logger, step.views)
                self.step += 1
                bar.update(1)
                meter.add(step.loss)
                self._log(logger, bar, meter, step, progress)
                self._budget(timer, bar)
                self._periodic(logger, timer)
                if stopping:
                    return "interrupted"
                if self.step >= self.total_steps or self.step % self.steps_per_epoch == 0:
                    break
        return "completed"

    def fit(self) -> TrainResult:
        """Train to the end (or a stop signal) as the run directory's only writer (ssl_zoo.run_lock)."""
        with hold_run_dir(self.run_dir, self.dist.is_main, self.device):
            return self._fit()

    def _fit(self) -> TrainResult:
        cfg = self.cfg
        if self.dist.is_main:  # under the lock: no trainer is writing these temporaries
            self._note(remove_stale_temporaries(self.run_dir, self.ckpt.folder))
            if not cfg.train.resume:
                self._note(self.ckpt.set_aside_unreadable())
        resumed = self.resume() if cfg.train.resume else None
        if self.dist.is_main:  # only once a resume is accepted
            self._write_config()
        logger = MetricsLogger(self.run_dir, self.dist.is_main, resume_step=self.step)
        self._announce(resumed)
        bar = tqdm(total=self.total_steps, initial=self.step, desc=cfg.train.name, dynamic_ncols=True,
                   disable=not (self.progress_bar and self.dist.is_main))
        self.method.train()
        knn = None
        with StopSignal() as stop:
            try:
                status = self._train(logger, bar, stop)
                checkpoint = self.save()
                if status == "interrupted" and self.dist.is_main:
                    tqdm.write(f"stop signal received: checkpoint written at step {self.step}: {checkpoint}")
                if status == "completed" and cfg.eval.final_knn:
                    knn = self._eval_knn(full=True)
                    if knn is not None:
                        logger.log(self.step, {"epoch": round(self.step / self.steps_per_epoch, 4), "knn_top1": knn})
                skipped = self._skipped_all_ranks()
                if skipped and self.dist.is_main:
                    tqdm.write(f"{skipped} unreadable images were replaced by the next readable one "
                               f"(data.on_bad_image=skip); the warnings name the files")
                if self.dist.is_main and cfg.train.time_budget_min:
                    minutes = (self.elapsed_before + time.perf_counter() - self.started) / 60
                    tqdm.write(f"{status} at step {self.step} after {minutes:.1f} of "
                               f"{cfg.train.time_budget_min:g} budgeted minutes")
            finally:
                bar.close()
                logger.close()
        return TrainResult(self.run_dir, self.ckpt.last if self.dist.is_main else None, self.run_dir / "tb",
                           self.step, status, knn, stop.received, skipped)


KNN_SEARCH_MARGIN = 1.2  # feature extraction dominates a k-NN; 20% for the similarity search and top-k


def _groups(loader, size: int):
    """The loader's batches in groups of `size` (one optimizer step's micro-batches); a partial last
    group is dropped, as the epoch length (steps_per_epoch) already excludes it."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []


def _has_labels(dataset) -> bool:
    labels = getattr(dataset, "labels", None)
    return labels is not None and len(labels) > 0 and bool((labels >= 0).all())
