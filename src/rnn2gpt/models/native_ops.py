"""The exact GELU and a GPT's causal attention as autograd functions computed in C, on AVX2, and
the other C training kernels: LayerNorm for the blocks function, AdamW's update and the
gradients' norm for :mod:`rnn2gpt.training.native_adamw`.

Why: in fp32 training on a CPU without fast bf16 the matrix products are PyTorch's best, and what
is left of the step is the small operations around them. Measured on an AMD EPYC (AVX2 only) for
the nanoGPT-size GPT (4L/4H/128, batch 12 x 64), a 45-50 ms step spent 6 ms in oneDNN's GELU
forward and backward and 5 ms in the flash-attention kernel, plus copies of q, k and v out of the
packed projection and of the output back (and their gradients). The kernels of
``kernels/avx2.c`` compute both in a few vector passes, the attention straight on the packed
(B, T, 3C) projection into the (B, T, C) layout the output projection reads.

- :func:`gelu`: x (any shape, float32, contiguous) -> GELU(x), the erf form; when a backward can
  follow, the same pass writes the slope Phi(x) + x phi(x), and the backward is dy * slope.
- :func:`causal_attention`: qkv (B, T, 3C) -> y (B, T, C), causal, no mask, no dropout; it keeps
  each query's softmax maximum and normalizer (B, H, T, 2), and the backward recomputes the
  probabilities from them (cheaper than writing (B, H, T, T) out and reading it back).

Both split their work over ``torch.get_num_threads()`` threads of PyTorch's own OpenMP team (a
pool of our own would fight its spinning threads for the cores: measured, the step got up to
1.5x slower), with the same bits for any thread count. They agree with PyTorch's kernels within float
rounding (``tests/models/test_models_native_ops.py``).

Where: the callers (:func:`rnn2gpt.models.ops.gelu`, the GPT's attention over a fresh sequence)
take them only where :func:`usable` says so: float32 CPU tensors outside bf16 autocast and
``torch.compile`` tracing, fast paths on, the kernel built here (:mod:`rnn2gpt.models.native`),
and PyTorch's own kernels at AVX2 (an AVX2-only CPU, or the AVX2 emulation). They were measured
faster than PyTorch's there; against PyTorch's AVX-512 kernels they have not been measured, so
an AVX-512 CPU keeps PyTorch's.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..hardware import cpu_capability
from . import native

KERNEL = "avx2"  # kernels/avx2.c


@functools.cache
def _library() -> ctypes.CDLL | None:
    library, _ = native.load_built(KERNEL)
    if library is None:
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    library.rnn2gpt_gelu.argtypes = [ptr, ptr, ptr, i64, i64]
    library.rnn2gpt_gelu.restype = None
    library.rnn2gpt_causal_attention.argtypes = [ptr] * 3 + [i64] * 5
    library.rnn2gpt_causal_attention.restype = ctypes.c_int
    library.rnn2gpt_causal_attention_backward.argtypes = [ptr] * 4 + [i64] * 5
    library.rnn2gpt_causal_attention_backward.restype = ctypes.c_int
    library.rnn2gpt_layer_norm.argtypes = [ptr] * 6 + [i64, i64, ctypes.c_double, i64]
    library.rnn2gpt_layer_norm.restype = None
    library.rnn2gpt_layer_norm_backward.argtypes = [ptr] * 9 + [i64] * 3
    library.rnn2gpt_layer_norm_backward.restype = ctypes.c_int
    library.rnn2gpt_squared_norm.argtypes = [ptr, ptr, i64, i64]
    library.rnn2gpt_squared_norm.restype = ctypes.c_double
    f64 = ctypes.c_double
    library.rnn2gpt_adamw.argtypes = [ptr] * 6 + [i64] + [f64] * 6 + [i64]
    library.rnn2gpt_adamw.restype = ctypes.c_int
    library.rnn2gpt_set_sgemm.argtypes = [ptr]
    library.rnn2gpt_set_sgemm.restype = None
    library.rnn2gpt_block_forward.argtypes = [ptr] * 4
    library.rnn2gpt_block_forward.restype = ctypes.c_int
    library.rnn2gpt_block_backward.argtypes = [ptr] * 7
    library.rnn2gpt_block_backward.restype = ctypes.c_int
    library.rnn2gpt_blocks_forward.argtypes = [ptr] * 3 + [i64, ptr]
    library.rnn2gpt_blocks_forward.restype = ctypes.c_int
    library.rnn2gpt_blocks_backward.argtypes = [ptr] * 7 + [i64, ptr]
    library.rnn2gpt_blocks_backward.restype = ctypes.c_int
    char = ctypes.c_char
    library.rnn2gpt_own_product.argtypes = [char, char] + [i64] * 3 + [ptr, i64, ptr, i64]
    library.rnn2gpt_own_product.argtypes += [ctypes.c_float, ptr, i64, i64]
    library.rnn2gpt_own_product.restype = ctypes.c_int
    library.rnn2gpt_use_products.argtypes = [ctypes.c_int]
    library.rnn2gpt_use_products.restype = None
    return library


@functools.cache
def _blas_sgemm() -> int | None:
    """The address of the BLAS ``sgemm_`` that ``torch.mm`` calls on float32 CPU tensors (MKL's,
    in PyTorch's x86 Linux builds), handed to the C blocks once: a model then runs it or ours,
    whichever its first passes time faster. None where PyTorch's library does not export one
    (then ours always run)."""
    library = _library()
    path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    if library is None or not path.exists():
        return None
    try:
        function = ctypes.CDLL(str(path)).sgemm_  # the loaded library: dlopen shares it
    except (OSError, AttributeError):
        return None
    address = ctypes.cast(function, ctypes.c_void_p).value
    library.rnn2gpt_set_sgemm(address)
    return address


def blocks_usable(*tensors: Tensor) -> bool:
    """:func:`usable` for the C blocks (:func:`blocks_forward`); hands them the BLAS products to
    time against ours first."""
    if not usable(*tensors):
        return False
    _blas_sgemm()
    return True


def own_product(a: Tensor, b: Tensor, out: Tensor, accumulate: bool = False) -> Tensor:
    """``out (m, n) = a @ b`` (+ ``out`` when ``accumulate``) by the blocks' own AVX2 product
    (``rnn2gpt_own_product``), whatever the shape chose. ``a`` (m, k) and ``b`` (k, n) are
    float32 CPU matrices, each contiguous or the transpose (``.t()``) of a contiguous one; ``out``
    contiguous. For tests and benchmarks."""

    def layout(x: Tensor) -> tuple[bytes, int]:
        if x.stride(1) == 1:
            return b"N", x.stride(0)
        if x.stride(0) == 1:
            return b"T", x.stride(1)
        raise ValueError("own_product takes row-major matrices or their transposes")

    (m, k), n = a.shape, b.shape[1]
    (ta, lda), (tb, ldb) = layout(a), layout(b)
    status = _library().rnn2gpt_own_product(
        ta, tb, m, n, k, a.data_ptr(), lda, b.data_ptr(), ldb, float(accumulate),
        out.data_ptr(), n, torch.get_num_threads(),
    )  # fmt: skip
    _check(status)
    return out


PRODUCTS = ("timed", "ours", "PyTorch's sgemm")
_products = {"forced": None}


def use_products(which: str) -> None:
    """Which matrix products the C blocks run in this process: ``"timed"`` (the default: each
    model shape times both, :mod:`rnn2gpt.models.native_blocks`), or always ``"ours"`` or
    ``"PyTorch's sgemm"`` (ours where PyTorch's library exports none). For benchmarks and tests."""
    if which not in PRODUCTS:
        raise ValueError(f"products are one of {PRODUCTS}, not {which!r}")
    _products["forced"] = None if which == PRODUCTS[0] else which


def forced_products() -> str | None:
    """The products :func:`use_products` forced, or None (timed)."""
    return _products["forced"]


def blas_found() -> bool:
    """Whether PyTorch's library exports the BLAS sgemm the C blocks can call."""
    return _blas_sgemm() is not None


def run_products(which: str) -> None:
    """The C blocks' products from now on: ``"ours"`` or ``"PyTorch's sgemm"`` (ours where
    :func:`blas_found` is False)."""
    _library().rnn2gpt_use_products(2 if which == PRODUCTS[2] and blas_found() else 1)


class BlockShape(ctypes.Structure):
    """A GPT block's sizes for :func:`blocks_forward` and :func:`blocks_backward`."""

    _fields_ = [
        ("batch", ctypes.c_int64),
        ("steps", ctypes.c_int64),
        ("width", ctypes.c_int64),
        ("inner", ctypes.c_int64),
        ("heads", ctypes.c_int64),
        ("threads", ctypes.c_int64),
        ("eps", ctypes.c_double),
    ]


def _addresses(values: list[int | None]) -> ctypes.Array:
    return (ctypes.c_void_p * len(values))(*values)


def blocks_forward(
    weights: list[int | None], saved: list[int], out: int, shape: BlockShape
) -> None:
    """Every GPT block's forward in one C call (``kernels/avx2.c``, ``rnn2gpt_blocks_forward``):
    addresses of each block's 12 parameters in turn (``native_blocks.LayerWeights`` order, None
    for a missing bias), of each block's 13 saved buffers (``native_blocks.SAVED`` order; the
    first block's input is read, the rest written) and of the last block's (N, C) output."""
    layers = len(weights) // 12
    _check(
        _library().rnn2gpt_blocks_forward(
            _addresses(weights), _addresses(saved), out, layers, ctypes.byref(shape)
        )
    )


def blocks_backward(
    weights: list[int | None],
    saved: list[int],
    grads: list[int | None],
    d_out: int,
    d_x: int,
    between: int,
    scratch: int,
    shape: BlockShape,
) -> None:
    """Their backward, the last block first: the gradient at the last block's output (N, C) ->
    at the first one's input (N, C), and each block's parameters' gradients at ``grads`` (None:
    not wanted); ``between`` holds 2 N C floats, scratch N (F + 6C)."""
    layers = len(weights) // 12
    _check(
        _library().rnn2gpt_blocks_backward(
            _addresses(weights),
            _addresses(saved),
            _addresses(grads),
            d_out,
            d_x,
            between,
            scratch,
            layers,
            ctypes.byref(shape),
        )  # fmt: skip
    )


def unavailable_reason() -> str | None:
    """Why these kernels do not run here (one phrase, for ``rnn2gpt doctor``), or None."""
    reason = native.load(KERNEL)[1]  # reads RNN2GPT_FASTPATHS on every call
    if reason is None and cpu_capability() != "AVX2":
        reason = f"PyTorch runs its {cpu_capability()} kernels here, which these were not measured against"
    return reason


def usable(*tensors: Tensor) -> bool:
    """Whether the C kernels may compute on ``tensors`` now: float32 CPU tensors, not traced by
    ``torch.compile``, not under CPU autocast, and :func:`unavailable_reason` None."""
    if torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu"):
        return False
    if not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors):
        return False
    return unavailable_reason() is None and _library() is not None


def training_path() -> str:
    """What computes a GPT's GELU and causal attention in fp32 training here, and why."""
    reason = unavailable_reason()
    if reason is None:
        blocks = (
            "one C call for the blocks (their products ours or PyTorch's sgemm, whichever a "
            "model's first passes time faster)"
            if _blas_sgemm() is not None
            else "one C call for the blocks (our products: PyTorch's library exports no sgemm)"
        )
        return (
            "the exact GELU and causal attention in C (fp32, outside autocast and compile), "
            f"{blocks} where nothing needs the modules, from the tokens to the loss where the "
            "ends are plain too, AdamW's step and clipping in C, and the whole step without "
            "autograd where nothing else would see it (one process, no accumulation or hooks)"
        )
    return f"PyTorch's GELU and attention kernels ({reason})"


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("a C training kernel could not allocate its scratch memory")


def gelu_with_slope(x: Tensor, keep_slope: bool) -> tuple[Tensor, Tensor | None]:
    """x (contiguous float32) -> (GELU(x), its slope Phi(x) + x phi(x) or None), one C pass."""
    y = torch.empty_like(x)
    # GELU'(x) comes almost free with GELU(x) (the same Phi and exponential). Kept instead of
    # x, which nothing else holds on to (the next layer keeps y), it costs no extra memory and
    # makes the backward one multiplication instead of a second pass over the erf. The
    # nanoGPT-size step measured 1.011x faster (benchmarks/RESULTS.md): the multiplication
    # reads the slope back from memory, and the step waits on memory more than on arithmetic.
    slope = torch.empty_like(x) if keep_slope else None
    _library().rnn2gpt_gelu(
        x.data_ptr(),
        y.data_ptr(),
        None if slope is None else slope.data_ptr(),
        x.numel(),
        torch.get_num_threads(),
    )
    return y, slope


def attention_forward(qkv: Tensor, n_head: int) -> tuple[Tensor, Tensor]:
    """qkv (B, T, 3C) contiguous -> (y (B, T, C), stats (B, H, T, 2): each query's softmax
    maximum and 1 / sum, which :func:`attention_backward` recomputes the probabilities from)."""
    batch, steps, width3 = qkv.shape
    width = width3 // 3
    y = qkv.new_empty(batch, steps, width)
    stats = qkv.new_empty(batch, n_head, steps, 2)
    _check(
        _library().rnn2gpt_causal_attention(
            qkv.data_ptr(),
            y.data_ptr(),
            stats.data_ptr(),
            batch,
            steps,
            n_head,
            width // n_head,
            torch.get_num_threads(),
        )
    )
    return y, stats


def attention_backward(qkv: Tensor, stats: Tensor, dy: Tensor, n_head: int) -> Tensor:
    """The gradient of :func:`attention_forward`: dy (B, T, C) contiguous -> dqkv (B, T, 3C)."""
    batch, steps, width3 = qkv.shape
    dqkv = torch.empty_like(qkv)
    _check(
        _library().rnn2gpt_causal_attention_backward(
            qkv.data_ptr(),
            stats.data_ptr(),
            dy.data_ptr(),
            dqkv.data_ptr(),
            batch,
            steps,
            n_head,
            width3 // 3 // n_head,
            torch.get_num_threads(),
        )
    )
    return dqkv


def _pointer(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def layer_norm(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """x (N, C) contiguous -> (LayerNorm(x) (N, C), each row's mean (N,) and 1 / std (N,)),
    what :func:`layer_norm_backward` reads; ``weight`` and ``bias`` (C,) may be None."""
    rows, width = x.shape
    y = torch.empty_like(x)
    mean, rstd = x.new_empty(rows), x.new_empty(rows)
    _library().rnn2gpt_layer_norm(
        x.data_ptr(),
        _pointer(weight),
        _pointer(bias),
        y.data_ptr(),
        mean.data_ptr(),
        rstd.data_ptr(),
        rows,
        width,
        eps,
        torch.get_num_threads(),
    )
    return y, mean, rstd


def layer_norm_backward(
    d_y: Tensor,
    x: Tensor,
    forward: tuple[Tensor, Tensor, Tensor],
    weight: Tensor | None,
    residual: Tensor | None,
    wanted: tuple[bool, bool],
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The gradient of :func:`layer_norm` (``forward`` its result) into x (N, C), plus
    ``residual`` (N, C; None: nothing) in the same pass, and the weight's and bias's gradients
    (C,) where ``wanted``; d_y, x and residual contiguous."""
    rows, width = x.shape
    d_x = torch.empty_like(x)
    d_weight = x.new_empty(width) if wanted[0] else None
    d_bias = x.new_empty(width) if wanted[1] else None
    _check(
        _library().rnn2gpt_layer_norm_backward(
            d_y.data_ptr(),
            x.data_ptr(),
            forward[1].data_ptr(),
            forward[2].data_ptr(),
            _pointer(weight),
            _pointer(residual),
            d_x.data_ptr(),
            _pointer(d_weight),
            _pointer(d_bias),
            rows,
            width,
            torch.get_num_threads(),
        )
    )
    return d_x, d_weight, d_bias


def _pointers(tensors: list[Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _sizes(tensors: list[Tensor]) -> ctypes.Array:
    return (ctypes.c_int64 * len(tensors))(*[t.numel() for t in tensors])


def squared_norm(tensors: list[Tensor]) -> float:
    """sum of every element squared over ``tensors`` (contiguous float32), in one C pass; the
    same bits for any thread count."""
    total = _library().rnn2gpt_squared_norm(
        _pointers(tensors), _sizes(tensors), len(tensors), torch.get_num_threads()
    )
    if total < 0:
        raise MemoryError("the C norm kernel could not allocate its scratch memory")
    return total


def adamw_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    grad_scale: float,
) -> None:
    """One AdamW step in place over ``params`` (contiguous float32, as ``grads``, ``exp_avgs``
    and ``exp_avg_sqs``, each pair the same size), each gradient taken times ``grad_scale``;
    ``steps`` (0-d float32) are incremented first, as :class:`torch.optim.AdamW` keeps them."""
    _check(
        _library().rnn2gpt_adamw(
            _pointers(params),
            _pointers(grads),
            _pointers(exp_avgs),
            _pointers(exp_avg_sqs),
            _pointers(steps),
            _sizes(params),
            len(params),
            lr,
            betas[0],
            betas[1],
            eps,
            weight_decay,
            grad_scale,
            torch.get_num_threads(),
        )
    )


class _Gelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        y, slope = gelu_with_slope(x.contiguous(), ctx.needs_input_grad[0])
        ctx.save_for_backward(slope)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor) -> Tensor:  # type: ignore[override]
        (slope,) = ctx.saved_tensors
        return dy * slope


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: Tensor, n_head: int) -> Tensor:  # type: ignore[override]
        qkv = qkv.contiguous()
        y, stats = attention_forward(qkv, n_head)
        ctx.save_for_backward(qkv, stats)
        ctx.n_head = n_head
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        qkv, stats = ctx.saved_tensors
        return attention_backward(qkv, stats, dy.contiguous(), ctx.n_head), None


def gelu(x: Tensor) -> Tensor:
    """GELU(x), the exact (erf) form, in C; differentiable once. Check :func:`usable` first."""
    return _Gelu.apply(x)


def causal_attention(qkv: Tensor, n_head: int) -> Tensor:
    """qkv (B, T, 3C) packed as ``c_attn`` writes it (q | k | v, heads of C / n_head features
    each) -> y (B, T, C): causal softmax attention with scale 1/sqrt(head width), heads side by
    side as ``c_proj`` reads them. Differentiable once. Check :func:`usable` first."""
    return _CausalAttention.apply(qkv, n_head)


__all__ = [
    "BlockShape",
    "attention_backward",
    "attention_forward",
    "blocks_backward",
    "blocks_forward",
    "blocks_usable",
    "causal_attention",
    "gelu",
    "gelu_with_slope",
    "training_path",
    "unavailable_reason",
    "usable",
]
