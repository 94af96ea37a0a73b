"""Convert officially released checkpoints into the zoo's (timm) backbones, for the hub.

Each format knows its container (which top-level key, which prefixes; see
../shared/official-layouts/README.md) and the key differences to the matching timm architecture.
The result is a timm model loaded with strict=True: a converter that misses a key fails loudly.
Files are read with `torch.load(weights_only=True)` (argparse.Namespace, which training
checkpoints keep their `args` in, is the one extra type allowed) or as safetensors.
"""

from __future__ import annotations

import argparse
import pickle
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import timm
import torch
from torch import nn

from ssl_zoo.backbones import BackboneSpec, rebuild_backbone
from ssl_zoo.hub.index import HubError

VIT_SIZES = {(384, 12): "small", (768, 12): "base", (1024, 24): "large", (1280, 32): "huge", (1536, 40): "giant"}


@dataclass
class Converted:
    """A timm model holding the official weights, and where they came from."""

    model: nn.Module
    architecture: str
    model_args: dict
    method: str
    stem: str = "imagenet"  # BackboneSpec.stem: a change timm cannot express ('imagenet': none)
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # input mean/std per band; None: ImageNet's


def read_official(path: Path) -> dict:
    """The file's top-level mapping, read without unpickling arbitrary objects."""
    if not path.is_file():
        raise HubError(f"no such checkpoint file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise HubError(f"{path} is not a checkpoint that loads with weights_only=True (tensors, containers, "
                       f"argparse.Namespace): {str(e).splitlines()[0]}") from e
    if not isinstance(obj, dict):
        raise HubError(f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint mapping")
    return obj


def strip(state: dict, prefix: str) -> dict:
    """The entries under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def tensors(obj: object, where: str, fmt: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise HubError(f"--format {fmt}: expected a state dict at {where}, found {type(obj).__name__}")
    return obj


def vit_name(state: dict, fmt: str, suffix: str = "") -> tuple[str, int]:
    """timm ViT name from the weights' shapes: width, depth, patch size, grid (e.g. vit_small_patch16_224)."""
    if "patch_embed.proj.weight" not in state:
        raise HubError(f"--format {fmt}: no patch_embed.proj.weight; not a ViT checkpoint of this format "
                       f"(first keys: {', '.join(list(state)[:5])})")
    width = state["patch_embed.proj.weight"].shape[0]
    patch = state["patch_embed.proj.weight"].shape[-1]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    size = VIT_SIZES.get((width, depth))
    if size is None:
        raise HubError(f"--format {fmt}: a ViT of width {width} and depth {depth} has no timm counterpart here; "
                       f"known: {', '.join(f'{w}x{d}' for w, d in VIT_SIZES)}")
    return f"vit_{size}_patch{patch}{suffix}", patch


def timm_vit(state: dict, fmt: str, method: str, **model_args) -> Converted:
    """A timm ViT named by its shapes, at the image size its position table was trained for."""
    name, patch = vit_name(state, fmt)
    tokens = state["pos_embed"].shape[1] - (1 if "cls_token" in state else 0)
    side = int(round(tokens ** 0.5)) * patch
    architecture = f"{name}_{side}"
    if architecture not in timm.list_models():
        architecture, model_args = f"{name}_224", {**model_args, "img_size": side}
    return load_strict(architecture, model_args, state, fmt, method)


def load_strict(architecture: str, model_args: dict, state: dict, fmt: str, method: str,
                stem: str = "imagenet") -> Converted:
    model = rebuild_backbone(BackboneSpec(architecture, model_args, stem))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise HubError(f"--format {fmt}: the weights do not fit timm's {architecture} {model_args}: "
                       f"{str(e).splitlines()[0]} ...") from e
    return Converted(model.eval(), architecture, model_args, method, stem)


# ----------------------------------------------------------------------------- formats


def convert_dino(ckpt: dict, key: str) -> Converted:
    """Backbone-only .pth (bare state dict, teacher weights) or a full checkpoint's `teacher`/`student`
    (`module.`/`backbone.` prefixes, head dropped). ViTs and the ResNet-50."""
    state = ckpt[key] if key in ckpt else ckpt
    state = tensors(state, key if key in ckpt else "the top level", "dino")
    state = {re.sub(r"^(module\.)?(backbone\.)?", "", k): v for k, v in state.items() if ".head." not in f".{k}"}
    if "conv1.weight" in state:  # dino_resnet50_pretrain: torchvision names = timm's
        return load_strict("resnet50", {}, {k: v for k, v in state.items() if not k.startswith("fc.")}, "dino", "dino")
    return timm_vit(state, "dino", "dino")


def convert_mae(ckpt: dict, key: str) -> Converted:
    """{'model': ...}: the encoder only (decoder, mask token dropped); the global-pool fine-tune layout
    (fc_norm instead of norm) becomes timm's global_pool='avg'."""
    state = tensors(ckpt.get("model", ckpt), "'model'", "mae")
    state = {k: v for k, v in state.items() if not k.startswith(("decoder_", "mask_token", "head."))}
    args = {"global_pool": "avg"} if "fc_norm.weight" in state else {}
    return timm_vit(state, "mae", "mae", **args)


def convert_dinov2(ckpt: dict, key: str) -> Converted:
    """Hub .pth (bare) or a training dump's `teacher` (`backbone.` prefix): drop mask_token; with
    registers, register_tokens -> reg_token and the CLS position folded into cls_token (timm keeps no
    position for prefix tokens)."""
    state = ckpt.get("teacher", ckpt)
    state = tensors(state, "the top level", "dinov2")
    state = {re.sub(r"^backbone\.", "", k): v for k, v in state.items() if not k.startswith(("dino_head", "ibot_head"))}
    state = {k: v for k, v in state.items() if k != "mask_token"}
    if any(re.match(r"blocks\.\d+\.\d+\.", k) for k in state):
        raise HubError("--format dinov2: chunked blocks (block_chunks > 0, blocks.<chunk>.<i>.); "
                       "save the model with block_chunks=0")
    regs = state.pop("register_tokens", None)
    name, patch = vit_name(state, "dinov2", "_dinov2" if regs is None else f"_reg{regs.shape[1]}_dinov2")
    side = int(round((state["pos_embed"].shape[1] - 1) ** 0.5)) * patch
    if regs is not None:
        pos = state["pos_embed"]
        state.update(reg_token=regs, cls_token=state["cls_token"] + pos[:, :1], pos_embed=pos[:, 1:])
    return load_strict(name, {"img_size": side}, state, "dinov2", "dinov2")


def convert_sit(ckpt: dict, key: str) -> Converted:
    """{'student', 'teacher', ...} DDP checkpoints: `module.backbone.*` of the chosen network."""
    if key not in ckpt:
        raise HubError(f"--format sit: no '{key}' in the checkpoint (keys: {', '.join(map(str, ckpt))})")
    state = strip(tensors(ckpt[key], key, "sit"), "module.backbone.") or strip(ckpt[key], "backbone.")
    return timm_vit(state, "sit", "sit")


def convert_gmml(ckpt: dict, key: str) -> Converted:
    """{'SiT_model': DDP state dict}: `module.backbone.*`; the reconstruction head dropped."""
    if "SiT_model" not in ckpt:
        raise HubError(f"--format gmml: no 'SiT_model' in the checkpoint (keys: {', '.join(map(str, ckpt))})")
    state = strip(tensors(ckpt["SiT_model"], "'SiT_model'", "gmml"), "module.backbone.")
    return timm_vit(state, "gmml", "gmml")


def convert_pixpro(ckpt: dict, key: str) -> Converted:
    """{'model': DDP state dict}: `module.encoder.*` is timm's resnet50; momentum encoder and heads dropped."""
    state = tensors(ckpt.get("model", ckpt), "'model'", "pixpro")
    encoder = strip(state, "module.encoder.") or strip(state, "encoder.")
    if not encoder:
        raise HubError("--format pixpro: no module.encoder.* weights (the PixPro checkpoint's online ResNet)")
    return load_strict("resnet50", {}, encoder, "pixpro", "pixpro")


def rope_pairs_to_timm(qkv_weight: torch.Tensor, qkv_bias: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """CroCo's RoPE2D orders each head's q/k channels [y first half, y second half, x first half,
    x second half]; timm's rotate-half axial RoPE wants [y first, x first, y second, x second]: swap
    the middle two quarters of every q and k head (v untouched)."""
    dim = qkv_weight.shape[1]
    head_dim = dim // heads
    quarter = head_dim // 4
    order = torch.cat([torch.arange(q * quarter, (q + 1) * quarter) for q in (0, 2, 1, 3)])
    per_head = torch.cat([h * head_dim + order for h in range(heads)])
    rows = torch.cat([per_head, dim + per_head, torch.arange(2 * dim, 3 * dim)])  # q, k permuted; v as is
    return qkv_weight[rows], qkv_bias[rows]


def convert_croco(ckpt: dict, key: str) -> Converted:
    """{'model': ..., 'croco_kwargs': ...}: the encoder (`enc_blocks.` -> `blocks.`, `enc_norm.` -> `norm.`,
    decoder dropped) as the zoo's CroCo encoder: v2 (RoPE, no position table) -> timm's RoPE ViT with q/k
    channels reordered; v1 (`enc_pos_embed`) -> a no-CLS timm ViT with that fixed sin-cos table."""
    from ssl_zoo.backbones.croco import encoder_args

    state = tensors(ckpt.get("model", ckpt), "'model'", "croco")
    if not any(k.startswith("enc_blocks.") for k in state):
        raise HubError("--format croco: no enc_blocks.* weights (CroCo's encoder)")
    enc = {re.sub(r"^enc_blocks\.", "blocks.", k).replace("enc_norm.", "norm."): v for k, v in state.items()
           if k.startswith(("enc_blocks.", "enc_norm.", "patch_embed."))}
    name, _ = vit_name(enc, "croco")
    if "enc_pos_embed" in state:  # v1
        enc["pos_embed"] = state["enc_pos_embed"][None]
        return load_strict(f"{name}_224", encoder_args("cosine"), enc, "croco", "croco")
    kwargs = ckpt.get("croco_kwargs", {}) if isinstance(ckpt.get("croco_kwargs"), dict) else {}
    base = float(re.sub(r"^RoPE", "", str(kwargs.get("pos_embed", "RoPE100"))) or 100)
    heads = int(kwargs.get("enc_num_heads", 12))
    for i in {k.split(".")[1] for k in enc if k.startswith("blocks.")}:
        w, b = f"blocks.{i}.attn.qkv.weight", f"blocks.{i}.attn.qkv.bias"
        enc[w], enc[b] = rope_pairs_to_timm(enc[w], enc[b], heads)
    return load_strict(f"{name}_rope_224", encoder_args("rope", base), enc, "croco", "croco", "no_layer_scale")


def satmae_groups(ckpt: dict, sizes: list[int]) -> list[list[int]]:
    """Band groups of a group-channel checkpoint: its training args' `grouped_bands` when saved, else the
    Sentinel-2 default of the released model, which the patch embeddings' band counts must fit."""
    from ssl_zoo.backbones.satmae import SENTINEL_GROUPS

    saved = getattr(ckpt.get("args"), "grouped_bands", None)
    groups = [list(g) for g in (saved or SENTINEL_GROUPS)]
    if [len(g) for g in groups] != sizes:
        raise HubError(f"--format satmae_pp: the patch embeddings take {sizes} bands per group, which the "
                       f"{'saved' if saved else 'Sentinel-2 default'} band groups {groups} do not fit")
    return groups


def convert_satmae_pp(ckpt: dict, key: str) -> Converted:
    """{'model': ...} pretraining checkpoints, decoder, mask token and multi-scale head dropped. Sentinel
    (group channels: `patch_embed.<g>.proj`, pos (D-256) || group (256) tables) -> the zoo's group-channel
    ViT, whose names are the official ones; RGB -> timm's plain ViT (as MAE)."""
    from ssl_zoo.augment import NORMALIZATIONS

    state = tensors(ckpt.get("model", ckpt), "'model'", "satmae_pp")
    state = {k: v for k, v in state.items() if not k.startswith(("decoder_", "mask_token", "proj_up_", "up_block"))}
    if "patch_embed.proj.weight" in state:
        return replace(timm_vit(state, "satmae_pp", "satmae_pp"), stats=NORMALIZATIONS["fmow_rgb"])
    if "patch_embed.0.proj.weight" not in state:
        raise HubError("--format satmae_pp: neither a group-channel encoder (patch_embed.<g>.proj) nor a plain "
                       f"ViT (patch_embed.proj); first keys: {', '.join(list(state)[:5])}")
    if "fc_norm.weight" in state:
        raise HubError("--format satmae_pp: a fine-tuned group-channel classifier (fc_norm, channel_cls_embed, "
                       "head); import the pretraining checkpoint")
    embeds = sorted(int(k.split(".")[1]) for k in state if re.fullmatch(r"patch_embed\.\d+\.proj\.weight", k))
    weight = state["patch_embed.0.proj.weight"]
    width, patch = weight.shape[0], weight.shape[-1]
    sizes = {384: "small", 768: "base", 1024: "large"}  # 64-wide heads in each
    if width not in sizes:
        raise HubError(f"--format satmae_pp: no group-channel ViT of width {width}; known: {sorted(sizes)}")
    groups = satmae_groups(ckpt, [state[f"patch_embed.{g}.proj.weight"].shape[1] for g in embeds])
    side = int(round((state["pos_embed"].shape[1] - 1) ** 0.5)) * patch
    args = {"groups": groups, "img_size": side, "patch_size": patch, "group_embed_dim": state["channel_embed"].shape[-1],
            "depth": len({k.split(".")[1] for k in state if k.startswith("blocks.")})}
    bands = sum(len(g) for g in groups)  # the zoo's loader scales each band to [0, 1] (mean -+ 2 std) itself
    return replace(load_strict(f"satmae_group_vit_{sizes[width]}_p8", args, state, "satmae_pp", "satmae_pp"),
                   stats=((0.0,) * bands, (1.0,) * bands))


FORMATS: dict[str, Callable[[dict, str], Converted]] = {
    "dino": convert_dino, "mae": convert_mae, "dinov2": convert_dinov2, "sit": convert_sit,
    "gmml": convert_gmml, "pixpro": convert_pixpro, "croco": convert_croco, "satmae_pp": convert_satmae_pp,
}


def convert_official(path: Path, fmt: str, key: str = "teacher") -> Converted:
    """Read `path` and convert it as `fmt`; `key` picks the network of multi-network checkpoints."""
    if fmt not in FORMATS:
        raise HubError(f"--format {fmt!r}: unknown; valid formats: {', '.join(FORMATS)}")
    return FORMATS[fmt](read_official(Path(path)), key)


def official_config(converted: Converted, path: Path, fmt: str, key: str, url: str | None = None) -> dict:
    """config.json for a converted release: timm's layout, the input statistics it was trained with
    (ImageNet's, except SatMAE++), provenance of the original file."""
    import datetime

    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from ssl_zoo.hub.download import sha256_file

    model = converted.model
    embed = getattr(model, "patch_embed", None)
    embed = embed[0] if isinstance(embed, nn.ModuleList) else embed  # group-channel ViTs: one per band group
    side = embed.img_size[0] if embed is not None else 224
    mean, std = converted.stats or (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    timm_cfg = getattr(model, "pretrained_cfg", {}) or {}
    return {
        "architecture": converted.architecture, "num_classes": 0, "num_features": int(model.num_features),
        "model_args": converted.model_args,
        "pretrained_cfg": {
            "input_size": [len(mean), side, side], "interpolation": "bicubic", "crop_pct": timm_cfg.get("crop_pct", 0.875),
            "crop_mode": "center", "mean": list(mean), "std": list(std),
            "num_classes": 0, "first_conv": timm_cfg.get("first_conv"), "classifier": timm_cfg.get("classifier"),
            "fixed_input_size": bool(timm_cfg.get("fixed_input_size")),
        },
        "ssl_zoo": {
            "format": 1, "method": converted.method, "dataset": "official release", "steps": 0,
            "stem": converted.stem, "metrics": {},
            "timm_compatible": BackboneSpec(converted.architecture, converted.model_args, converted.stem).timm_compatible,
            "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "official": {"file": path.name, "format": fmt, "key": key, "file_sha256": sha256_file(path),
                         **({"url": url} if url else {})},
        },
    }


def import_official(path: Path, fmt: str, name: str, hub_dir: Path, key: str = "teacher",
                    overwrite: bool = False, url: str | None = None) -> Path:
    """Convert an official checkpoint and add it to the hub folder as NAME (see `ssl-zoo hub import-official`)."""
    from ssl_zoo.hub.export import write_hub_model
    from ssl_zoo.hub.index import check_name

    check_name(name)
    converted = convert_official(Path(path), fmt, key)
    return write_hub_model(Path(hub_dir), name, converted.model, official_config(converted, Path(path), fmt, key, url),
                           overwrite)
