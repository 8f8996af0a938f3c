"""Keep the memory a CPU training step frees inside the process, for the next step to reuse.

A training step allocates and frees the same activation and gradient tensors every time.
glibc's malloc serves blocks from 128 KiB up with ``mmap`` at first and gives freed memory at the
heap's top back to the kernel, so every step faulted thousands of fresh zeroed pages back in, about
2.2 us each. Measured on an AMD EPYC (benchmarks/RESULTS.md), per step:

- the default character LSTM: 23-26k faults, 306-327 ms; kept in the process, 0 faults, 243-272 ms;
- the Penn Treebank word LSTM: 5.7-6.9k faults, 89-96 ms; kept, 0 faults, 71-72 ms;
- the nanoGPT-size GPT: 740-1,430 faults, 38.5-45.8 ms; kept, 5-11 faults, 36.6-38.1 ms.

Raising glibc's mmap and trim thresholds keeps those blocks on the heap between steps.

The setting is process-wide and stays after the run (glibc cannot go back to its adaptive
thresholds); the process then holds on to its peak heap, which training reaches on every step
anyway. Tensors larger than :data:`MMAP_THRESHOLD` still come from ``mmap`` and go back when freed.
Other C libraries (musl, macOS, Windows) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger(__name__)

# mallopt's parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 64 << 20  # blocks up to this size come from the heap
TRIM_THRESHOLD = 256 << 20  # free memory at the heap's top kept before returning any

_held: bool | None = None  # None: not tried yet in this process


def hold_freed_memory() -> bool:
    """Set glibc's thresholds once per process; True if they are set (glibc), else False."""
    global _held
    if _held is None:
        _held = _set_glibc_thresholds()
        logger.debug("memory: %s", policy())
    return _held


def policy() -> str:
    """What a CPU training run does with freed memory here (one phrase, for ``rnn2gpt doctor``)."""
    if _held is False or not _is_glibc():
        return "the C library's own allocation policy (the thresholds are glibc's, on Linux)"
    return "freed blocks up to 64 MiB stay in the process between steps (glibc mallopt)"


def _is_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _set_glibc_thresholds() -> bool:
    if not _is_glibc():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The trim threshold first: setting the mmap threshold is what turns glibc's adaptive
    # thresholds off, and both must be in place before the next free.
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    )
