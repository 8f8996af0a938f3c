"""Numeric precision for training and evaluation: fp32, or bf16 autocast where it runs fast.

``train.precision`` is ``auto``, ``fp32`` or ``bf16``. ``auto`` picks bf16 autocast only when the
hardware has native bf16 arithmetic (a CUDA GPU that supports it, or a CPU with AVX512-BF16 or
AMX); elsewhere bf16 is emulated and slower than fp32, so ``auto`` stays in fp32. Weights and
optimizer state always stay in fp32 (autocast only lowers the matmuls), so no loss scaling is
needed: bf16 has fp32's exponent range.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AVX512-BF16 or AMX tiles).

    The probes are private PyTorch helpers, hence the ``getattr`` guards: a PyTorch without them
    simply reports no fast bf16.
    """
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check: Callable[[], bool] | None = getattr(torch.cpu, probe, None)
        if check is None:
            continue
        try:
            if check():
                return True
        except Exception:  # pragma: no cover - a probe that fails means "unknown", i.e. no
            continue
    return False


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: ``torch.bfloat16`` or None (fp32).

    Raises:
        ConfigError: an unknown precision, or ``bf16`` on a CUDA device without bf16 support.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ConfigError(
            f"train.precision must be one of {', '.join(PRECISIONS)} (got {precision!r})"
        )
    if precision == "fp32":
        logger.info("precision: fp32 (as asked)")
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        why = "this GPU supports bf16" if supported else "this GPU has no bf16 support"
    elif device.type == "cpu":
        supported = cpu_has_fast_bf16()
        why = (
            "this CPU has AVX512-BF16/AMX"
            if supported
            else "this CPU has no native bf16 (AVX512-BF16/AMX)"
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
            logger.warning("precision: bf16 autocast as asked, although %s (it may be slow)", why)
        else:
            logger.info("precision: bf16 autocast (as asked)")
        return torch.bfloat16
    # auto
    if supported:
        logger.info("precision: bf16 autocast (auto: %s)", why)
        return torch.bfloat16
    logger.info("precision: fp32 (auto: %s)", why)
    return None


def autocast(
    device: torch.device | str, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """A context that runs the forward pass in ``dtype`` autocast, or does nothing when None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


__all__ = ["PRECISIONS", "autocast", "cpu_has_fast_bf16", "resolve_precision"]
