"""Numeric precision for training and evaluation: fp32, or bf16 autocast where it runs fast.

``train.precision`` is ``auto``, ``fp32`` or ``bf16``. ``auto`` picks bf16 autocast only when the
hardware runs it faster: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX (as
PyTorch runs on it: see :func:`rnn2gpt.hardware.cpu_has_fast_bf16`) on which bf16 autocast
matmuls also *measure* faster than fp32 (:func:`rnn2gpt.hardware.bf16_autocast_speedup`: some
AVX512-BF16 CPUs run them at half fp32's speed). Elsewhere bf16 is emulated or slower than
fp32, so ``auto`` stays in fp32. bf16 under ``auto`` is a fast path:
``RNN2GPT_FASTPATHS=off`` keeps ``auto`` in fp32, while an explicit ``bf16`` stays bf16. Weights and
optimizer state always stay in fp32 (autocast only lowers the matmuls), so no loss scaling is
needed: bf16 has fp32's exponent range.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, NamedTuple

import torch

from ..errors import ConfigError
from ..hardware import (
    BF16_MIN_SPEEDUP,
    bf16_autocast_speedup,
    cpu_has_fast_bf16,
    fast_bf16_reason,
    fastpaths_enabled,
)

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


class PrecisionChoice(NamedTuple):
    """What ``train.precision`` resolves to on a device, and why."""

    dtype: torch.dtype | None  # the autocast dtype; None = fp32
    reason: str  # e.g. "fp32 (auto: this CPU has no native bf16 (AVX512-BF16/AMX))"
    slow: bool = False  # bf16 asked for explicitly where it is emulated


def precision_choice(precision: str, device: torch.device | str) -> PrecisionChoice:
    """What ``precision`` (auto | fp32 | bf16) means on ``device``, without logging it.

    Raises:
        ConfigError: an unknown precision, or ``bf16`` on a CUDA device without bf16 support.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ConfigError(
            f"train.precision must be one of {', '.join(PRECISIONS)} (got {precision!r})"
        )
    if precision == "fp32":
        return PrecisionChoice(None, "fp32 (as asked)")
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        why = "this GPU supports bf16" if supported else "this GPU has no bf16 support"
    elif device.type == "cpu":
        supported = cpu_has_fast_bf16()
        why = fast_bf16_reason()
        if supported and precision == "auto" and fastpaths_enabled():
            speedup = bf16_autocast_speedup()
            supported = speedup >= BF16_MIN_SPEEDUP
            why += (
                f"; bf16 autocast matmuls measure {speedup:.2f}x fp32's speed here "
                f"({BF16_MIN_SPEEDUP:g}x needed)"
            )
    else:
        supported = False
        why = f"bf16 autocast is not tuned for {device.type} devices"
    if precision == "bf16":
        if device.type == "cuda" and not supported:
            raise ConfigError(
                "train.precision=bf16 needs a GPU with bf16 support; use train.precision=fp32"
            )
        if not supported:
            reason = f"bf16 autocast as asked, although {why} (it may be slow)"
            return PrecisionChoice(torch.bfloat16, reason, slow=True)
        return PrecisionChoice(torch.bfloat16, "bf16 autocast (as asked)")
    if not fastpaths_enabled():
        return PrecisionChoice(None, "fp32 (auto: RNN2GPT_FASTPATHS=off)")
    if supported:
        return PrecisionChoice(torch.bfloat16, f"bf16 autocast (auto: {why})")
    return PrecisionChoice(None, f"fp32 (auto: {why})")


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = fp32); the choice is logged.

    Raises:
        ConfigError: as :func:`precision_choice`.
    """
    choice = precision_choice(precision, device)
    (logger.warning if choice.slow else logger.info)("precision: %s", choice.reason)
    return choice.dtype


def autocast(
    device: torch.device | str, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """A context that runs the forward pass in ``dtype`` autocast, or does nothing when None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


__all__ = [
    "PRECISIONS",
    "PrecisionChoice",
    "autocast",
    "cpu_has_fast_bf16",
    "precision_choice",
    "resolve_precision",
]
