"""The one training loop every method runs through.

Owns: device and precision, DDP, data position, optimiser and schedules, clipping,
accumulation, NaN guard, signals, logging, periodic k-NN, atomic checkpoints and exact resume.
Methods only turn a batch into views and views into a loss.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ssl_zoo import distributed as dist_utils
from ssl_zoo.checkpoint import CheckpointError, CheckpointManager, atomic_write_text, remove_stale_temporaries
from ssl_zoo.config import ConfigError, ExperimentConfig, dump_yaml, to_dict
from ssl_zoo.data import ResumableSampler, build_dataset, build_loader
from ssl_zoo.eval.knn import knn_eval
from ssl_zoo.methods.base import Method, build_method
from ssl_zoo.metrics import MetricsLogger
from ssl_zoo.optim import Schedule, build_optimizer, clip_gradients, scaled_lr
from ssl_zoo.resume_check import check_resume_config, state_dict_mismatch
from ssl_zoo.run_lock import hold_run_dir
from ssl_zoo.schedules import Progress


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; training stops and the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None
    tb_dir: Path
    step: int
    status: str  # "completed" or "interrupted"
    knn_top1: float | None = None
    signal: int | None = None  # the stop signal this rank received ("interrupted" runs)


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


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available; use train.device=cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 autocast is ~1.3-1.6x faster than fp32 there, and emulated (slow) elsewhere."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("train.precision=bf16 on a CPU without native bf16 (avx512_bf16/amx_bf16): autocast is "
                      "emulated and likely slower than train.precision=fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class StopSignal:
    """SIGTERM/SIGUSR1/SIGUSR2 set a flag; the loop checkpoints and exits at the next step boundary.

    SIGUSR2 is SLURM's (submitit's) warning before a time limit or preemption: the launcher
    requeues the job after the checkpoint (ssl_zoo.launch).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignal":
        with contextlib.suppress(ValueError):  # not the main thread: no handlers
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    def __init__(self, cfg: ExperimentConfig, progress_bar: bool = True) -> None:
        self.cfg = cfg
        self.progress_bar = progress_bar
        device_hint = pick_device(cfg.train.device)
        self.dist = dist_utils.init_distributed(device_hint.type)
        self.device = pick_device(cfg.train.device, self.dist.local_rank)
        self.amp_dtype = autocast_dtype(cfg.train.precision, self.device)
        self.run_dir = Path(cfg.train.output_dir) / cfg.train.name
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", cfg.train.keep_last)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        # data first: a missing dataset fails before any model is built
        self.train_set = build_dataset(cfg.data, "train")
        self.test_set = build_dataset(cfg.data, "test") if _has_labels(self.train_set) else None
        if cfg.train.batch_size % cfg.train.accumulate:
            raise ValueError(f"train.batch_size={cfg.train.batch_size} must be divisible by "
                             f"train.accumulate={cfg.train.accumulate}")
        self.micro_batch = cfg.train.batch_size // cfg.train.accumulate
        self.sampler = ResumableSampler(len(self.train_set), self.micro_batch, cfg.train.seed,
                                        self.dist.rank, self.dist.world_size)
        self.loader = build_loader(self.train_set, self.micro_batch, cfg.data.num_workers, self.sampler,
                                   pin_memory=self.device.type == "cuda")
        self.steps_per_epoch = self.sampler.batches_per_epoch // cfg.train.accumulate
        if self.steps_per_epoch == 0:
            raise ValueError("one epoch holds fewer micro-batches than train.accumulate; lower it")
        self.total_steps = cfg.train.max_steps or max(1, int(round(cfg.train.epochs * self.steps_per_epoch)))

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
        self.schedule = Schedule(cfg.optim, self.peak_lr, self.steps_per_epoch, self.total_steps)
        self.params = [p for p in self.method.parameters() if p.requires_grad]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.model: torch.nn.Module = self.method
        if self.dist.world_size > 1:
            if cfg.train.sync_batchnorm and self.device.type == "cuda":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.train.compile:
            self.model = torch.compile(self.model)
        self.step = 0

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "sampler": {"epoch": self.step // self.steps_per_epoch,
                        "batch": (self.step % self.steps_per_epoch) * self.cfg.train.accumulate},
            "rng": dist_utils.all_gather_object(rng_state(self.device)),
            "method": self.cfg.method.name,
            "config": to_dict(self.cfg),
            "world_size": self.dist.world_size,
        }

    def save(self) -> Path | None:
        state = self.state_dict()  # collective (RNG gather): every rank takes part
        path = self.ckpt.save(state, self.step) if self.dist.is_main else None
        dist_utils.barrier()
        return path

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
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank], self.device)
        return path

    def _note(self, line: str | None) -> None:
        """A line for the user (resume, clean-up), from rank 0 only."""
        if line and self.dist.is_main:
            tqdm.write(line)

    # ------------------------------------------------------------------ the loop
    def _forward_backward(self, batch, progress: Progress, last_micro: bool) -> tuple[torch.Tensor, dict]:
        batch = batch.to(self.device)
        views = self.method.views(batch)
        if self.cfg.train.channels_last:
            views.crops = [c.contiguous(memory_format=torch.channels_last) for c in views.crops]
        sync = contextlib.nullcontext()
        if not last_micro and isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            sync = self.model.no_sync()
        with sync:
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                out = self.model(views, progress)
            loss = out["loss"].float()
            finite = bool(torch.isfinite(loss.detach()).item())
            if dist_utils.any_flag(not finite, self.device):
                value = loss.item() if not finite else float("nan")
                raise NonFiniteLossError(
                    f"loss is {value} at step {self.step} (on some rank); stopping. The last good checkpoint "
                    f"is kept: {self.ckpt.last if self.ckpt.last.exists() else 'none written yet'}")
            self.scaler.scale(loss / self.cfg.train.accumulate).backward()
        return loss.detach(), views

    def _eval_knn(self, full: bool) -> float | None:
        if self.test_set is None:
            return None
        ev = self.cfg.eval
        self.method.eval()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                return knn_eval(self.method.embed, self.train_set, self.test_set, self.device, ev.knn_k,
                                ev.knn_temperature, ev.batch_size, 0 if full else ev.knn_train_limit,
                                0 if full else ev.knn_test_limit, progress=self.progress_bar and self.dist.is_main)
        finally:
            self.method.train()

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
            atomic_write_text(dump_yaml(cfg), self.run_dir / "config.yaml")
        logger = MetricsLogger(self.run_dir, self.dist.is_main, resume_step=self.step)
        if resumed and self.dist.is_main:
            tqdm.write(f"resumed from {resumed} at step {self.step}")
        bar = tqdm(total=self.total_steps, initial=self.step, desc=cfg.train.name, dynamic_ncols=True,
                   disable=not (self.progress_bar and self.dist.is_main))
        self.method.train()
        status, knn = "completed", None
        last_log_time, last_log_step = time.perf_counter(), self.step
        loss_sum, loss_count = torch.zeros((), device=self.device), 0
        with StopSignal() as stop:
            try:
                while self.step < self.total_steps and status == "completed":
                    epoch, pos = divmod(self.step, self.steps_per_epoch)
                    self.sampler.set_position(epoch, pos * cfg.train.accumulate)
                    micro = 0
                    for batch in self.loader:
                        progress = Progress(self.step, self.total_steps, epoch, self.steps_per_epoch)
                        if micro == 0:
                            lr, wd = self.schedule.apply(self.optimizer, self.step)
                        micro += 1
                        last_micro = micro == cfg.train.accumulate
                        loss, views = self._forward_backward(batch, progress, last_micro)
                        loss_sum += loss
                        loss_count += 1
                        if not last_micro:
                            continue
                        micro = 0
                        self.method.after_backward(progress)
                        self.scaler.unscale_(self.optimizer)
                        grad_norm = clip_gradients(self.params, cfg.optim.clip_grad, cfg.optim.clip_mode)
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                        self.optimizer.zero_grad(set_to_none=True)
                        self.method.after_step(progress)
                        if self.dist.is_main and ((cfg.train.image_every and self.step % cfg.train.image_every == 0)
                                                  or (self.step == 0)):
                            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                                logger.images(self.step, self.method.log_images(views))
                        self.step += 1
                        bar.update(1)
                        if self.step % cfg.train.log_every == 0 or self.step == self.total_steps:
                            now = time.perf_counter()
                            mean_loss = dist_utils.all_reduce_mean(loss_sum / max(loss_count, 1)).item()
                            rate = (self.step - last_log_step) * self.global_batch / max(now - last_log_time, 1e-9)
                            values = {"epoch": round(self.step / self.steps_per_epoch, 4), "loss": mean_loss,
                                      "lr": lr, "weight_decay": wd, "img_per_s": rate, "grad_norm": grad_norm,
                                      **self.method.schedule_values(progress)}
                            logger.log(self.step, values)
                            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")
                            last_log_time, last_log_step = now, self.step
                            loss_sum, loss_count = torch.zeros((), device=self.device), 0
                        if cfg.eval.knn_every and self.step % cfg.eval.knn_every == 0 and self.step < self.total_steps:
                            acc = self._eval_knn(full=False)
                            if acc is not None:
                                logger.log(self.step, {"epoch": round(self.step / self.steps_per_epoch, 4),
                                                       "knn_top1": acc})
                        if self.step % cfg.train.ckpt_every == 0 and self.step < self.total_steps:
                            self.save()
                        if dist_utils.any_flag(stop.received is not None, self.device):
                            status = "interrupted"
                            break
                        if self.step >= self.total_steps:
                            break
                checkpoint = self.save()
                if status == "interrupted" and self.dist.is_main:
                    tqdm.write(f"stop signal received: checkpoint written at step {self.step}: {checkpoint}")
                if status == "completed" and cfg.eval.final_knn:
                    knn = self._eval_knn(full=True)
                    if knn is not None:
                        logger.log(self.step, {"epoch": round(self.step / self.steps_per_epoch, 4), "knn_top1": knn})
            finally:
                bar.close()
                logger.close()
        return TrainResult(self.run_dir, self.ckpt.last if self.dist.is_main else None, self.run_dir / "tb",
                           self.step, status, knn, stop.received)


def _has_labels(dataset) -> bool:
    labels = getattr(dataset, "labels", None)
    return labels is not None and len(labels) > 0 and bool((labels >= 0).all())


