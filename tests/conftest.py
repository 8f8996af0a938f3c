"""Settings shared by the whole test suite."""

from __future__ import annotations

import os

import pytest
import torch

# Nothing in the tests may reach the network (the Hugging Face hub included).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def learning_seed() -> int:
    """Offset for the seeds of tests that assert a model learned something (0 in CI).

    Their margin is checked by hand under several seeds and the AVX2 emulation:
    ``RNN2GPT_TEST_SEED=3 python -m pytest -m 'slow or not slow' -k learn`` (see
    benchmarks/RESULTS.md, "Learning tests have margin").
    """
    return int(os.environ.get("RNN2GPT_TEST_SEED", "0"))


@pytest.fixture
def fastpaths_auto(monkeypatch):
    """For tests of a fast path itself: run with RNN2GPT_FASTPATHS=auto even when the suite runs
    with it off (CI's second pass). Whether the hardware has the path is still the probe's call."""
    monkeypatch.setenv("RNN2GPT_FASTPATHS", "auto")


@pytest.fixture
def c_kernels(monkeypatch, fastpaths_auto):
    """The C training kernels of models/kernels/avx2.c run (skipped, naming why, where this
    machine cannot build them). Their use is limited to CPUs where PyTorch runs at AVX2
    (measured there); the kernels themselves run on any AVX2 CPU, so the tests take them on
    AVX-512 CPUs too."""
    from rnn2gpt.models import native, native_ops

    reason = native.load_built(native_ops.KERNEL)[1]
    if reason is not None:
        pytest.skip(f"the C training kernels cannot run here: {reason}")
    monkeypatch.setattr(native_ops, "cpu_capability", lambda: "AVX2")


@pytest.fixture
def fastpaths_off(monkeypatch):
    """For tests of the fallbacks: every automatic fast path off (RNN2GPT_FASTPATHS=off)."""
    monkeypatch.setenv("RNN2GPT_FASTPATHS", "off")


@pytest.fixture
def require_packing():
    """``require_packing(dtype)`` skips a test of the oneDNN-packed path where this CPU and build
    cannot pack ``dtype`` (the reason names what is missing)."""
    return _skip_without_packing


def _skip_without_packing(dtype: torch.dtype) -> None:
    from rnn2gpt.models.packed import packed_linear_supported

    if packed_linear_supported(dtype):
        return
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch build has no oneDNN, so no packed weights (fallback tested)")
    pytest.skip(
        f"oneDNN cannot pack {dtype} weights on this CPU as PyTorch runs it (bf16 needs "
        "AVX512-BF16 or AMX, not capped by ONEDNN_MAX_CPU_ISA); the plain path is tested"
    )


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one intra-op thread; with two, spin-waiting OpenMP threads on a
    shared 2-core machine can make each tiny op hundreds of times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
