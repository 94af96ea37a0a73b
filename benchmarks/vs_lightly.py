"""Training throughput of the zoo vs the loop a lightly user writes, side by side in one run.

For SimCLR(v2), DINO and MAE, each method's tiny Fashion-MNIST config fixes the backbone, image
sizes, batch size and optimiser for both sides:

  zoo      the real `Trainer.fit()` (configs/<m>/*_fashion_mnist.yaml, overrides for steps, device,
           precision): uint8 batches sliced in the loader, augmentation batched on the device (kornia).
  lightly  what lightly's docs/examples write: lightly.transforms (SimCLRTransform, DINOTransform,
           MAETransform, their parameters taken from the same config) applied per sample to PIL
           images in DataLoader workers (`--workers`), lightly's losses and heads (NTXentLoss +
           SimCLRProjectionHead; DINOLoss + DINOProjectionHead + update_momentum; MSE +
           MaskedVisionTransformerTIMM + MaskedVisionTransformerDecoderTIMM, the successor lightly
           1.6 names for the deprecated MAEDecoderTIMM) and a plain PyTorch loop with the same
           optimiser class and peak lr (no lr schedule, no clipping, as in the examples).

Both use the zoo's `build_backbone` for an identical network and the same precision. Runs are
interleaved A B A B (`--repeats`), each timing `--steps` steps after `--warmup`; img/s is the batch
over the MEDIAN step time of a run (a step = from the end of the previous step to the end of this
one, so waiting for data counts), and the table shows the median over repeats. img/s counts
source images, not views.

Augmentation alone: the zoo's `MultiViewAugment` on one uint8 batch on the device vs a
torchvision.transforms.v2 pipeline with the same ops (crop, flip, jitter, grayscale, blur,
solarize) applied per sample in this one process (a DataLoader spreads that over its workers).

    .venv/bin/python benchmarks/vs_lightly.py --steps 20 --warmup 3 --repeats 3 [--methods simclrv2]

Prints the machine and settings, then the markdown table (last); writes benchmarks/results/vs_lightly.json.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (RESULTS, ROOT, StepClock, clock_trainer, describe, discover,  # noqa: E402
                               img_per_s, log, markdown_table, provenance, quiet_overrides, sync, write_json)
from ssl_zoo.augment import MultiViewAugment, ViewSpec, odd_kernel  # noqa: E402
from ssl_zoo.backbones import build_backbone  # noqa: E402
from ssl_zoo.config import ExperimentConfig, OptimConfig  # noqa: E402
from ssl_zoo.experiment import load_config  # noqa: E402
from ssl_zoo.data import build_dataset  # noqa: E402
from ssl_zoo.optim import scaled_lr  # noqa: E402
from ssl_zoo.runtime import autocast_dtype, pick_device  # noqa: E402
from ssl_zoo.trainer import Trainer  # noqa: E402

METHODS = ("simclrv2", "dino", "mae")


# --------------------------------------------------------------------------- the lightly user's side


@dataclass
class Baseline:
    """One lightly-style recipe: a per-sample transform, a model, its loss on a list of view batches,
    and the hooks the lightly examples call around the optimiser step."""

    transform: Callable  # PIL image -> list of view tensors
    model: nn.Module
    loss: Callable[[list[torch.Tensor]], torch.Tensor]
    after_backward: Callable[[], None] = field(default=lambda: None)
    after_step: Callable[[], None] = field(default=lambda: None)


def lightly_normalize(name: str) -> dict | None:
    from lightly.transforms.utils import IMAGENET_NORMALIZE

    return IMAGENET_NORMALIZE if name == "imagenet" else None


def jitter_args(v: ViewSpec) -> dict:
    """A zoo view's colour recipe in lightly's transform arguments (strength 1: the values as given)."""
    b, c, s, h = v.jitter
    return dict(hf_prob=v.flip_p, cj_prob=v.jitter_p, cj_strength=1.0, cj_bright=b, cj_contrast=c, cj_sat=s,
                cj_hue=h, random_gray_scale=v.gray_p, sigmas=v.blur_sigma)


def simclr_baseline(cfg: ExperimentConfig) -> Baseline:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    m, v = cfg.method, cfg.method.view
    transform = SimCLRTransform(input_size=v.size, min_scale=v.scale[0], gaussian_blur=v.blur_p,
                                normalize=lightly_normalize(m.normalize), **jitter_args(v))
    backbone = build_backbone(cfg.model, in_chans=cfg.data.channels)
    d = backbone.num_features
    head = SimCLRProjectionHead(d, m.head_hidden_dim or d, m.out_dim, num_layers=m.head_layers)
    model = nn.Sequential(backbone, head)
    criterion = NTXentLoss(temperature=m.temperature)
    return Baseline(transform, model, lambda views: criterion(model(views[0]), model(views[1])))


class LightlyDINO(nn.Module):
    """lightly's DINO example: student and teacher backbone + DINOProjectionHead, teacher frozen."""

    def __init__(self, backbone: nn.Module, make_head: Callable[[], nn.Module]) -> None:
        super().__init__()
        from lightly.models.utils import deactivate_requires_grad

        self.student_backbone, self.student_head = backbone, make_head()
        self.teacher_backbone, self.teacher_head = copy.deepcopy(backbone), make_head()
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student_head(self.student_backbone(x).flatten(start_dim=1))

    def forward_teacher(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher_head(self.teacher_backbone(x).flatten(start_dim=1))


def dino_baseline(cfg: ExperimentConfig) -> Baseline:
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import update_momentum
    from lightly.transforms import DINOTransform

    m = cfg.method
    g0, g1 = m.global_views
    loc = m.local_view
    transform = DINOTransform(global_crop_size=g0.size, global_crop_scale=g0.scale, local_crop_size=loc.size,
                              local_crop_scale=loc.scale, n_local_views=m.n_local,
                              gaussian_blur=(g0.blur_p, g1.blur_p, loc.blur_p), solarization_prob=g1.solarize_p,
                              normalize=lightly_normalize(m.normalize), **jitter_args(g0))
    backbone = build_backbone(cfg.model, in_chans=cfg.data.channels, img_size=g0.size)
    model = LightlyDINO(backbone, lambda: DINOProjectionHead(
        backbone.num_features, m.hidden_dim, m.bottleneck_dim, m.out_dim, batch_norm=m.use_bn_in_head,
        freeze_last_layer=1, norm_last_layer=m.norm_last_layer))
    criterion = DINOLoss(output_dim=m.out_dim, warmup_teacher_temp=m.teacher_temp.start,
                         teacher_temp=m.teacher_temp.end, student_temp=m.student_temp,
                         center_momentum=m.center_momentum)

    def loss(views: list[torch.Tensor]) -> torch.Tensor:
        teacher_out = [model.forward_teacher(v) for v in views[:2]]
        student_out = [model(v) for v in views]
        return criterion(teacher_out, student_out, epoch=0)

    def after_step() -> None:
        update_momentum(model.student_backbone, model.teacher_backbone, m=m.momentum.start)
        update_momentum(model.student_head, model.teacher_head, m=m.momentum.start)

    return Baseline(transform, model, loss, lambda: model.student_head.cancel_last_layer_gradients(0), after_step)


class LightlyMAE(nn.Module):
    """lightly's MAE example (encoder on kept tokens, mask tokens, decoder, pixels of masked patches)."""

    def __init__(self, vit: nn.Module, decoder_dim: int, depth: int, heads: int, mask_ratio: float) -> None:
        super().__init__()
        from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM

        self.mask_ratio = mask_ratio
        self.patch_size = vit.patch_embed.patch_size[0]
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        self.sequence_length = self.backbone.sequence_length
        self.decoder_embed = nn.Linear(vit.embed_dim, decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(num_patches=vit.patch_embed.num_patches,
                                                          embed_dim=decoder_dim, depth=depth, num_heads=heads)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * vit.patch_embed.proj.in_channels)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from lightly.models import utils

        batch = images.shape[0]
        idx_keep, idx_mask = utils.random_token_mask((batch, self.sequence_length), self.mask_ratio,
                                                     device=images.device)
        x = self.decoder_embed(self.backbone.encode(images=images, idx_keep=idx_keep))
        tokens = utils.repeat_token(self.decoder.mask_token, (batch, self.sequence_length))
        tokens = utils.set_at_index(tokens, idx_keep, x.type_as(tokens))
        decoded = self.decoder.decode(self.decoder.add_pos_embed(tokens))
        pred = self.decoder_pred(utils.get_at_index(decoded, idx_mask))
        target = utils.get_at_index(utils.patchify(images, self.patch_size), idx_mask - 1)  # no class token
        return pred, target


def mae_baseline(cfg: ExperimentConfig) -> Baseline:
    from lightly.transforms import MAETransform

    m, v = cfg.method, cfg.method.view
    transform = MAETransform(input_size=v.size, min_scale=v.scale[0], normalize=lightly_normalize(m.normalize))
    vit = build_backbone(cfg.model, in_chans=cfg.data.channels, img_size=v.size, dynamic_img_size=False)
    model = LightlyMAE(vit, m.decoder_dim, m.decoder_depth, m.decoder_heads, m.mask_ratio)
    criterion = nn.MSELoss()
    return Baseline(transform, model, lambda views: criterion(*model(views[0])))


BASELINES: dict[str, Callable[[ExperimentConfig], Baseline]] = {
    "simclrv2": simclr_baseline, "dino": dino_baseline, "mae": mae_baseline}


def plain_optimizer(params, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The config's optimiser class and peak lr over all parameters (no parameter groups)."""
    if cfg.name == "lars":
        from lightly.utils.lars import LARS

        return LARS(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                    trust_coefficient=cfg.lars_eta)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


class PILImages(torch.utils.data.Dataset):
    """The same Fashion-MNIST images (uint8, the config's load size and channels) handed to the
    transform one PIL image at a time, as torchvision datasets do."""

    def __init__(self, images: torch.Tensor, transform: Callable) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        from PIL import Image

        array = self.images[index].permute(1, 2, 0).numpy()
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        return self.transform(image)


def run_lightly(name: str, cfg: ExperimentConfig, images: torch.Tensor, args: argparse.Namespace,
                device: torch.device) -> list[float]:
    """Step times of the plain loop over lightly's pieces (after `args.warmup` steps)."""
    torch.manual_seed(cfg.train.seed)
    base = BASELINES[name](cfg)
    model = base.model.to(device).train()
    opt = plain_optimizer([p for p in model.parameters() if p.requires_grad], cfg.optim,
                          scaled_lr(cfg.optim, cfg.train.batch_size))
    loader = torch.utils.data.DataLoader(PILImages(images, base.transform), batch_size=cfg.train.batch_size,
                                         shuffle=True, drop_last=True, num_workers=args.workers,
                                         pin_memory=device.type == "cuda")
    amp = autocast_dtype(args.precision, device)
    clock, total = StepClock(device), args.warmup + args.steps
    while len(clock.stamps) < total:
        for views in loader:
            views = [v.to(device, non_blocking=True) for v in views]
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = base.loss(views)
            loss.float().backward()
            base.after_backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            base.after_step()
            clock.stamp()
            if len(clock.stamps) == total:
                break
    return clock.times(args.warmup)


# --------------------------------------------------------------------------- the zoo's side


def zoo_config(config: Path, args: argparse.Namespace, out_dir: str, name: str) -> ExperimentConfig:
    overrides = [*quiet_overrides(args.warmup + args.steps, out_dir, f"vs_lightly_{name}"),
                 f"train.device={args.device}", f"train.precision={args.precision}", *args.set]
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    return load_config(config, overrides)


def run_zoo(cfg: ExperimentConfig, args: argparse.Namespace) -> tuple[list[float], int]:
    """Step times of the real trainer (after `args.warmup` steps) and its global batch."""
    trainer = Trainer(cfg, progress_bar=False)
    clock = clock_trainer(trainer)
    trainer.fit()
    return clock.times(args.warmup), trainer.global_batch


def training_images(cfg: ExperimentConfig, count: int) -> torch.Tensor:
    """The first `count` training images the zoo's loader would give (load size, channels)."""
    dataset = build_dataset(cfg.data, "train")
    return dataset.__getitems__(list(range(min(count, len(dataset))))).images


def view_sizes(cfg: ExperimentConfig) -> str:
    m = cfg.method
    if m.name == "dino":
        return f"2×{m.global_views[0].size} + {m.n_local}×{m.local_view.size}"
    return str(m.view.size)


def compare_method(name: str, config: Path, args: argparse.Namespace, out_dir: str) -> dict:
    cfg = zoo_config(config, args, out_dir, name)
    device = pick_device(args.device)
    batch = cfg.train.batch_size
    images = training_images(cfg, batch * (args.warmup + args.steps))
    zoo, lightly = [], []
    for r in range(args.repeats):  # A B A B ...: load from other jobs hits both alike
        log(f"[{name}] repeat {r + 1}/{args.repeats}: zoo ...")
        times, global_batch = run_zoo(cfg, args)
        zoo.append(img_per_s(global_batch, times))
        log(f"[{name}] repeat {r + 1}/{args.repeats}: lightly ...")
        lightly.append(img_per_s(batch, run_lightly(name, cfg, images, args, device)))
        gc.collect()
    zoo_med, lightly_med = statistics.median(zoo), statistics.median(lightly)
    return {"what": name, "config": str(config.relative_to(ROOT)),
            "backbone": cfg.model.backbone, "image_size": view_sizes(cfg), "batch_size": batch, "device": str(device),
            "precision": str(autocast_dtype(args.precision, device) or torch.float32).replace("torch.", ""),
            "optimizer": cfg.optim.name, "zoo_img_s": zoo_med, "lightly_img_s": lightly_med,
            "ratio": zoo_med / lightly_med, "zoo_img_s_runs": zoo, "lightly_img_s_runs": lightly}


# --------------------------------------------------------------------------- augmentation alone


def augmentation_spec(size: int) -> ViewSpec:
    """Every op both pipelines share, at SimCLR/DINO-like probabilities."""
    return ViewSpec(size=size, scale=(0.08, 1.0), interpolation="bilinear", flip_p=0.5, jitter_p=0.8,
                    jitter=(0.4, 0.4, 0.2, 0.1), gray_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0), solarize_p=0.2)


def torchvision_pipeline(spec: ViewSpec):
    """torchvision.transforms.v2 with the same ops, order and probabilities as the zoo's ViewAugment."""
    from torchvision.transforms import v2

    k = odd_kernel(spec.size, spec.blur_kernel_frac)
    return v2.Compose([
        v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio,
                             interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.RandomHorizontalFlip(spec.flip_p),
        v2.RandomApply([v2.ColorJitter(*spec.jitter)], p=spec.jitter_p),
        v2.RandomGrayscale(spec.gray_p),
        v2.RandomApply([v2.GaussianBlur(k, spec.blur_sigma)], p=spec.blur_p),
        v2.RandomSolarize(threshold=128, p=spec.solarize_p),
        v2.ToDtype(torch.float32, scale=True),
    ])


def augmentation_row(args: argparse.Namespace, config: Path) -> dict:
    device = pick_device(args.device)
    spec = augmentation_spec(args.aug_size)
    cfg = load_config(config)
    gray = training_images(cfg, args.aug_batch).float()
    images = torch.nn.functional.interpolate(gray, size=args.aug_load_size, mode="bilinear", antialias=True)
    images = images.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    zoo_aug, tv_aug = MultiViewAugment([spec]).to(device), torchvision_pipeline(spec)
    on_device = images.to(device)
    zoo, tv = [], []
    for _ in range(args.warmup + args.repeats):  # A B A B; the first `warmup` pairs are untimed
        sync(device)
        start = time.perf_counter()
        zoo_aug(on_device)
        sync(device)
        zoo.append(len(images) / (time.perf_counter() - start))
        start = time.perf_counter()
        for image in images:
            tv_aug(image)
        tv.append(len(images) / (time.perf_counter() - start))
    zoo, tv = zoo[args.warmup:], tv[args.warmup:]
    zoo_med, tv_med = statistics.median(zoo), statistics.median(tv)
    return {"what": "augmentation only", "config": "crop, flip, jitter, grayscale, blur, solarize",
            "backbone": "-", "image_size": f"{args.aug_load_size}→{args.aug_size}", "batch_size": len(images),
            "device": str(device), "precision": "float32", "optimizer": "-",
            "zoo_img_s": zoo_med, "lightly_img_s": tv_med, "ratio": zoo_med / tv_med,
            "zoo_img_s_runs": zoo, "lightly_img_s_runs": tv}


def table(rows: list[dict]) -> str:
    header = ["what", "backbone", "image size", "batch", "device", "optimiser", "zoo img/s",
              "lightly / torchvision img/s", "zoo / lightly"]
    cells = [[r["what"], f"failed: {r['error'][:80]}", "", "", "", "", "", "", ""] if "error" in r else
             [r["what"], r["backbone"], r["image_size"], r["batch_size"], f"{r['device']} {r['precision']}",
              r["optimizer"], f"{r['zoo_img_s']:.1f}", f"{r['lightly_img_s']:.1f}", f"{r['ratio']:.2f}"]
             for r in rows]
    return markdown_table(header, cells, right=(3, 6, 7, 8))


def default_workers() -> int:
    import os

    return max(1, min(8, (os.cpu_count() or 2) // 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (and augmentation rounds) first, >= 1")
    parser.add_argument("--repeats", type=int, default=3, help="A B pairs per method")
    parser.add_argument("--batch-size", type=int, default=0, help="override train.batch_size (0: the config's)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="DataLoader workers of the lightly side (default: half the CPUs, 1..8)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"],
                        help="both sides (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--aug-batch", type=int, default=64, help="images in the augmentation-only batch (0: skip)")
    parser.add_argument("--aug-load-size", type=int, default=256)
    parser.add_argument("--aug-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra zoo config overrides")
    parser.add_argument("--output", type=Path, default=RESULTS / "vs_lightly.json")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.repeats < 1:
        parser.error("--steps, --warmup and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = discover()
    meta = {**provenance(), "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
            "workers": args.workers}
    rows = []
    with tempfile.TemporaryDirectory(prefix="ssl_zoo_vs_lightly_") as tmp:
        for name in args.methods:
            try:
                rows.append(compare_method(name, configs[name], args, tmp))
            except Exception as e:  # one broken side must not hide the other methods' numbers
                log(f"[{name}] FAILED: {type(e).__name__}: {e}")
                rows.append({"what": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
    if args.aug_batch:
        log("[augmentation] ...")
        rows.append(augmentation_row(args, configs["simclrv2"]))
    written = write_json(args.output, {**meta, "results": rows})
    print(describe(meta))
    print(f"{args.steps} timed steps after {args.warmup} warm-up, {args.repeats} interleaved repeats (zoo, lightly); "
          "img/s = batch / median step time, median over repeats, source images (not views)")
    print(f"lightly side: per-sample lightly.transforms in {args.workers} DataLoader worker(s); "
          "augmentation row: one batch through kornia on the device vs torchvision.transforms.v2 per sample "
          "in one process")
    print(f"json: {written}\n")
    print(table(rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
