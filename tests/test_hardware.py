"""The CPU probes honour emulation and RNN2GPT_FASTPATHS; `rnn2gpt doctor` reports them."""

from __future__ import annotations

import json
import os

import pytest
import torch

from rnn2gpt import hardware
from rnn2gpt.cli import EXIT_USER_ERROR, main
from rnn2gpt.errors import ConfigError


@pytest.fixture
def silicon(monkeypatch):
    """Pretend the CPU has the given features and PyTorch runs at the given capability."""

    def make(*, bf16: bool, amx: bool = False, capability: str = "AVX512") -> None:
        features = {"avx2": True, "avx512f": True, "avx512_bf16": bf16, "amx": amx}
        monkeypatch.setattr(hardware, "cpu_features", lambda: dict(features))
        monkeypatch.setattr(hardware, "cpu_capability", lambda: capability)
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)

    return make


@pytest.mark.parametrize(
    "value, mode", [(None, "auto"), ("auto", "auto"), ("OFF", "off"), ("", "auto")]
)
def test_the_switch_reads_the_environment(monkeypatch, value, mode):
    if value is None:
        monkeypatch.delenv("RNN2GPT_FASTPATHS", raising=False)
    else:
        monkeypatch.setenv("RNN2GPT_FASTPATHS", value)
    assert hardware.fastpaths_mode() == mode
    assert hardware.fastpaths_enabled() == (mode == "auto")


def test_a_typo_in_the_switch_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("RNN2GPT_FASTPATHS", "of")
    with pytest.raises(ConfigError, match="auto or off"):
        hardware.fastpaths_mode()


def test_native_bf16_needs_the_silicon(silicon):
    silicon(bf16=False)
    assert not hardware.cpu_has_fast_bf16()
    assert "no native bf16" in hardware.fast_bf16_reason()
    silicon(bf16=False, amx=True)
    assert hardware.cpu_has_fast_bf16()


def test_native_bf16_honours_pytorchs_capability(silicon):
    silicon(bf16=True, capability="AVX512")
    assert hardware.cpu_has_fast_bf16()
    silicon(bf16=True, capability="AVX2")  # ATEN_CPU_CAPABILITY=avx2 on an AVX512-BF16 CPU
    assert not hardware.cpu_has_fast_bf16()
    assert "AVX2" in hardware.fast_bf16_reason()


@pytest.mark.parametrize(
    "cap, fast",
    [
        ("AVX2", False),
        ("avx512_core", False),
        ("AVX512_CORE_BF16", True),
        ("AVX512_CORE_AMX", True),
    ],
)
def test_native_bf16_honours_the_onednn_cap(silicon, monkeypatch, cap, fast):
    silicon(bf16=True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert hardware.cpu_has_fast_bf16() == fast


def test_features_are_booleans_and_the_capability_a_name():
    features = hardware.cpu_features()
    assert set(features) == {"avx2", "avx512f", "avx512_bf16", "amx"}
    assert all(isinstance(v, bool) for v in features.values())
    assert isinstance(hardware.cpu_capability(), str) and hardware.cpu_capability()
    assert isinstance(hardware.cpu_model(), str) and hardware.cpu_model()


def test_a_short_measurement_gives_positive_rates():
    rates = hardware.measure_throughput(0.3)
    assert set(rates) == {"fp32_gflops", "bf16_gflops", "weight_read_gbps"}
    assert all(isinstance(v, float) and v > 0 for v in rates.values())


def _doctor_json(capsys, *args: str) -> dict:
    assert main(["doctor", "--json", *args]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # nothing but the one object, on stdout
    return json.loads(out)


def test_doctor_json_has_every_field_typed(capsys):
    report = _doctor_json(capsys, "--no-bench")
    assert isinstance(report["cpu"]["model"], str)
    assert set(report["cpu"]["features"]) == {"avx2", "avx512f", "avx512_bf16", "amx"}
    assert all(isinstance(v, bool) for v in report["cpu"]["features"].values())
    assert isinstance(report["torch"]["version"], str)
    assert isinstance(report["torch"]["onednn"], bool)
    assert isinstance(report["torch"]["threads"], int) and report["torch"]["threads"] >= 1
    assert report["fastpaths"] in ("auto", "off")
    assert report["train"]["precision"] in ("fp32", "bf16")
    assert isinstance(report["train"]["memory"], str) and report["train"]["memory"]
    assert isinstance(report["generate"], dict) and report["generate"]
    assert all(isinstance(v, str) for v in report["generate"].values())
    assert report["bench"] is None


def test_doctor_measures_when_asked(capsys):
    bench = _doctor_json(capsys, "--bench-seconds", "0.3")["bench"]
    assert set(bench) == {"fp32_gflops", "bf16_gflops", "weight_read_gbps"}
    assert all(isinstance(v, float) and v > 0 for v in bench.values())


def test_doctor_says_fast_paths_are_off(capsys, fastpaths_off):
    report = _doctor_json(capsys, "--no-bench")
    assert report["fastpaths"] == "off"
    assert report["train"]["precision"] == "fp32"
    assert all("RNN2GPT_FASTPATHS=off" in v for v in report["generate"].values())


def test_doctor_on_a_cpu_without_any_feature(capsys, monkeypatch):
    # Every probe says no, or fails: the report still comes out, with no traceback.
    for name in dir(torch.cpu):
        if name.startswith("_is_"):
            monkeypatch.setattr(torch.cpu, name, lambda: (_ for _ in ()).throw(RuntimeError("x")))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    report = _doctor_json(capsys, "--no-bench")
    assert not any(report["cpu"]["features"].values())
    assert report["cpu"]["capability"] == "DEFAULT"
    assert report["train"]["precision"] == "fp32"
    assert main(["doctor", "--no-bench"]) == 0
    assert "avx2 no" in capsys.readouterr().out


def test_doctor_with_a_bad_switch_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("RNN2GPT_FASTPATHS", "maybe")
    assert main(["doctor", "--no-bench"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: RNN2GPT_FASTPATHS") and err.count("\n") == 1


def test_compile_cache_is_kept_per_cpu_capability(monkeypatch):
    """Inductor's cache key leaves ATEN_CPU_CAPABILITY out (an AVX512 graph reloaded under AVX2
    gave NaN losses): each capability gets its own directory, unless the user chose one."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from rnn2gpt.hardware import compile_cache_per_capability, cpu_capability

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    compile_cache_per_capability()
    ours = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    assert ours == os.path.join(default_cache_dir(), cpu_capability().lower())
    compile_cache_per_capability()  # again: the same directory, not nested
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == ours
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")
    compile_cache_per_capability()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/else"
