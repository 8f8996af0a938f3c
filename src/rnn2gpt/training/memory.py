"""Keep the memory a CPU training step frees inside the process, for the next step to reuse.

A training step allocates and frees the same activation and gradient tensors every time (for the
nanoGPT configuration, a dozen of 0.4-1.5 MB each per layer). glibc's malloc serves blocks from
128 KiB up with ``mmap`` at first and gives freed memory at the heap's top back to the kernel, so
every step faulted hundreds to thousands of fresh zeroed pages back in: 740-1,430 page faults a
step, about 2.2 us each, measured on an AMD EPYC (2-5 ms of a 40 ms step; benchmarks/RESULTS.md).
Raising glibc's mmap and trim thresholds keeps those blocks on the heap between steps: 5-11
faults a step.

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
        logger.debug(
            "memory: %s",
            "freed blocks up to 64 MiB stay in the process (glibc mallopt)"
            if _held
            else "the C library's own allocation policy (not glibc)",
        )
    return _held


def _set_glibc_thresholds() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
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
