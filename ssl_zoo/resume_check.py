"""Is a checkpoint fit to be resumed by this run? Its config and its weights, compared with ours.

Why: resuming with another batch size, schedule or model silently trains a run that is neither
the old one nor the new one; a short list of what differs lets the user choose knowingly. Keys
that only change how a run is watched or executed (logging, checkpoint cadence, threads, device,
precision, evaluation) may change freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssl_zoo.checkpoint import CheckpointError
from ssl_zoo.config import ExperimentConfig, to_dict
from ssl_zoo.registry import resolve_method

# How the run is executed or watched, not what it computes. Everything else (method, model, data,
# optim, and the train keys below) changes the run. Every train key is in one of the two sets
# (tests/test_resume_check.py checks it), so a new key has to be placed knowingly.
HARMLESS_TRAIN = frozenset({"name", "output_dir", "device", "precision", "compile", "channels_last",
                            "deterministic", "threads", "log_every", "image_every", "ckpt_every", "keep_last",
                            "time_budget_min",  # a resumed run keeps the step count its budget fixed
                            "global_batch"})  # the batch it fixes is train.batch_size, which is compared
RUN_CHANGING_TRAIN = frozenset({"epochs", "max_steps", "batch_size", "accumulate", "seed", "sync_batchnorm"})
# how to resume, not part of the run: never compared
NOT_COMPARED = frozenset({"train.resume", "train.resume_changes"})
HARMLESS_DATA = frozenset({"num_workers"})
HARMLESS_SECTIONS = frozenset({"eval"})

ABSENT = "<absent>"
SHOWN = 8  # differences named in one line before "... and N more"


@dataclass(frozen=True)
class Change:
    key: str  # dotted, e.g. train.batch_size
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _section_defaults() -> dict[str, Any]:
    """Dotted key -> default of every data/model/optim/train/eval key (method defaults differ per method)."""
    return _flatten({k: v for k, v in to_dict(ExperimentConfig()).items() if k != "method"})


def is_harmless(key: str) -> bool:
    """Whether changing the dotted config `key` leaves the run's computation as it was."""
    section, _, rest = key.partition(".")
    name = rest.split(".")[0]
    if section in HARMLESS_SECTIONS:
        return True
    if section == "train":
        return name in HARMLESS_TRAIN
    return section == "data" and name in HARMLESS_DATA


def config_changes(old: dict, new: dict) -> tuple[list[Change], list[Change]]:
    """(changes to the run, harmless changes) between two plain config dicts (`config.to_dict`)."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    # a data/model/optim/train/eval key added since the checkpoint was written, at its default now: new keys
    # default to what the code computed before they existed (e.g. model.depth 0 = the architecture's own)
    added_at_default = {key for key, value in _section_defaults().items()
                        if key not in flat_old and flat_new.get(key, ABSENT) == value}
    changes = [Change(key, flat_old.get(key, ABSENT), flat_new.get(key, ABSENT))
               for key in sorted(flat_old.keys() | flat_new.keys())
               if key not in NOT_COMPARED | added_at_default and flat_old.get(key, ABSENT) != flat_new.get(key, ABSENT)]
    return [c for c in changes if not is_harmless(c.key)], [c for c in changes if is_harmless(c.key)]


def without_retired_keys(old: dict) -> dict:
    """`old` without the method fields its class retires: a config saved when one class held two
    algorithms (SiT, SatMAE++) carries the other algorithm's fields, which never changed that run and
    which loading drops (ssl_zoo.registry.resolve_method), so their absence now is no change."""
    method = old.get("method")
    if not isinstance(method, dict):
        return old
    return {**old, "method": resolve_method(method)[1]}


def _listed(changes: list[Change]) -> str:
    shown = ", ".join(map(str, changes[:SHOWN]))
    return shown + (f" ... and {len(changes) - SHOWN} more" if len(changes) > SHOWN else "")


def check_resume_config(old: Any, new: dict, policy: str, checkpoint: Path) -> str | None:
    """Refuse (CheckpointError, one line) a resume whose config changes the run unless policy is
    "allow"; returns one info line naming the accepted changes, or None when nothing changed."""
    if not isinstance(old, dict):
        if policy != "allow":
            raise CheckpointError(f"{checkpoint} holds no config to compare with this run's; train under another "
                                  f"train.name, or resume anyway with train.resume_changes=allow")
        return f"train.resume_changes=allow: {checkpoint} holds no config; resuming without comparing configs"
    run, harmless = config_changes(without_retired_keys(old), new)
    if run and policy != "allow":
        raise CheckpointError(f"resuming {checkpoint} with a config that changes the run ({_listed(run)}); train "
                              f"under another train.name, or resume anyway with train.resume_changes=allow")
    notes = []
    if run:
        notes.append(f"train.resume_changes=allow: resuming with changes to the run: {_listed(run)}")
    if harmless:
        notes.append(f"resuming with changed settings that do not change the run: {_listed(harmless)}")
    return "; ".join(notes) or None


def _names(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")


def state_dict_mismatch(expected: dict[str, torch.Tensor], found: dict[str, Any]) -> str:
    """One line summarising why `found` does not load into a module whose state_dict is `expected`:
    counts and the first few names of missing, unexpected and reshaped entries (not hundreds of lines)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [k for k in expected if k in found and isinstance(found[k], torch.Tensor)
                and tuple(found[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_names(unexpected)})")
    if reshaped:
        first = reshaped[0]
        parts.append(f"{len(reshaped)} of another shape ({first}: {list(found[first].shape)} in the checkpoint, "
                     f"{list(expected[first].shape)} here{', ...' if len(reshaped) > 1 else ''})")
    return "; ".join(parts) or "the entries match in name and shape"
