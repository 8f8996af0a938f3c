"""Prepacked linear weights for fast CPU decoding (oneDNN's blocked weight layout).

A decode step multiplies 1-8 rows of activations by every weight matrix of the model, so its
speed is how fast the matrix kernels stream the weights. PyTorch's ``F.linear`` on CPU re-packs
the (out, in) weight on every call, which at a handful of rows costs more than the product
itself. oneDNN can pack a weight once into its own blocked layout and reuse it; measured on one
CPU (X1, GPT-2 small shapes, one thread, per decode step), that is 2.1x faster in bf16 at 1 and
8 rows and 2.6x faster in fp32 at 8 rows. On another (X3) a packed call costs about 40 us more
than ``F.linear`` on the column-major layout of :func:`rnn2gpt.models.base.use_inference_layout`,
and loses at one fp32 row for every shape. So which one runs is measured, not assumed: the first
call of each (shape, dtype, layout, row-count class) times both on the layer's own weight
(:func:`packed_is_faster`) and the faster is kept for the rest of the process. The timing streams
the weight from memory as a decode step of the whole model does (a ring of copies as large as
the model), because the two kernels rank differently hot in cache and streamed.

:class:`PackedLinear` is ``nn.Linear`` (same parameters, state-dict names and results) with a
packed copy of its weight used only where it is valid: no autograd, no autocast, CPU tensors of
the weight's dtype. The packed copy follows the weight: if the weight is changed in place,
replaced or cast (``model.to(torch.bfloat16)``), it is rebuilt on the next call. It costs one
extra copy of the weights in memory.

The packing operators are private PyTorch operators (``torch.ops.mkldnn``); support is probed at
run time (present, and equal to ``F.linear`` on a small example: oneDNN capped below a dtype's
instructions, as by ``ONEDNN_MAX_CPU_ISA=AVX2`` for bf16, fails the probe), and without it
:func:`pack_linear_layers` changes nothing. Packing is a fast path: ``RNN2GPT_FASTPATHS=off``
turns it off (:mod:`rnn2gpt.hardware`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..hardware import fastpaths_enabled

logger = logging.getLogger(__name__)

# The batch size oneDNN is told to expect when it picks the blocked layout. Measured with GPT-2
# small shapes: a hint of 8 serves 1 and 8 rows within noise of the best per-size hint.
_ROWS_HINT = 8
_DTYPES = (torch.float32, torch.bfloat16)
# Packed must beat F.linear by this much to be chosen: timing noise never flips a close call.
_MARGIN = 0.9
# Each packed call costs a fixed few tens of microseconds more than nn.Linear's kernel; below
# this many weights that overhead outweighs the faster read (measured: nanoGPT's 128-wide
# layers decode at 833 tokens/s packed against 1,564 unpacked), so small layers stay plain.
MIN_PACKED_WEIGHTS = 1 << 18
# A decode step reads each weight of the model once, so when a layer's turn comes again the
# other layers have passed through the caches. Its kernels are timed over a ring of copies of its
# weight as large as the model's parameters (at most this many bytes), which reproduces that
# reuse distance. Timed hot on its one weight, fp32 nn.Linear looked faster at 5 rows than it
# runs inside a model (X3, 1152 x 384: 63 us hot against 303 us streamed; packed 108 against 215).
RING_BYTES_CAP = 128 << 20


@functools.cache
def packed_linear_supported(dtype: torch.dtype) -> bool:
    """Whether this PyTorch build can pack ``dtype`` linear weights and gets the right answer."""
    if dtype not in _DTYPES or not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(24, 16, generator=generator).to(dtype)
        bias = torch.randn(24, generator=generator).to(dtype)
        x = torch.randn(3, 16, generator=generator).to(dtype)
        with torch.no_grad():
            packed = _pack(weight)
            got = _packed_linear(x, packed, bias)
        expected = F.linear(x, weight, bias)
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):
        return False
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    return got.shape == expected.shape and torch.allclose(
        got.float(), expected.float(), atol=tolerance, rtol=tolerance
    )


def _pack(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) weight -> opaque oneDNN tensor in its blocked layout."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), _ROWS_HINT)


def _packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """x (..., in) -> (..., out) with a weight packed by :func:`_pack`."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


class PackedLinear(nn.Linear):
    """``nn.Linear`` that multiplies by a packed copy of its weight when it can.

    x (..., in) -> (..., out). Made from an existing layer by :func:`pack_linear_layers`
    (class swap, no new parameters); training and autocast take ``nn.Linear``'s path.
    """

    _packed: torch.Tensor | None = None
    _packed_key: tuple[Any, ...] | None = None
    # Bytes of the parameters of the model the layer sits in (set by pack_linear_layers): how
    # much memory a decode step streams between two calls of this layer.
    _working_set: int = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Called for every layer of every decode step: the checks are kept to attribute reads
        # and one dict lookup (the full checks cost ~30 us a call, 7% of a 6L/384 GPT's step).
        weight = self.weight
        if (
            torch.is_grad_enabled()
            or x.dtype is not weight.dtype
            or not (x.is_cpu and weight.is_cpu)
            or torch.is_autocast_enabled("cpu")
        ):
            return F.linear(x, weight, self.bias)
        route = (_row_class(x.numel() // max(x.shape[-1], 1)), weight.dtype, weight.stride())
        routes = self.__dict__.setdefault("_routes", {})
        packed = routes.get(route)
        if packed is None:
            packed = routes[route] = packed_linear_supported(weight.dtype) and packed_is_faster(
                self, x
            )
        if not packed:
            return F.linear(x, weight, self.bias)
        return _packed_linear(x, self._current_packed(), self.bias)

    def __getstate__(self) -> dict[str, Any]:
        # The packed tensor is opaque (no copy or pickle support); copies rebuild it on use.
        state = super().__getstate__()
        state.pop("_packed", None)
        state.pop("_packed_key", None)
        state.pop("_routes", None)
        return state

    def _current_packed(self) -> torch.Tensor:
        """The packed weight, rebuilt if the weight was replaced, cast or edited in place."""
        weight = self.weight
        key = (weight.data_ptr(), weight.dtype, _version(weight), tuple(weight.shape))
        if self._packed is None or self._packed_key != key:
            self._packed = _pack(weight)
            self._packed_key = key
        return self._packed


_CHOICES: dict[tuple[Any, ...], bool] = {}


def _row_class(rows: int) -> int:
    """Row counts timed alike: 1 (a decode step), 2-8 (a small batch), more (a prefill)."""
    return 1 if rows <= 1 else 8 if rows <= 8 else 64


def packed_is_faster(layer: PackedLinear, x: torch.Tensor) -> bool:
    """Whether ``layer``'s packed weight multiplies ``x``'s rows faster than ``F.linear`` here.

    Timed once per (shape, dtype, weight layout, row-count class, streamed or hot) on copies of
    the layer's own weight (:func:`_ring_length`, same strides) and this ``x``, then remembered
    for the process (both give the same results within rounding).
    """
    weight = layer.weight
    rows = x.numel() // max(x.shape[-1], 1)
    copies = _ring_length(layer)
    key = (tuple(weight.shape), weight.dtype, weight.stride(), _row_class(rows), copies > 1)
    choice = _CHOICES.get(key)
    if choice is None:
        ring = [weight.detach()] + [weight.detach().clone() for _ in range(copies - 1)]
        packs = [layer._current_packed()] + [_pack(w) for w in ring[1:]]
        bias = layer.bias

        def plain() -> None:
            for w in ring:
                F.linear(x, w, bias)

        def packed() -> None:
            for p in packs:
                _packed_linear(x, p, bias)

        calls = 1 if len(ring) > 1 else 3  # a pass over a ring is many calls already
        plain_s = _best_seconds(plain, calls=calls) / len(ring)
        packed_s = _best_seconds(packed, calls=calls) / len(ring)
        choice = _CHOICES[key] = packed_s < _MARGIN * plain_s
        logger.info(
            "linear %s %s, %d rows%s: %s (packed %.0f us, nn.Linear %.0f us)",
            "x".join(map(str, weight.shape)),
            str(weight.dtype).removeprefix("torch."),
            rows,
            ", streamed" if len(ring) > 1 else "",
            "oneDNN-packed" if choice else "nn.Linear",
            1e6 * packed_s,
            1e6 * plain_s,
        )
    return choice


def _ring_length(layer: PackedLinear) -> int:
    """How many copies of the layer's weight (itself included) fill its model's working set, up
    to :data:`RING_BYTES_CAP`: cycling through them streams each from memory."""
    weight = layer.weight
    size = max(weight.numel() * weight.element_size(), 1)
    return max(1, min(layer._working_set, RING_BYTES_CAP) // size)


def _best_seconds(fn: Callable[[], Any], repeats: int = 5, calls: int = 3) -> float:
    """The best of ``repeats`` timings of ``calls`` calls (after a warm-up), per call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def _version(tensor: torch.Tensor) -> int:
    """The in-place edit counter; -1 for tensors made under ``torch.inference_mode()``, which
    keep none (a checkpoint loaded there)."""
    if tensor.is_inference():
        return -1
    return tensor._version


def pack_linear_layers(model: nn.Module) -> nn.Module:
    """Turn every plain CPU ``nn.Linear`` of ``model`` with at least :data:`MIN_PACKED_WEIGHTS`
    weights into a :class:`PackedLinear`, in place.

    Weights are packed now (so the first generation does not pay for it) and repacked lazily if
    they change. Layers of other classes (LoRA adapters...) and unsupported dtypes are left
    alone, and so is everything under ``RNN2GPT_FASTPATHS=off``. Returns ``model``.
    """
    if not fastpaths_enabled():
        return model
    working_set = sum(p.numel() * p.element_size() for p in model.parameters())
    for module in model.modules():
        if type(module) is not nn.Linear or module.weight.device.type != "cpu":
            continue
        if module.weight.numel() < MIN_PACKED_WEIGHTS:
            continue
        if not packed_linear_supported(module.weight.dtype):
            continue
        module.__class__ = PackedLinear
        module._working_set = working_set
        with torch.no_grad():
            module._current_packed()
    return model


__all__ = ["PackedLinear", "pack_linear_layers", "packed_is_faster", "packed_linear_supported"]
