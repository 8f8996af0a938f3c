"""What this CPU can do, as PyTorch runs on it, and the one switch for every fast path.

Fast paths are what the toolkit picks by itself because it measured faster on some CPUs: bf16
autocast under ``train.precision=auto``, oneDNN-packed linear weights and the column-major
weight layout for decoding, the native LSTM kernel for short calls, and any automatic
``torch.compile``. Each sits behind a probe here (or next to the code it speeds up) and has a
plain PyTorch fallback that gives the same results within tolerance.

``RNN2GPT_FASTPATHS`` (environment variable) is ``auto`` (default) or ``off``. ``off`` runs the
plain PyTorch kernel of whatever was asked: it never changes a dtype or a quantization that was
asked for explicitly (an explicit ``train.precision=bf16`` stays bf16).

**Emulation.** Probes answer for the CPU *as PyTorch runs on it*, not for the silicon alone: a
run with ``ATEN_CPU_CAPABILITY=avx2`` (PyTorch's kernels capped at AVX2) or
``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN capped) on an AVX512-BF16 machine gets the answers of an
AVX2-only CPU. That is what lets CI run the suite "as the lowest CPU class" on any machine.

This module sits on the bottom floor: it imports nothing of the package but :mod:`errors`.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from .errors import ConfigError

FASTPATHS_ENV = "RNN2GPT_FASTPATHS"
FASTPATH_MODES = ("auto", "off")

# oneDNN's instruction-set levels, lowest first (its ONEDNN_MAX_CPU_ISA names). Native bf16
# arithmetic starts at AVX512_CORE_BF16.
_ONEDNN_ISAS = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_FP16",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX512_CORE_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
    "ALL",
    "DEFAULT",
)
_ONEDNN_BF16_ISA = "AVX512_CORE_BF16"


def fastpaths_mode() -> str:
    """``auto`` or ``off``, from ``RNN2GPT_FASTPATHS`` (read on every call, so tests may set it).

    Raises:
        ConfigError: any other value.
    """
    mode = os.environ.get(FASTPATHS_ENV, "auto").strip().lower() or "auto"
    if mode not in FASTPATH_MODES:
        raise ConfigError(
            f"{FASTPATHS_ENV} must be auto or off (got {os.environ.get(FASTPATHS_ENV)!r}); unset "
            "it for the default (auto)"
        )
    return mode


def fastpaths_enabled() -> bool:
    """False when ``RNN2GPT_FASTPATHS=off``: every automatic fast path takes its fallback."""
    return fastpaths_mode() == "auto"


# --------------------------------------------------------------------------- the CPU


@functools.cache
def cpu_model() -> str:
    """The CPU's name (``/proc/cpuinfo`` on Linux, else the platform's answer)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _private_probe(name: str) -> bool:
    """A ``torch.cpu._is_*_supported`` probe (CPUID on x86); False when missing or failing."""
    check: Callable[[], bool] | None = getattr(torch.cpu, name, None)
    if check is None:
        return False
    try:
        return bool(check())
    except Exception:  # a probe that fails means "unknown", i.e. no
        return False


def cpu_features() -> dict[str, bool]:
    """The silicon's features that matter here: avx2, avx512f, avx512_bf16, amx.

    These are hardware facts (CPUID). What PyTorch *uses* of them can be capped by emulation;
    see :func:`cpu_capability` and :func:`cpu_has_fast_bf16`.
    """
    return {
        "avx2": _private_probe("_is_avx2_supported"),
        "avx512f": _private_probe("_is_avx512_supported"),
        "avx512_bf16": _private_probe("_is_avx512_bf16_supported"),
        "amx": _private_probe("_is_amx_tile_supported"),
    }


def cpu_capability() -> str:
    """The vector level PyTorch's own kernels run at: ``AVX512``, ``AVX2``, ``DEFAULT``...

    It follows ``ATEN_CPU_CAPABILITY``, so an emulated AVX2 run reports ``AVX2``.
    """
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # an old or unusual build: say nothing rather than guess
        return "unknown"


def compile_cache_per_capability() -> None:
    """Give ``torch.compile`` an on-disk cache of its own per :func:`cpu_capability`.

    Inductor's cache key leaves out ``ATEN_CPU_CAPABILITY``: a graph compiled at AVX512 and
    loaded again in a process capped at AVX2 returned NaN losses (measured, torch 2.13: a tiny
    GPT's first training step). A cache directory per capability keeps the two apart. A cache
    directory the user chose (``TORCHINDUCTOR_CACHE_DIR``) is left alone; call this before the
    first compiled call (compiling is lazy, and Inductor reads the variable then).
    """
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # pragma: no cover - a PyTorch that moved it
        return
    default = default_cache_dir()
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is not None and not chosen.startswith(default):
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(default, cpu_capability().lower())


def onednn_isa_cap() -> str | None:
    """The ``ONEDNN_MAX_CPU_ISA`` (or older ``DNNL_MAX_CPU_ISA``) cap, upper case; None if unset."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value else None


def _onednn_allows(isa: str) -> bool:
    cap = onednn_isa_cap()
    if cap is None or cap not in _ONEDNN_ISAS:
        return True  # no cap, or one we do not know: oneDNN's own checks decide
    return _ONEDNN_ISAS.index(cap) >= _ONEDNN_ISAS.index(isa)


def cpu_has_fast_bf16() -> bool:
    """True when this CPU, as PyTorch runs on it, multiplies bf16 natively.

    Needs AVX512-BF16 or AMX in the silicon, PyTorch's kernels running at AVX-512 (not capped
    by ``ATEN_CPU_CAPABILITY``), and oneDNN allowed its bf16 instructions (not capped by
    ``ONEDNN_MAX_CPU_ISA``). It does not look at ``RNN2GPT_FASTPATHS``: it answers what the
    hardware can do; the callers that pick a fast path by themselves also ask
    :func:`fastpaths_enabled`.
    """
    features = cpu_features()
    if not (features["avx512_bf16"] or features["amx"]):
        return False
    if not cpu_capability().upper().startswith("AVX512"):
        return False
    return _onednn_allows(_ONEDNN_BF16_ISA)


def fast_bf16_reason() -> str:
    """One phrase saying why :func:`cpu_has_fast_bf16` answers as it does."""
    features = cpu_features()
    if not (features["avx512_bf16"] or features["amx"]):
        return "this CPU has no native bf16 (AVX512-BF16/AMX)"
    capability = cpu_capability()
    if not capability.upper().startswith("AVX512"):
        return f"PyTorch runs at {capability} here (ATEN_CPU_CAPABILITY), without AVX512-BF16"
    if not _onednn_allows(_ONEDNN_BF16_ISA):
        return (
            f"oneDNN is capped at {onednn_isa_cap()} (ONEDNN_MAX_CPU_ISA), below AVX512_CORE_BF16"
        )
    return "this CPU has " + ("AMX" if features["amx"] else "AVX512-BF16")


# --------------------------------------------------------------------------- measurement

# bf16 autocast must measure at least this much faster than fp32 for precision=auto to pick it:
# autocast adds casts around every matmul, and a near tie is not worth bf16's rounding.
BF16_MIN_SPEEDUP = 1.2


@functools.cache
def bf16_autocast_speedup() -> float:
    """How many times faster a training-sized matmul runs under CPU bf16 autocast than in fp32.

    Measured once per process (about 0.2 s): ``F.linear`` of (2048, 256) activations by a
    (1024, 256) weight, best of 10 runs each. CPUID alone does not tell: measured on two Xeons
    with AVX512-BF16 and no AMX, one ran bf16 matmuls at 2.3x fp32's speed and the other at
    0.5x (its fp32 FMA units are twice as wide as its bf16 dot-product throughput).
    """
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 256, generator=generator)
    weight = torch.randn(1024, 256, generator=generator)

    def under_autocast() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.linear(x, weight)

    # Alternate the two, best of each: a moment of load on the machine then slows both alike.
    fp32 = bf16 = float("inf")
    for _ in range(4):
        fp32 = min(fp32, _best_seconds(lambda: F.linear(x, weight), 0.025))
        bf16 = min(bf16, _best_seconds(under_autocast, 0.025))
    return fp32 / bf16


@functools.cache
def matmul_gflops(dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of a training-sized matmul in ``dtype`` (bf16: under autocast), measured once per
    process in about 0.05 s: (2048, 256) activations by a (1024, 256) weight."""
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 256, generator=generator)
    weight = torch.randn(1024, 256, generator=generator)

    def run() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            return F.linear(x, weight)

    return 2 * 2048 * 256 * 1024 / _best_seconds(run, 0.05) / 1e9


def measure_throughput(seconds: float = 10.0) -> dict[str, float]:
    """A short measurement of what training and decoding can expect from this machine.

    Splits ``seconds`` over three timings, each the best of repeated runs:

    - ``fp32_gflops``, ``bf16_gflops``: square matrix products (1024 x 1024) in each dtype;
    - ``weight_read_gbps``: one activation row times a 512 MB fp32 matrix, larger than server
      caches (what a batch-1 decode step of a large model does: read every weight once).

    Uses the threads PyTorch is set to use.
    """
    share = max(seconds, 0.3) / 3
    size = 1024
    out: dict[str, float] = {}
    for name, dtype in (("fp32_gflops", torch.float32), ("bf16_gflops", torch.bfloat16)):
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        best = _best_seconds(lambda a=a, b=b: torch.mm(a, b), share)
        out[name] = 2 * size**3 / best / 1e9
    rows, cols = 16384, 8192  # 512 MB of fp32: beyond even a 260 MB L3 cache
    weight = torch.full((rows, cols), 0.5)
    x = torch.full((cols,), 0.25)
    best = _best_seconds(lambda: torch.mv(weight, x), share)
    out["weight_read_gbps"] = weight.numel() * weight.element_size() / best / 1e9
    return out


def _best_seconds(fn: Callable[[], Any], budget: float) -> float:
    """The fastest of as many calls of ``fn`` as fit in ``budget`` seconds (one warm-up)."""
    fn()
    best = float("inf")
    deadline = time.perf_counter() + budget
    calls = 0
    while calls < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        calls += 1
        if calls >= 10_000:
            break
    return max(best, 1e-9)


__all__ = [
    "FASTPATHS_ENV",
    "FASTPATH_MODES",
    "compile_cache_per_capability",
    "cpu_capability",
    "cpu_features",
    "cpu_has_fast_bf16",
    "cpu_model",
    "fast_bf16_reason",
    "fastpaths_enabled",
    "fastpaths_mode",
    "matmul_gflops",
    "measure_throughput",
    "onednn_isa_cap",
]
