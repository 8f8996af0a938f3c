"""The int8 matrix-vector product in C for AVX2 CPUs, compiled on first use and called through ctypes.

Why: on a CPU with AVX2 and no AVX-512 (measured on an AMD EPYC, 2026-12-03), neither of
PyTorch's int8 paths reads int8 weights fast. ``torch._weight_int8pack_mm`` and the GEMV that
Inductor compiles from ``(x * q).sum(-1)`` both run unvectorized there, 2-3x slower than the
fp32 product they are meant to beat, so ``--quantize int8`` made decoding slower. The kernel in
``kernels/int8_gemv.c`` widens eight int8 weights at a time to fp32 lanes and multiplies them
there with FMA: the weights are read once per row at a quarter of fp32's bytes, and the
arithmetic is fp32's (activations are never quantized).

How: the C file ships with the package. On first use it is compiled with the machine's C
compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``; ``-O3 -mavx2 -mfma``, under a second) into
``<cache>/kernels/`` (:func:`rnn2gpt.config.default_cache_dir`), named after a hash of the
source and flags, written atomically, and loaded with ctypes for the rest of the process. ctypes
releases the GIL during the call, so the server's threads can run it side by side.

Where it cannot run (not x86 with AVX2 and FMA, PyTorch capped below AVX2, no compiler, a failed
build) or may not (``RNN2GPT_FASTPATHS=off``), :func:`avx2_int8_available` says no, :func:`unavailable_reason`
says why in one phrase (for ``rnn2gpt doctor`` and the log), and the other int8 kernels of
:mod:`rnn2gpt.models.quantized` remain. Which kernel runs is still measured per layer shape
there; this one is a candidate, not a default.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import write_atomic
from ..config import default_cache_dir
from ..hardware import cpu_capability, cpu_features, fastpaths_enabled

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "kernels" / "int8_gemv.c"
FLAGS = ("-O3", "-mavx2", "-mfma", "-fPIC", "-shared")
SYMBOL = "rnn2gpt_int8_gemv"
_COMPILERS = ("cc", "gcc", "clang")
_COMPILE_SECONDS = 120


def avx2_int8_available() -> bool:
    """Whether the C kernel may run now: fast paths on, and built and loaded here (it is built
    on the first call)."""
    return unavailable_reason() is None


def unavailable_reason() -> str | None:
    """Why the kernel cannot run here now (one phrase), or None when it can."""
    if not fastpaths_enabled():  # read each time: a setting, unlike the machine
        return "fast paths are off (RNN2GPT_FASTPATHS=off)"
    return _kernel()[1]


def avx2_int8_gemv(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
    """x (M, K) float, q (N, K) int8, scale (N,), bias (N,) or None -> (M, N) in x's dtype.

    One pass over ``q`` per row of ``x``; fp32 arithmetic (a bf16 ``x`` is widened first).
    Raises RuntimeError where this machine cannot run it (:func:`unavailable_reason`).

    One thread. Outputs split over two threads started per call ran 1.3-1.8x faster on large
    layers alone, but slower inside a model (GPT-2 small at batch 1, AMD EPYC: 30.7 against
    34.0 tokens/s): after each of PyTorch's parallel operations its OpenMP threads spin for a
    while, and a thread of ours started then shares a core with one of them.
    """
    function, reason = _kernel()
    if function is None:
        raise RuntimeError(f"the AVX2 int8 kernel is unavailable: {reason}")
    if not (x.is_cpu and q.is_cpu) or q.dtype != torch.int8 or x.dim() != 2 or q.dim() != 2:
        raise ValueError("the AVX2 int8 kernel takes a 2-D CPU x and a 2-D CPU int8 weight")
    rows, k = x.shape
    n = q.shape[0]
    if q.shape[1] != k:
        raise ValueError(f"x has {k} features, the weight {q.shape[1]}")
    x32 = x.float().contiguous()
    q = q.contiguous()
    scale32 = scale.float().contiguous()
    bias32 = None if bias is None else bias.float().contiguous()
    y = torch.empty(rows, n, dtype=torch.float32)
    function(
        x32.data_ptr(),
        q.data_ptr(),
        scale32.data_ptr(),
        None if bias32 is None else bias32.data_ptr(),
        y.data_ptr(),
        rows,
        k,
        n,
        0,
        n,
    )
    return y if x.dtype == torch.float32 else y.to(x.dtype)


@functools.cache
def _kernel() -> tuple[ctypes._CFuncPtr | None, str | None]:
    """(the loaded C function, None) or (None, why not): the machine's answer, decided once
    per process."""
    reason = _unsupported_here()
    if reason is not None:
        return None, reason
    try:
        library = ctypes.CDLL(str(_built_library()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        reason = f"the C kernel could not be built or loaded ({_one_line(exc)})"
        logger.info("AVX2 int8 kernel unavailable: %s", reason)
        return None, reason
    function = getattr(library, SYMBOL)
    function.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 5
    function.restype = None
    return function, None


def _unsupported_here() -> str | None:
    """Why this machine rules the kernel out before any build; None if it does not."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({platform.machine() or 'unknown'})"
    if not cpu_features().get("avx2") or not _has_fma():
        return "this CPU lacks AVX2 or FMA"
    if cpu_capability() not in ("AVX2", "AVX512"):
        return f"PyTorch is capped below AVX2 here (ATen capability {cpu_capability()})"
    if _compiler() is None:
        return "no C compiler found (set CC, or install gcc)"
    return None


def _has_fma() -> bool:
    """FMA from /proc/cpuinfo where Linux has one; every AVX2 CPU shipped so far has it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return " fma " in f" {line.split(':', 1)[-1].strip()} "
    except OSError:
        pass
    return True


def _compiler() -> str | None:
    """``$CC`` if set (and found), else the first of cc, gcc, clang on the PATH."""
    chosen = os.environ.get("CC")
    if chosen:
        return shutil.which(chosen)
    return next((found for name in _COMPILERS if (found := shutil.which(name))), None)


def _built_library() -> Path:
    """The compiled kernel in the cache, built there first if missing (atomically, so processes
    building at once never load half a file)."""
    compiler = _compiler()
    assert compiler is not None  # checked by _unsupported_here
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join((compiler, *FLAGS)).encode()).hexdigest()[:16]
    target = default_cache_dir() / "kernels" / f"int8_gemv-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".build-{os.getpid()}-{target.name}")
    try:
        result = subprocess.run(
            [compiler, *FLAGS, "-o", str(scratch), str(SOURCE)],
            capture_output=True,
            text=True,
            timeout=_COMPILE_SECONDS,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{Path(compiler).name} failed: {result.stderr.strip()[:300]}")
        built = scratch.read_bytes()
    finally:
        scratch.unlink(missing_ok=True)
    write_atomic(target, lambda fh: fh.write(built), prefix=".kernel-")
    logger.info("built the AVX2 int8 kernel: %s", target)
    return target


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


__all__ = ["avx2_int8_available", "avx2_int8_gemv", "unavailable_reason"]
