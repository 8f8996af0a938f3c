"""The AVX2 int8 kernel in C: equal to the plain int8 product, built once into the cache, and
a clear reason (with the other kernels still serving) wherever it cannot run.

The kernel's own results are tested where it runs (x86 with AVX2 and FMA, and a C compiler);
its fallbacks are tested on every machine.
"""

from __future__ import annotations

import subprocess

import pytest
import torch

from rnn2gpt.models import avx2_int8, native, quantized
from rnn2gpt.models.avx2_int8 import avx2_int8_available, avx2_int8_gemv, unavailable_reason
from rnn2gpt.models.quantized import Int8Linear, choose_int8_kernel, quantize_weight


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path, fastpaths_auto):
    """A process that has not looked for the kernel yet, with its own empty cache."""
    monkeypatch.setenv("RNN2GPT_CACHE", str(tmp_path / "cache"))
    avx2_int8._kernel.cache_clear()
    native.load_built.cache_clear()
    yield tmp_path / "cache" / "kernels"
    avx2_int8._kernel.cache_clear()
    native.load_built.cache_clear()


def _require_kernel():
    if not avx2_int8_available():
        pytest.skip(f"the AVX2 int8 kernel cannot run here: {unavailable_reason()}")


def _plain(x, q, scale, bias):
    return quantized._dequant(x.float(), q, scale, bias)


@pytest.mark.parametrize("rows", [1, 2, 5, 8])
@pytest.mark.parametrize("k, n", [(96, 80), (77, 13), (8, 4), (5, 3), (768, 2304)])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_the_plain_int8_product(fastpaths_auto, rows, k, n, bias):
    _require_kernel()
    torch.manual_seed(rows * 1000 + k + n)
    q, scale = quantize_weight(torch.randn(n, k))
    b = torch.randn(n) if bias else None
    x = torch.randn(rows, k)
    got = avx2_int8_gemv(x, q, scale, b)
    assert got.shape == (rows, n) and got.dtype == torch.float32
    torch.testing.assert_close(got, _plain(x, q, scale, b), rtol=1e-5, atol=1e-4)


def test_bf16_inputs_come_back_in_bf16(fastpaths_auto):
    _require_kernel()
    torch.manual_seed(0)
    q, scale = quantize_weight(torch.randn(48, 64))
    x = torch.randn(3, 64).to(torch.bfloat16)
    got = avx2_int8_gemv(x, q, scale, None)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), _plain(x, q, scale, None), rtol=2e-2, atol=5e-2)


def test_shapes_that_do_not_match_are_refused(fastpaths_auto):
    _require_kernel()
    q, scale = quantize_weight(torch.randn(4, 8))
    with pytest.raises(ValueError, match="features"):
        avx2_int8_gemv(torch.randn(1, 9), q, scale, None)
    with pytest.raises(ValueError, match="int8"):
        avx2_int8_gemv(torch.randn(1, 8), q.float(), scale, None)


def test_a_quantized_layer_runs_it_where_chosen(fastpaths_auto, monkeypatch):
    _require_kernel()
    calls = []
    original = quantized._KERNEL_FUNCTIONS["avx2"]
    kernels = dict(quantized._KERNEL_FUNCTIONS, avx2=lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(quantized, "_KERNEL_FUNCTIONS", kernels)
    monkeypatch.setattr(quantized, "choose_int8_kernel", lambda *a: "avx2")
    torch.manual_seed(0)
    linear = torch.nn.Linear(40, 24)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(1, 1, 40)
    with torch.inference_mode():
        got = layer(x)
    assert calls == [1]
    torch.testing.assert_close(got, torch.nn.functional.linear(x, layer.dequantized(), layer.bias))


def test_built_once_into_the_cache_then_loaded_from_it(fresh_kernel, monkeypatch):
    if native.unsupported_here() is not None:
        pytest.skip(f"the AVX2 int8 kernel cannot run here: {native.unsupported_here()}")
    builds = []
    real_run = subprocess.run
    monkeypatch.setattr(
        native.subprocess, "run", lambda *a, **k: builds.append(a) or real_run(*a, **k)
    )
    assert avx2_int8_available() and unavailable_reason() is None
    assert len(builds) == 1
    assert [p.suffix for p in fresh_kernel.iterdir()] == [".so"]  # no scratch file left
    avx2_int8._kernel.cache_clear()  # a new process
    native.load_built.cache_clear()
    assert avx2_int8_available()
    assert len(builds) == 1  # the cached library, not a second build


def test_without_a_compiler_it_says_so_and_the_others_serve(fresh_kernel, monkeypatch):
    monkeypatch.setattr(native, "compiler", lambda: None)
    monkeypatch.setattr(native, "cpu_features", lambda: {"avx2": True})
    monkeypatch.setattr(native, "cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(native.platform, "machine", lambda: "x86_64")
    assert not avx2_int8_available()
    assert "no C compiler" in unavailable_reason()
    with pytest.raises(RuntimeError, match="no C compiler"):  # the machine cannot, whatever is set
        avx2_int8_gemv(torch.randn(1, 8), *quantize_weight(torch.randn(4, 8)), None)
    assert choose_int8_kernel.__wrapped__(1, 64, 32, torch.float32) != "avx2"
    assert "avx2 unavailable: no C compiler" in quantized.int8_paths()
    torch.manual_seed(0)
    layer = Int8Linear.from_linear(torch.nn.Linear(32, 16))
    x = torch.randn(1, 32)
    with torch.inference_mode():
        torch.testing.assert_close(
            layer(x), torch.nn.functional.linear(x, layer.dequantized(), layer.bias)
        )


def test_a_failing_build_is_reported_and_leaves_no_file(fresh_kernel, monkeypatch, tmp_path):
    if native.unsupported_here() is not None:
        pytest.skip(f"the AVX2 int8 kernel cannot run here: {native.unsupported_here()}")
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'cc: internal error' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    assert not avx2_int8_available()
    assert "could not be built" in unavailable_reason()
    assert "internal error" in unavailable_reason()
    assert not fresh_kernel.exists() or not any(fresh_kernel.iterdir())


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("capability", "capped below AVX2"),
        ("no_avx2", "lacks AVX2"),
        ("arm", "not an x86-64 CPU"),
    ],
)
def test_machines_it_cannot_serve_get_one_reason(fresh_kernel, monkeypatch, setting, expected):
    monkeypatch.setattr(native, "cpu_features", lambda: {"avx2": setting != "no_avx2"})
    monkeypatch.setattr(native, "_has_fma", lambda: True)
    monkeypatch.setattr(
        native, "cpu_capability", lambda: "DEFAULT" if setting == "capability" else "AVX2"
    )
    monkeypatch.setattr(
        native.platform, "machine", lambda: "aarch64" if setting == "arm" else "x86_64"
    )
    assert not avx2_int8_available()
    assert expected in unavailable_reason()


def test_fast_paths_off_rule_it_out(fresh_kernel, monkeypatch):
    monkeypatch.setenv("RNN2GPT_FASTPATHS", "off")
    assert not avx2_int8_available()
    assert "RNN2GPT_FASTPATHS=off" in unavailable_reason()
