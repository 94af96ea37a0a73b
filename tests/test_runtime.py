"""Precision follows the hardware the run lands on (train.precision=auto), not the config's author's."""

from __future__ import annotations

import pytest
import torch
import yaml

from ssl_zoo import runtime
from ssl_zoo.experiment import load_config
from ssl_zoo.trainer import Trainer
from tests.conftest import tiny_config

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def no_onednn_cap(monkeypatch):
    """These tests describe CPUs through their flags; a cap in the caller's environment would override them."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)


def write_cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 {flags}\n\n"
                    f"processor\t: 1\nflags\t\t: fpu sse2 {flags}\n")
    return path


@pytest.mark.parametrize("flags, native", [("avx2 fma", False), ("avx2 avx512f avx512bw", False),
                                           ("avx2 avx512f avx512_bf16", True), ("avx2 amx_tile amx_bf16", True),
                                           ("avx2 avx512_bf16x", False)])
def test_native_bf16_is_read_from_cpu_flags(tmp_path, flags, native):
    assert runtime.cpu_has_native_bf16(write_cpuinfo(tmp_path, flags)) is native


@pytest.mark.parametrize("cap, native", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True),
                                         ("AVX10_1_512_AMX", True)])
def test_a_onednn_cap_without_bf16_means_no_native_bf16(tmp_path, monkeypatch, cap, native):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes a bf16 CPU behave as an AVX2-only one (how the slow kind is emulated)."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert runtime.cpu_has_native_bf16(write_cpuinfo(tmp_path, "avx2 avx512f avx512_bf16")) is native


def test_missing_cpuinfo_means_no_native_bf16(tmp_path):
    assert runtime.cpu_has_native_bf16(tmp_path / "absent") is False


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_is_bf16_only_with_native_support(monkeypatch, native, expected):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    assert runtime.resolve_precision("auto", CPU) == expected
    assert runtime.autocast_dtype("auto", CPU) == {"bf16": torch.bfloat16, "fp32": None}[expected]


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_is_bf16_where_supported_else_fp16(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert runtime.resolve_precision("auto", CUDA) == expected


def test_explicit_bf16_without_native_support_warns_and_is_kept(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="tens of times slower"):
        assert runtime.resolve_precision("bf16", CPU) == "bf16"


def test_every_shipped_config_leaves_precision_to_the_hardware():
    from tests.conftest import ROOT

    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        assert load_config(path).train.precision == "auto", path


@pytest.mark.parametrize("native", [True, False])
def test_resolved_precision_is_printed_and_written_to_config_yaml(tmp_path, monkeypatch, capsys, one_thread, native):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    raw = tiny_config("simclrv2", tmp_path, train={"max_steps": 1, "batch_size": 4, "precision": "auto"})
    trainer = Trainer(load_config(raw), progress_bar=False)
    expected = "bf16" if native else "fp32"
    assert trainer.amp_dtype == (torch.bfloat16 if native else None)
    result = trainer.fit()
    assert f"precision {expected} (auto)" in capsys.readouterr().out
    text = (result.run_dir / "config.yaml").read_text()
    assert text.startswith(f"# as run: train.precision auto -> {expected}")
    assert yaml.safe_load(text)["train"]["precision"] == expected
