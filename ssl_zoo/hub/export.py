"""Export a run's evaluated backbone into a hub folder: safetensors weights, timm config, model card."""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ssl_zoo.augment import NORMALIZATIONS
from ssl_zoo.backbones import spec_of
from ssl_zoo.config import to_dict
from ssl_zoo.run_dir import EVAL_DIR, TrainedRun, load_method, run_dir_of
from ssl_zoo.hub.card import model_card
from ssl_zoo.hub.download import sha256_file
from ssl_zoo.hub.index import HubError, check_name, read_local_index, write_local_index
from ssl_zoo.hub.source import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE
from ssl_zoo.metrics import read_metrics


def run_metrics(checkpoint: Path, run_step: int) -> dict:
    """The newest k-NN result logged at or before the checkpoint's step (metrics.jsonl), and the
    linear probe, fine-tuning and distillation results of that step (eval/*.json from `ssl-zoo eval
    linear`, `ssl-zoo finetune`, `ssl-zoo distill`; from-scratch baselines left out)."""
    run_dir = run_dir_of(checkpoint)
    metrics: dict = {}
    log = run_dir / "metrics.jsonl"
    if log.is_file():
        found = [r for r in read_metrics(log) if "knn_top1" in r and r.get("step", 0) <= run_step]
        if found:
            metrics.update(knn_top1=found[-1]["knn_top1"], knn_step=found[-1]["step"])
    for path in sorted((run_dir / EVAL_DIR).glob("*.json")):
        if "scratch" in path.stem or not path.stem.startswith(("linear_probe", "finetune_", "distill_")):
            continue
        result = json.loads(path.read_text())
        if result.get("step") == run_step:
            name = "linear" if path.stem == "linear_probe" else path.stem
            metrics[f"{name}_top1"] = result["test_top1"]
    return metrics


def dataset_name(run: TrainedRun) -> str:
    data = run.cfg.data
    return data.kind if data.kind != "image_folder" else f"image_folder:{Path(data.path).name}"


def timm_config(run: TrainedRun, backbone: torch.nn.Module) -> dict:
    """config.json in timm's hub layout (architecture, model_args, pretrained_cfg); provenance under 'ssl_zoo'."""
    spec = spec_of(backbone)
    channels = run.cfg.data.channels
    view = run.method.eval_view(run.cfg.data.load_size)
    side, load = view.side, run.cfg.data.load_size
    # timm's rule: resize to side / crop_pct, then centre-crop side; 1.0 resizes the whole image
    crop_pct = 1.0 if view.resize or side >= load else side / load
    stats = NORMALIZATIONS[run.method.cfg.normalize]
    mean, std = stats if stats else ((0.0,) * 3, (1.0,) * 3)
    if channels != len(mean):  # Normalize's rule: the channel average when the counts differ
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    timm_cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    return {
        "architecture": spec.architecture,
        "num_classes": 0,
        "num_features": int(backbone.num_features),
        "model_args": spec.model_args,
        "pretrained_cfg": {
            "input_size": [channels, side, side], "interpolation": "bilinear", "crop_pct": crop_pct,
            "crop_mode": "center", "mean": list(mean), "std": list(std), "num_classes": 0,
            "first_conv": timm_cfg.get("first_conv"), "classifier": timm_cfg.get("classifier"),
            "fixed_input_size": bool(timm_cfg.get("fixed_input_size")) and not spec.model_args.get("dynamic_img_size"),
        },
        "ssl_zoo": {
            "format": 1, "method": run.cfg.method.name, "dataset": dataset_name(run), "steps": run.step,
            "stem": spec.stem, "timm_compatible": spec.timm_compatible,
            "intensity_minmax": view.minmax,  # each image's own min-max before the normalisation (no timm key)
            "metrics": {**run_metrics(run.checkpoint, run.step), "knn_k": run.cfg.eval.knn_k,
                        "knn_temperature": run.cfg.eval.knn_temperature},
            "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": to_dict(run.cfg),
        },
    }


def write_hub_model(hub_dir: Path, name: str, backbone: torch.nn.Module, config: dict, overwrite: bool = False) -> Path:
    """Write HUB_DIR/NAME/{model.safetensors, config.json, README.md} and register NAME in index.json.

    Built in a staging folder and renamed in: a crash never leaves a half-written model.
    """
    check_name(name)
    hub_dir = Path(hub_dir)
    index = read_local_index(hub_dir, missing_ok=True)  # a broken index stops us before any writing
    folder = hub_dir / name
    if folder.exists() and not overwrite:
        raise HubError(f"{folder} already exists; choose another --name or pass --overwrite")
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in backbone.state_dict().items()}
    hub_dir.mkdir(parents=True, exist_ok=True)
    staging = hub_dir / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        save_file(weights, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        config["ssl_zoo"].update(sha256=sha256_file(staging / WEIGHTS_FILE),
                                 size_bytes=(staging / WEIGHTS_FILE).stat().st_size)
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (staging / CARD_FILE).write_text(model_card(name, config))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    meta = config["ssl_zoo"]
    index["models"][name] = {
        "path": name, "sha256": meta["sha256"], "size_bytes": meta["size_bytes"],
        "architecture": config["architecture"], "method": meta["method"], "dataset": meta["dataset"],
        "steps": meta["steps"],
        "metrics": {k: v for k, v in meta["metrics"].items() if k.endswith("_top1")},
    }
    write_local_index(hub_dir, index)
    return folder


def export(source: Path, name: str, hub_dir: Path, overwrite: bool = False) -> Path:
    """Export a run's evaluated backbone (`method.backbone()`) into the hub folder HUB_DIR/NAME."""
    check_name(name)
    if (Path(hub_dir) / name).exists() and not overwrite:
        raise HubError(f"{Path(hub_dir) / name} already exists; choose another --name or pass --overwrite")
    run = load_method(Path(source))
    backbone = run.method.backbone()
    return write_hub_model(Path(hub_dir), name, backbone, timm_config(run, backbone), overwrite)
