"""C kernels for x86 CPUs with AVX2 and FMA: compiled on first use, loaded with ctypes.

The kernels live in ``kernels/avx2.c``, which ships with the package: the int8 weight-only matrix
product (:mod:`rnn2gpt.models.avx2_int8`), a GPT's decoding forward over a few tokens in one
call (:mod:`rnn2gpt.models.native_step`), and the GELU and causal attention of GPT training
(:mod:`rnn2gpt.models.native_ops`). OpenMP links the library to the OpenMP runtime PyTorch has
already loaded (the same ``libgomp.so.1``), so the training kernels run on PyTorch's own threads.

On first use a kernel is compiled with the machine's C compiler (``$CC``, else ``cc``, ``gcc``
or ``clang``; ``-O3 -mavx2 -mfma -fopenmp``, under a second) into ``<cache>/kernels/``
(:func:`rnn2gpt.config.default_cache_dir`), named after a hash of the source, the compiler and
the flags, written atomically (processes building at once never load half a file), and loaded
with ctypes for the rest of the process. ctypes releases the GIL during a call, so the server's
threads can run kernels side by side.

Where kernels cannot run (not x86 with AVX2 and FMA, PyTorch capped below AVX2, no compiler, a
failed build) or may not (``RNN2GPT_FASTPATHS=off``), :func:`load` answers ``(None, why)`` with
one phrase for ``rnn2gpt doctor`` and the log; callers then take their PyTorch path.
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

from ..atomic import write_atomic
from ..config import default_cache_dir
from ..hardware import cpu_capability, cpu_features, fastpaths_enabled

logger = logging.getLogger(__name__)

KERNELS_DIR = Path(__file__).parent / "kernels"
FLAGS = ("-O3", "-mavx2", "-mfma", "-fPIC", "-shared", "-pthread", "-fopenmp")
# A compiler without OpenMP (clang without libomp) builds the kernels without it: the training
# kernels (native_ops) then run on one thread.
OPENMP = "-fopenmp"
LIBRARIES = ("-lm",)  # after the source: erff, expf, tanhf
_COMPILERS = ("cc", "gcc", "clang")
_COMPILE_SECONDS = 120


def load(name: str) -> tuple[ctypes.CDLL | None, str | None]:
    """(the loaded library of ``kernels/<name>.c``, None), or (None, why it cannot run now).

    Fast paths are read on every call (a setting); the machine's answer is decided once per
    process and kernel (:func:`load_built`).
    """
    if not fastpaths_enabled():
        return None, "fast paths are off (RNN2GPT_FASTPATHS=off)"
    return load_built(name)


@functools.cache
def load_built(name: str) -> tuple[ctypes.CDLL | None, str | None]:
    """The machine's answer for kernel ``name``, whatever the fast-path setting."""
    reason = unsupported_here()
    if reason is not None:
        return None, reason
    try:
        return ctypes.CDLL(str(built_library(KERNELS_DIR / f"{name}.c"))), None
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        reason = f"the C kernel could not be built or loaded ({_one_line(exc)})"
        logger.info("C kernel %s unavailable: %s", name, reason)
        return None, reason


def unsupported_here() -> str | None:
    """Why this machine rules the C kernels out before any build; None if it does not."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({platform.machine() or 'unknown'})"
    if not cpu_features().get("avx2") or not _has_fma():
        return "this CPU lacks AVX2 or FMA"
    if cpu_capability() not in ("AVX2", "AVX512"):
        return f"PyTorch is capped below AVX2 here (ATen capability {cpu_capability()})"
    if compiler() is None:
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


def compiler() -> str | None:
    """``$CC`` if set (and found), else the first of cc, gcc, clang on the PATH."""
    chosen = os.environ.get("CC")
    if chosen:
        return shutil.which(chosen)
    return next((found for name in _COMPILERS if (found := shutil.which(name))), None)


def built_library(source: Path) -> Path:
    """``source`` compiled into the cache, built there first if missing (atomically); with
    OpenMP where the compiler has it, else without."""
    try:
        return _build(source, FLAGS)
    except RuntimeError as exc:
        if "no C compiler" in str(exc):
            raise
        logger.info("building %s with OpenMP failed (%s); building without", source.name, exc)
        return _build(source, tuple(flag for flag in FLAGS if flag != OPENMP))


def _build(source: Path, flags: tuple[str, ...]) -> Path:
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found")
    text = source.read_bytes()
    digest = hashlib.sha256(text + " ".join((cc, *flags, *LIBRARIES)).encode()).hexdigest()[:16]
    target = default_cache_dir() / "kernels" / f"{source.stem}-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".build-{os.getpid()}-{target.name}")
    try:
        result = subprocess.run(
            [cc, *flags, "-o", str(scratch), str(source), *LIBRARIES],
            capture_output=True,
            text=True,
            timeout=_COMPILE_SECONDS,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{Path(cc).name} failed: {result.stderr.strip()[:300]}")
        built = scratch.read_bytes()
    finally:
        scratch.unlink(missing_ok=True)
    write_atomic(target, lambda fh: fh.write(built), prefix=".kernel-")
    logger.info("built the C kernel %s: %s", source.name, target)
    return target


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


__all__ = [
    "FLAGS",
    "KERNELS_DIR",
    "built_library",
    "compiler",
    "load",
    "load_built",
    "unsupported_here",
]
