"""int8 weight-only quantization: per-output-channel scales, activations kept in fp32 or bf16.

A weight W (out, in) is stored as int8 ``q`` and a float32 ``scale`` (out,) with
``W ≈ q * scale[:, None]``, ``scale = max_j |W[i, j]| / 127`` (symmetric, round to nearest): a
quarter of the bytes of fp32, and a batch-1 decode step, which reads every weight once, reads a
quarter as much.

Three kernels compute ``y = x Wᵀ + b`` from it:

- ``int8pack``: PyTorch's own ``torch._weight_int8pack_mm(x, q, scale)``, which reads the int8
  weight directly (measured on X3: 5-8x *slower* than fp32 at 1 row, so it is rarely chosen);
- ``gemv``: for 1-8 rows (decoding, where reading the weights is the whole cost), the
  product written as a multiply-and-sum over the int8 weight, ``(x * q).sum(-1) * scale``,
  compiled once per process by ``torch.compile`` (dynamic shapes: one compile serves every layer)
  into a loop that reads each int8 weight once per row (at one row, compiled per shape and
  called without Dynamo, see :func:`_one_row_gemv`): 1.5-2.2x faster than fp32 on X3 at one
  row, and at 2-8 rows faster than rebuilding the fp32 weight (the rows after the first find
  the weight in cache);
- ``avx2``: a C kernel for CPUs with AVX2 (:mod:`rnn2gpt.models.avx2_int8`, compiled on first
  use) that widens the int8 weights to fp32 in registers; on an AMD EPYC without AVX-512, where
  the first two run unvectorized and 2-3x slower than fp32, it ran 1.2-3x faster than fp32;
- ``dequant``: the plain path, ``F.linear(x, q.to(dtype) * scale)``, which materialises the fp32
  weight at every call (correct everywhere, never faster than fp32).

:func:`choose_int8_kernel` times the candidates on this machine for a layer's shape and row
count and keeps the fastest (``RNN2GPT_FASTPATHS=off`` keeps ``dequant``, the plain kernel of
what was asked: int8 weights stay int8, and nothing is compiled). The choice is logged, and
``rnn2gpt doctor`` reports it for a typical shape.

:func:`quantize_model` swaps every ``nn.Linear`` of a model (the GPT's attention and MLP
projections and its output head, the recurrent models' decoder) for :class:`Int8Linear`. The
recurrent cells' own matrices stay in the fused ``nn.LSTM``/``nn.GRU``/``nn.RNN`` kernels in
fp32, which take no int8 weights.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hardware import compile_cache_per_capability, fastpaths_enabled
from .avx2_int8 import avx2_int8_available, avx2_int8_gemv, unavailable_reason

logger = logging.getLogger(__name__)

KERNELS = ("int8pack", "gemv", "avx2", "dequant")


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(out, in) float weight -> (int8 (out, in), float32 scale (out,)), symmetric per row."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def int8pack_available() -> bool:
    """Whether this PyTorch build has the int8 weight-only matmul kernel on CPU."""
    try:
        x = torch.ones(1, 8)
        torch._weight_int8pack_mm(x, torch.ones(4, 8, dtype=torch.int8), torch.ones(4))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


# How many bytes of int8 weights a timing streams through (a ring of copies of the layer's
# weight, at most RING_COPIES of them): a decode step reads every layer once, so a layer's
# weight comes from memory, not from the cache a timing on one weight would leave it in.
RING_BYTES = 64 << 20
RING_COPIES = 8
# gemv reads the weight once per row: measured on X3 with weights streamed from memory, it is
# still the fastest int8 kernel at 2-8 rows (3072 x 768 at 8 rows: 1.34 ms against 2.65 ms for
# dequant, fp32 1.25 ms); beyond that it is not tried.
GEMV_MAX_ROWS = 8


@lru_cache(maxsize=256)
def choose_int8_kernel(rows: int, in_features: int, out_features: int, dtype: torch.dtype) -> str:
    """The faster kernel for a (rows, in) x (in, out) product on this machine (timed once per
    shape and process, over weights streamed from memory as a decode step reads them), or
    ``dequant`` where the fast paths are off or int8pack is missing."""
    if not fastpaths_enabled():
        return "dequant"
    copies = max(1, min(RING_COPIES, RING_BYTES // max(out_features * in_features, 1)))
    ring = [quantize_weight(torch.randn(out_features, in_features)) for _ in range(copies)]
    q, scale = ring[0]
    x = torch.randn(rows, in_features, dtype=dtype)
    reference = _dequant(x, q, scale, None).float()
    timings = {}
    for kernel in KERNELS:
        if kernel == "int8pack" and not int8pack_available():
            continue
        if kernel in ("gemv", "avx2") and rows > GEMV_MAX_ROWS:
            continue
        if kernel == "avx2" and not avx2_int8_available():
            continue
        run = _KERNEL_FUNCTIONS[kernel]
        if not kernel_agrees(kernel, x, q, scale, reference):
            continue
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            for q_copy, scale_copy in ring:
                run(x, q_copy, scale_copy, None)
            samples.append((time.perf_counter() - start) / copies)
        timings[kernel] = sorted(samples)[2]
    best = min(timings, key=timings.get)
    logger.info(
        "int8 %dx%d at %d rows (%s): %s (%s)",
        out_features,
        in_features,
        rows,
        str(dtype).removeprefix("torch."),
        best,
        ", ".join(f"{k} {1e6 * v:.1f} us" for k, v in timings.items()),
    )
    return best


def kernel_agrees(
    kernel: str, x: Tensor, q: Tensor, scale: Tensor, reference: Tensor | None = None
) -> bool:
    """Whether ``kernel`` runs here and gives the plain path's result for ``x`` (fp32 rounding
    apart; bf16 within bf16's). A kernel that fails or disagrees is never used: measured on X3,
    Inductor's int8 GEMV compiled at ``ATEN_CPU_CAPABILITY=avx2`` returns wrong values."""
    if reference is None:
        reference = _dequant(x, q, scale, None).float()
    try:
        out = _KERNEL_FUNCTIONS[kernel](x, q, scale, None).float()  # (and gemv's compile)
    except Exception as exc:  # noqa: BLE001 - no compiler, no kernel: the others remain
        logger.info("int8 kernel %s unavailable here: %s", kernel, exc)
        return False
    tolerance = 1e-3 if x.dtype == torch.float32 else 5e-2
    size = reference.abs().amax().clamp_min(1.0)
    if not torch.allclose(out, reference, rtol=tolerance, atol=tolerance * float(size)):
        logger.warning("int8 kernel %s gives wrong results on this machine; not used", kernel)
        return False
    return True


def int8_paths(measure: bool = False) -> str:
    """The int8 kernels this machine runs, for ``rnn2gpt doctor`` (one phrase); ``measure`` times
    them on a typical layer (a few seconds: the first use compiles the gemv kernel)."""
    if not fastpaths_enabled():
        return "int8 weights: dequantize-then-matmul (RNN2GPT_FASTPATHS=off)"
    if not measure:
        avx2 = "avx2 (C)" if avx2_int8_available() else f"avx2 unavailable: {unavailable_reason()}"
        return (
            "int8 weights: the fastest of int8pack, gemv (compiled), dequant and "
            f"{avx2}, timed per layer shape at first use"
        )
    chosen = {rows: choose_int8_kernel(rows, 3072, 768, torch.float32) for rows in (1, 8)}
    return (
        "int8 weights: "
        + ", ".join(
            f"{kernel} at {rows} row{'s' if rows > 1 else ''}" for rows, kernel in chosen.items()
        )
        + " (the fastest kernel at each row count, timed on a 3072 x 768 layer)"
        + ("" if avx2_int8_available() else f"; avx2 unavailable: {unavailable_reason()}")
    )


def _int8pack(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
    y = torch._weight_int8pack_mm(x, q, scale.to(x.dtype))
    return y if bias is None else y + bias.to(x.dtype)


def _gemv_eager(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    """(M, K) float, (N, K) int8, (N,) -> (M, N) float32: a multiply-and-sum over the int8 weight,
    which the compiler turns into one pass over ``q``."""
    return (x.float()[:, None, :] * q.to(torch.float32)).sum(-1) * scale


@lru_cache(maxsize=1)
def _compiled_gemv():
    compile_cache_per_capability()
    return torch.compile(_gemv_eager, dynamic=True)


def _one_row_gemv_eager(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """:func:`_gemv_eager` with the bias added: (1, K), (N, K) int8, (N,), (N,) -> (1, N)."""
    return _gemv_eager(x, q, scale) + bias


@lru_cache(maxsize=64)
def _one_row_gemv(in_features: int, out_features: int, dtype: torch.dtype) -> Callable[..., Tensor]:
    """The one-row GEMV compiled by Inductor for exactly this shape and input dtype, and called
    without Dynamo. A batch-1 decode step calls a GEMV per layer (49 a token for GPT-2 small), and
    through ``torch.compile`` each call also pays Dynamo's frame and guard checks: measured on X3,
    65 against 34 us for 768 x 768, 148 against 101 us for 3072 x 768. A new shape compiles in
    about a second (the first in a process takes 3-5 s), then comes from Inductor's disk cache."""
    from torch._inductor import compile as inductor_compile

    compile_cache_per_capability()
    graph = torch.fx.symbolic_trace(_one_row_gemv_eager)
    example = [
        torch.zeros(1, in_features, dtype=dtype),
        torch.zeros(out_features, in_features, dtype=torch.int8),
        torch.ones(out_features),
        torch.zeros(out_features),
    ]
    return inductor_compile(graph, example)


@lru_cache(maxsize=64)
def _zeros(features: int) -> Tensor:
    """A bias of zeros for layers without one (the one-row GEMV always adds a bias)."""
    return torch.zeros(features)


def _gemv(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
    if x.shape[0] == 1 and x.device.type == "cpu":
        compiled = _one_row_gemv(q.shape[1], q.shape[0], x.dtype)
        y = compiled(x, q, scale.float(), _zeros(q.shape[0]) if bias is None else bias.float())
        return y.to(x.dtype)
    y = _compiled_gemv()(x, q, scale.float())
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def _dequant(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
    weight = q.to(x.dtype) * scale.to(x.dtype)[:, None]
    return F.linear(x, weight, None if bias is None else bias.to(x.dtype))


_KERNEL_FUNCTIONS = {
    "int8pack": _int8pack,
    "gemv": _gemv,
    "avx2": avx2_int8_gemv,
    "dequant": _dequant,
}


class Int8Linear(nn.Module):
    """``nn.Linear`` with an int8 weight and per-output-channel scales.

    Buffers ``qweight`` int8 (out, in) and ``scale`` float32 (out,); ``bias`` float32 (out,) or
    None. Input (..., in) fp32 or bf16 -> output (..., out) in the input's dtype.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features))
        else:
            self.bias = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        q, scale = quantize_weight(linear.weight)
        layer.qweight.copy_(q)
        layer.scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer.to(linear.weight.device)

    def dequantized(self) -> Tensor:
        """The weight it stands for, (out, in) float32."""
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features)
        if flat.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            flat = flat.float()
        if torch.is_grad_enabled() and flat.requires_grad:
            kernel = "dequant"  # int8pack has no backward
        else:
            kernel = choose_int8_kernel(
                _row_bucket(flat.shape[0]), self.in_features, self.out_features, flat.dtype
            )
        y = _KERNEL_FUNCTIONS[kernel](flat.contiguous(), self.qweight, self.scale, self.bias)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _row_bucket(rows: int) -> int:
    """Rows rounded up to a power of two (up to 64): one timing serves nearby batch sizes."""
    bucket = 1
    while bucket < rows and bucket < 64:
        bucket *= 2
    return bucket


def quantize_model(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` in ``model`` by an :class:`Int8Linear`, in place; returns it.

    A Linear whose weight is tied to another parameter (a GPT's output head shares the token
    embedding) gets its own int8 copy; the embedding keeps its float weight.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear.from_linear(child))
    return model


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())


__all__ = [
    "Int8Linear",
    "choose_int8_kernel",
    "int8_paths",
    "int8pack_available",
    "kernel_agrees",
    "is_quantized",
    "quantize_model",
    "quantize_weight",
]
