"""Official checkpoints -> hub: state dicts with exactly the released names and shapes
(../shared/official-layouts/*.tsv, random values) in the official containers, converted, loaded
back from the hub, and compared with timm models built from the same weights."""

import argparse
import json
import re
from pathlib import Path

import pytest
import timm
import torch

from ssl_zoo.cli import build_parser
from ssl_zoo.cli import main as cli_main
from ssl_zoo.hub import HubError, load
from ssl_zoo.hub.official import FORMATS, convert_official, import_official

LAYOUTS = Path(__file__).resolve().parents[2] / "shared" / "official-layouts"
if not LAYOUTS.is_dir():
    LAYOUTS = Path("/work/shared/official-layouts")


def layout(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every entry of an official state dict, random values of the listed shapes."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for line in (LAYOUTS / f"{name}.tsv").read_text().splitlines():
        key, shape = line.split("\t")
        dims = tuple(int(d) for d in re.findall(r"\d+", shape))
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.rand(dims, generator=gen) + 0.5
        elif len(dims) == 1 and key.endswith(("weight", "gamma")):  # norm and layer scales: around 1
            state[key] = 1.0 + torch.randn(dims, generator=gen) * 0.02
        else:
            state[key] = torch.randn(dims, generator=gen) * 0.02
    return state


def save(tmp_path: Path, obj: object, name: str = "official.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def same_function(model: torch.nn.Module, reference: torch.nn.Module, side: int) -> None:
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), reference.eval()(x), atol=1e-5)


def timm_with(architecture: str, state: dict, **model_args) -> torch.nn.Module:
    model = timm.create_model(architecture, num_classes=0, **model_args)
    model.load_state_dict(state, strict=True)
    return model


def test_dino_backbone_and_full_checkpoint_teacher(tmp_path):
    backbone = layout("dino_vit_small_p16_backbone")
    converted = convert_official(save(tmp_path, backbone), "dino")
    assert converted.architecture == "vit_small_patch16_224"
    reference = timm_with("vit_small_patch16_224", backbone)
    same_function(converted.model, reference, 224)

    teacher, student = layout("dino_vit_small_p16_full_checkpoint_teacher", 1), \
        layout("dino_vit_small_p16_full_checkpoint_student", 2)
    full = {"teacher": teacher, "student": student, "epoch": 100, "optimizer": {},
            "args": argparse.Namespace(arch="vit_small", lr=0.0005)}  # training checkpoints keep their args
    path = save(tmp_path, full, "full.pth")
    folder = import_official(path, "dino", "dino-s16", tmp_path / "hub")
    loaded = load("dino-s16", hub=tmp_path / "hub")
    strip = {k.removeprefix("backbone."): v for k, v in teacher.items() if not k.startswith("head.")}
    same_function(loaded, timm_with("vit_small_patch16_224", strip), 224)
    meta = json.loads((folder / "config.json").read_text())["ssl_zoo"]
    assert meta["official"]["format"] == "dino" and meta["official"]["key"] == "teacher"
    student_model = convert_official(path, "dino", key="student").model
    assert not torch.equal(student_model.cls_token, loaded.cls_token)  # the key picks the network
    assert "official **dino** release `full.pth`" in (folder / "README.md").read_text()


def test_mae_encoder_from_the_full_pretrain_checkpoint_and_the_global_pool_finetune(tmp_path):
    full = layout("mae_vit_base_patch16_pretrain_full")
    converted = convert_official(save(tmp_path, {"model": full}), "mae")
    encoder = {k: v for k, v in full.items() if not k.startswith(("decoder_", "mask_token"))}
    same_function(converted.model, timm_with("vit_base_patch16_224", encoder), 224)
    assert set(converted.model.state_dict()) == set(layout("mae_vit_base_patch16_encoder_only"))

    finetuned = layout("mae_finetune_vit_base_patch16_globalpool")
    converted = convert_official(save(tmp_path, {"model": finetuned}, "ft.pth"), "mae")
    assert converted.model_args == {"global_pool": "avg"}
    body = {k: v for k, v in finetuned.items() if not k.startswith("head.")}
    same_function(converted.model, timm_with("vit_base_patch16_224", body, global_pool="avg"), 224)


@pytest.mark.parametrize("name,architecture", [("dinov2_vitb14_hub", "vit_base_patch14_dinov2"),
                                               ("dinov2_vitb14_reg4_hub", "vit_base_patch14_reg4_dinov2")])
def test_dinov2_registers_and_position_folding_match_timms_own_loader(tmp_path, name, architecture):
    official = layout(name)
    converted = convert_official(save(tmp_path, official), "dinov2")
    assert converted.architecture == architecture and converted.model_args == {"img_size": 518}
    # timm's loader applies its own DINOv2 conversion (checkpoint_filter_fn) to the official dict
    reference = timm.create_model(architecture, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay=dict(state_dict=official))
    same_function(converted.model, reference, 518)


def test_sit_gmml_and_pixpro_containers(tmp_path):
    sit = layout("sit_vit_small_checkpoint_student_teacher")
    converted = convert_official(save(tmp_path, {"student": sit, "teacher": sit, "epoch": 1}, "sit.pth"), "sit")
    backbone = {k.removeprefix("module.backbone."): v for k, v in sit.items() if k.startswith("module.backbone.")}
    same_function(converted.model, timm_with("vit_small_patch16_224", backbone), 224)

    gmml = layout("gmml_vit_small_checkpoint_SiT_model")
    converted = convert_official(save(tmp_path, {"SiT_model": gmml}, "gmml.pth"), "gmml")
    backbone = {k.removeprefix("module.backbone."): v for k, v in gmml.items() if k.startswith("module.backbone.")}
    same_function(converted.model, timm_with("vit_small_patch16_224", backbone), 224)

    pixpro = layout("pixpro_r50_checkpoint_model")
    converted = convert_official(save(tmp_path, {"model": pixpro}, "pixpro.pth"), "pixpro")
    encoder = {k.removeprefix("module.encoder."): v for k, v in pixpro.items() if k.startswith("module.encoder.")}
    assert converted.architecture == "resnet50"
    same_function(converted.model, timm_with("resnet50", encoder), 64)


def test_croco_v2_rope_encoder_matches_timms_eva_with_the_documented_qk_order(tmp_path):
    from functools import partial

    from timm.models.eva import Eva

    from ssl_zoo.backbones.croco import build_croco_encoder
    from ssl_zoo.config import ModelConfig

    official = layout("crocov2_vitb_basedec_rope100")
    for key in [k for k in official if k.endswith("attn.qkv.weight")]:
        official[key] = official[key] * 5  # attention logits of order 1: RoPE's channel order must matter
    kwargs = {"enc_embed_dim": 768, "enc_depth": 12, "enc_num_heads": 12, "dec_embed_dim": 768, "dec_depth": 12,
              "dec_num_heads": 12, "pos_embed": "RoPE100"}
    converted = convert_official(save(tmp_path, {"model": official, "croco_kwargs": kwargs}), "croco")
    expected_keys = [line.split("\t")[0] for line in
                     (LAYOUTS / "timm_eva_croco_encoder_equivalent.tsv").read_text().splitlines()]
    assert sorted(converted.model.state_dict()) == sorted(expected_keys)
    # the reference: timm's Eva as ../shared/official-layouts/README.md specifies it, holding the official
    # encoder weights renamed and, inside every head, q/k channels 16-31 swapped with 32-47
    encoder = {k.replace("enc_blocks.", "blocks.").replace("enc_norm.", "norm."): v for k, v in official.items()
               if k.startswith(("enc_blocks.", "enc_norm.", "patch_embed."))}
    swap = torch.arange(768 * 3)
    for head in range(24):  # 12 q heads, then 12 k heads
        base = head * 64
        swap[base + 16:base + 32], swap[base + 32:base + 48] = torch.arange(base + 32, base + 48), \
            torch.arange(base + 16, base + 32)
    for key in [k for k in encoder if k.endswith("attn.qkv.weight") or k.endswith("attn.qkv.bias")]:
        encoder[key] = encoder[key][swap]
    reference = Eva(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=0,
                    attn_type="rope", qkv_bias=True, class_token=False, global_pool="avg",
                    use_abs_pos_emb=False, use_rot_pos_emb=True,
                    rope_temperature=100, rope_rotate_half=True, rope_grid_indexing="ij", init_values=None,
                    use_fc_norm=False, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    reference.load_state_dict(encoder, strict=True)
    same_function(converted.model, reference, 224)
    # ... and it is the encoder the zoo's CroCo trains (the same timm model and arguments)
    zoo = build_croco_encoder(ModelConfig(backbone="vit_base_patch16_rope_224"), "rope")
    zoo.load_state_dict(converted.model.state_dict(), strict=True)
    same_function(zoo, reference, 224)
    unpermuted = {k.replace("enc_blocks.", "blocks.").replace("enc_norm.", "norm."): v for k, v in official.items()
                  if k.startswith(("enc_blocks.", "enc_norm.", "patch_embed."))}
    reference.load_state_dict(unpermuted, strict=True)  # the keys load, but the function differs
    with pytest.raises(AssertionError):
        same_function(converted.model, reference, 224)


def first_blocks(state: dict, keep: int) -> dict:
    """The state with encoder blocks >= keep removed (a ViT-L's 24 blocks are slow to test; shapes unchanged)."""
    return {k: v for k, v in state.items() if not (k.startswith("blocks.") and int(k.split(".")[1]) >= keep)}


def test_satmae_pp_group_channel_encoder_matches_the_official_token_layout(tmp_path):
    """Reference: the official forward written out (per-group conv patch embed, [pos[1:] || group] added to
    every (group, location) token, CLS without position, blocks, norm, CLS feature)."""
    from functools import partial

    from timm.models.vision_transformer import Block

    official = first_blocks(layout("satmaepp_groupc_vitl_p8_96_sentinel_pretrain"), keep=2)
    groups = [[0, 1, 2, 6], [3, 4, 5, 7], [8, 9]]
    ckpt = {"model": official, "epoch": 49, "args": argparse.Namespace(grouped_bands=groups, input_size=96)}
    folder = import_official(save(tmp_path, ckpt), "satmae_pp", "satmae-l", tmp_path / "hub")
    model = load("satmae-l", hub=tmp_path / "hub")
    assert type(model).__name__ == "GroupChannelViT" and model.groups == groups and len(model.blocks) == 2
    config = json.loads((folder / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [10, 96, 96] and not config["ssl_zoo"]["timm_compatible"]

    x = torch.randn(2, 10, 96, 96, generator=torch.Generator().manual_seed(3))
    tokens = []
    for g, bands in enumerate(groups):
        w, b = official[f"patch_embed.{g}.proj.weight"], official[f"patch_embed.{g}.proj.bias"]
        patches = torch.nn.functional.conv2d(x[:, bands], w, b, stride=8).flatten(2).transpose(1, 2)  # (B, 144, D)
        code = torch.cat([official["pos_embed"][:, 1:], official["channel_embed"][:, g:g + 1].expand(-1, 144, -1)], -1)
        tokens.append(patches + code)
    h = torch.cat([official["cls_token"].expand(2, -1, -1), *tokens], 1)
    assert h.shape[1] == 3 * 144 + 1
    for i in range(2):
        block = Block(1024, 16, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
        block.load_state_dict({k[len(f"blocks.{i}."):]: v for k, v in official.items() if k.startswith(f"blocks.{i}.")})
        h = block(h)
    reference = torch.nn.functional.layer_norm(h, (1024,), official["norm.weight"], official["norm.bias"], 1e-6)[:, 0]
    with torch.no_grad():
        assert torch.allclose(model(x), reference, atol=1e-4)

    # without saved args the released Sentinel grouping is assumed, and must fit the patch embeddings
    assert convert_official(save(tmp_path, {"model": official}, "bare.pth"), "satmae_pp").model.groups == groups
    two_groups = {k: v for k, v in official.items() if not k.startswith("patch_embed.2.")}
    with pytest.raises(HubError, match=r"take \[4, 4\] bands per group.*Sentinel-2 default"):
        convert_official(save(tmp_path, {"model": two_groups}, "two.pth"), "satmae_pp")
    finetuned = first_blocks(layout("satmaepp_groupc_vitl_p8_96_finetune"), keep=1)
    with pytest.raises(HubError, match="fine-tuned group-channel classifier"):
        convert_official(save(tmp_path, {"model": finetuned}, "ft.pth"), "satmae_pp")


def test_satmae_pp_rgb_variant_is_a_plain_timm_vit_without_the_upsampling_head(tmp_path):
    rgb_head = {k: v for k, v in layout("satmaepp_vanilla_vitl_p16_224_rgb_pretrain").items()
                if k.startswith(("proj_up_", "up_block."))}
    encoder = layout("mae_vit_base_patch16_encoder_only")  # a ViT-B stands in for the ViT-L: same key pattern
    converted = convert_official(save(tmp_path, {"model": {**encoder, **rgb_head}}), "satmae_pp")
    assert converted.architecture == "vit_base_patch16_224" and converted.method == "satmae_pp"
    same_function(converted.model, timm_with("vit_base_patch16_224", encoder), 224)
    assert converted.stats[0] == pytest.approx((0.4182, 0.4215, 0.3991))  # fMoW-RGB statistics


def test_wrong_format_foreign_file_and_pickles_are_clear_errors(tmp_path):
    dino = save(tmp_path, layout("dino_vit_small_p16_backbone"))
    with pytest.raises(HubError, match="--format pixpro: no module.encoder"):
        convert_official(dino, "pixpro")
    with pytest.raises(HubError, match="--format gmml: no 'SiT_model'"):
        convert_official(dino, "gmml")
    with pytest.raises(HubError, match="unknown; valid formats: dino, mae, dinov2, sit, gmml, pixpro, croco, satmae_pp"):
        convert_official(dino, "simclr")
    pixpro = save(tmp_path, {"model": layout("pixpro_r50_checkpoint_model")}, "pixpro.pth")
    with pytest.raises(HubError, match="--format mae: no patch_embed.proj.weight"):
        convert_official(pixpro, "mae")
    with pytest.raises(HubError, match="--format satmae_pp: neither a group-channel encoder"):
        convert_official(pixpro, "satmae_pp")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(HubError, match="weights_only=True"):
        convert_official(tmp_path / "text.pth", "dino")

    class Payload:  # an arbitrary object: must never be unpickled
        def __reduce__(self):
            return (print, ("unpickled!",))

    with pytest.raises(HubError, match="weights_only=True"):
        convert_official(save(tmp_path, {"model": Payload()}, "evil.pth"), "mae")
    with pytest.raises(HubError, match="no such checkpoint file"):
        convert_official(tmp_path / "missing.pth", "dino")


def test_import_official_cli_lists_every_format(tmp_path, capsys):
    path = save(tmp_path, {"model": layout("pixpro_r50_checkpoint_model")}, "pixpro.pth")
    assert cli_main(["hub", "import-official", str(path), "--format", "pixpro", "--name", "pixpro-r50",
                     "--hub", str(tmp_path / "hub")]) == 0
    assert "imported" in capsys.readouterr().out
    assert cli_main(["hub", "list", "--hub", str(tmp_path / "hub")]) == 0
    assert "pixpro-r50  resnet50      pixpro" in capsys.readouterr().out
    assert cli_main(["hub", "import-official", str(path), "--format", "pixpro", "--name", "pixpro-r50",
                     "--hub", str(tmp_path / "hub")]) == 2  # exists: not overwritten
    assert "already exists" in capsys.readouterr().err
    help_text = build_parser()._subparsers._group_actions[0].choices["hub"]._subparsers._group_actions[0] \
        .choices["import-official"].format_help()
    assert all(fmt in help_text for fmt in FORMATS)


def first_loss(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]


def test_init_from_continues_pretraining_from_a_hub_model(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from ssl_zoo.config import ConfigError
    from ssl_zoo.experiment import load_config
    from ssl_zoo.hub.export import export
    from ssl_zoo.trainer import Trainer
    from tests.conftest import tiny_config

    source = Trainer(load_config(tiny_config("mae", tmp_path / "src", train={"max_steps": 3})),
                     progress_bar=False).fit().run_dir
    export(source, "mae-tiny", tmp_path / "hub")
    weights = load_file(str(tmp_path / "hub/mae-tiny/model.safetensors"))

    def run(name: str, by_hand: bool = False, **model) -> Path:
        cfg = load_config(tiny_config("mae", tmp_path / name, train={"max_steps": 1}, model=model))
        trainer = Trainer(cfg, progress_bar=False)
        if by_hand:
            trainer.method.backbone().load_state_dict(weights, strict=True)
        return trainer.fit().run_dir

    monkeypatch.setenv("SSL_ZOO_HUB", str(tmp_path / "hub"))
    initialised = first_loss(run("init", init_from="mae-tiny"))
    assert initialised != first_loss(run("random"))
    assert initialised == first_loss(run("by_hand", by_hand=True))

    # methods with EMA teachers start both networks from the weights
    from ssl_zoo.methods.base import build_method

    dino_run = Trainer(load_config(tiny_config("dino", tmp_path / "dino", train={"max_steps": 1})),
                       progress_bar=False).fit().run_dir
    export(dino_run, "dino-tiny", tmp_path / "hub")
    method = build_method(load_config(tiny_config("dino", tmp_path / "d2")))
    dino_weights = load_file(str(tmp_path / "hub/dino-tiny/model.safetensors"))
    assert method.init_backbone(dino_weights) == 2
    for key, value in dino_weights.items():
        assert torch.equal(method.student.backbone.state_dict()[key], value)
        assert torch.equal(method.teacher.backbone.state_dict()[key], value)

    with pytest.raises(ConfigError, match="model.init_from=no-such-model"):
        run("missing", init_from="no-such-model")
    with pytest.raises(ConfigError, match="model.init_from=dino-tiny"):  # a ViT-tiny/7 into a ViT-tiny/4
        run("mismatch", init_from="dino-tiny")
