"""The model card (README.md) of an exported backbone, generated from its config.json facts."""

from __future__ import annotations


def _fmt_metric(value: object) -> str:
    return f"{value:.2f}%" if isinstance(value, (int, float)) else "not measured"


def model_card(name: str, config: dict) -> str:
    meta = config["ssl_zoo"]
    pcfg = config["pretrained_cfg"]
    knn = meta["metrics"].get("knn_top1")
    knn_note = (f" (weighted cosine k-NN, k={meta['metrics'].get('knn_k')}, T={meta['metrics'].get('knn_temperature')}, "
                f"at step {meta['metrics'].get('knn_step')})") if knn is not None else ""
    evals = "".join(f"| {key[:-len('_top1')].replace('_', ' ')} top-1 | {_fmt_metric(value)} |\n"
                    for key, value in sorted(meta["metrics"].items()) if key.endswith("_top1") and key != "knn_top1")
    if meta["timm_compatible"]:
        timm_use = (f'model = timm.create_model("{config["architecture"]}", pretrained=True, num_classes=0,\n'
                    f'                          pretrained_cfg_overlay=dict(file="{name}/model.safetensors"),\n'
                    f'                          **{config.get("model_args", {})!r})')
    else:
        timm_use = (f"# {config['architecture']} (stem={meta['stem']}) is not a plain timm architecture; use "
                    "ssl_zoo.hub.load, which rebuilds it\n"
                    "# (timm key names, so the weights still read with a plain state_dict load)")
    official = meta.get("official")
    origin = (f"the official **{meta['method']}** release `{official.get('url', official['file'])}` "
              f"(sha256 `{official['file_sha256']}`), "
              f"converted by `ssl-zoo hub import-official --format {official['format']}`" if official else
              f"pretrained with **{meta['method']}** by ssl-zoo on `{meta['dataset']}` ({meta['steps']} steps)")
    return f"""# {name}

A `{config["architecture"]}` backbone: {origin}. Weights are the backbone only (the network the
method evaluates), as safetensors with timm key names.

| fact | value |
|---|---|
| architecture | `{config["architecture"]}` {config.get("model_args", {})} (stem: {meta["stem"]}) |
| features | {config["num_features"]} (pooled, `num_classes=0`) |
| input | {pcfg["input_size"]}, {pcfg["interpolation"]}, mean {pcfg["mean"]}, std {pcfg["std"]} |
| method | {meta["method"]} |
| dataset | {meta["dataset"]} |
| training steps | {meta["steps"]} |
| k-NN top-1 | {_fmt_metric(knn)}{knn_note} |
{evals}| weights sha256 | `{meta["sha256"]}` ({meta["size_bytes"]} bytes) |

## Use

```python
import ssl_zoo.hub
model = ssl_zoo.hub.load("{name}", hub="HUB_DIR_OR_URL", num_classes=0)

import timm
{timm_use}
```

Linear-probe, fine-tuning (`finetune_<labels>`, SimCLRv2 fine-tunes from its first head layer,
which is not part of these weights) and distillation rows come from the run's `eval/*.json` at
the exported step. The full training config is in `config.json` under `ssl_zoo.config`.
"""
