"""The int8 matrix-vector product in C for AVX2 CPUs, compiled on first use and called through ctypes.

Why: on a CPU with AVX2 and no AVX-512 (measured on an AMD EPYC, 2026-12-03), neither of
PyTorch's int8 paths reads int8 weights fast. ``torch._weight_int8pack_mm`` and the GEMV that
Inductor compiles from ``(x * q).sum(-1)`` both run unvectorized there, 2-3x slower than the
fp32 product they are meant to beat, so ``--quantize int8`` made decoding slower. The kernel in
``kernels/avx2.c`` (``rnn2gpt_int8_gemv``) widens eight int8 weights at a time to fp32 lanes and multiplies them
there with FMA: the weights are read once per row at a quarter of fp32's bytes, and the
arithmetic is fp32's (activations are never quantized).

How: the C file ships with the package and is compiled on first use, then loaded with ctypes
(:mod:`rnn2gpt.models.native`, which it shares with the GPT decode step).

Where it cannot run (not x86 with AVX2 and FMA, PyTorch capped below AVX2, no compiler, a failed
build) or may not (``RNN2GPT_FASTPATHS=off``), :func:`avx2_int8_available` says no, :func:`unavailable_reason`
says why in one phrase (for ``rnn2gpt doctor`` and the log), and the other int8 kernels of
:mod:`rnn2gpt.models.quantized` remain. Which kernel runs is still measured per layer shape
there; this one is a candidate, not a default.
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from . import native

KERNEL = "avx2"  # kernels/avx2.c, shared with the GPT decode step
SYMBOL = "rnn2gpt_int8_gemv"


def avx2_int8_available() -> bool:
    """Whether the C kernel may run now: fast paths on, and built and loaded here (it is built
    on the first call)."""
    return unavailable_reason() is None


def unavailable_reason() -> str | None:
    """Why the kernel cannot run here now (one phrase), or None when it can."""
    return native.load(KERNEL)[1]


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
    library, reason = native.load_built(KERNEL)
    if library is None:
        return None, reason
    function = getattr(library, SYMBOL)
    function.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 5
    function.restype = None
    return function, None


__all__ = ["avx2_int8_available", "avx2_int8_gemv", "unavailable_reason"]
