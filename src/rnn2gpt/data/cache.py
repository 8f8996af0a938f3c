"""Token ids of a corpus, cached on disk so a second run skips tokenization.

A cache entry is a raw array of ids (no header: ``ndarray.tofile``) named after the sha256 of the
text's UTF-8 bytes, the tokenizer's fingerprint and the dtype. It is opened read-only with
``np.memmap``, so a large corpus costs page cache rather than process memory and several
processes (distributed ranks) share one copy. Entries are written to a temporary file and renamed
into place, so a crash or a concurrent writer never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from ..atomic import write_atomic
from ..config import CACHE_ENV, default_cache_dir

logger = logging.getLogger(__name__)

_SUFFIX = ".ids"


class EncodesArrays(Protocol):
    """The part of the tokenizer contract the cache needs."""

    @property
    def vocab_size(self) -> int: ...

    def encode_array(self, text: str) -> np.ndarray: ...

    def fingerprint(self) -> str: ...


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id: uint16 up to 65,536 ids, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def encode_cached(
    text: str, tokenizer: EncodesArrays, cache_dir: str | os.PathLike[str] = ""
) -> np.ndarray:
    """Ids of ``text`` (1-D, uint16 or uint32), read from the cache or computed and stored there.

    Returns a read-only ``np.memmap`` when the cache is usable; when the cache directory cannot be
    written, logs a warning and returns the ids in memory instead.
    """
    dtype = ids_dtype(tokenizer.vocab_size)
    if not text:
        return np.zeros(0, dtype=dtype)  # mmap cannot map an empty file
    directory = default_cache_dir(cache_dir)
    text_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
    key = hashlib.sha256(f"{text_hash}:{tokenizer.fingerprint()}".encode()).hexdigest()
    path = directory / f"{key[:40]}.{dtype.name}{_SUFFIX}"

    cached = _open(path, dtype)
    if cached is not None:
        logger.debug("token ids cache hit: %s (%d ids)", path, len(cached))
        return cached

    ids = _to_dtype(tokenizer.encode_array(text), dtype, tokenizer.vocab_size)
    try:
        write_atomic(path, ids.tofile)
    except OSError as exc:
        logger.warning(
            "cannot write the token cache in %s (%s); keeping ids in memory. Set data.cache_dir "
            "or $%s to a writable directory to reuse them next time",
            directory,
            exc.strerror or exc,
            CACHE_ENV,
        )
        return ids
    logger.info("cached %d token ids in %s", len(ids), path)
    reopened = _open(path, dtype)
    return reopened if reopened is not None else ids


def _open(path: Path, dtype: np.dtype) -> np.ndarray | None:
    """The cached ids at ``path``, or None when absent or unusable (then they are recomputed)."""
    try:
        size = path.stat().st_size
    except OSError:
        return None
    if size == 0 or size % dtype.itemsize:
        logger.warning("ignoring a damaged token cache entry %s (%d bytes)", path, size)
        return None
    try:
        return np.memmap(path, dtype=dtype, mode="r")
    except (OSError, ValueError) as exc:
        logger.warning("cannot open token cache entry %s (%s); recomputing", path, exc)
        return None


def _to_dtype(ids: np.ndarray, dtype: np.dtype, vocab_size: int) -> np.ndarray:
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) > np.iinfo(dtype).max):
        # A narrowing cast would wrap silently and train on the wrong tokens.
        raise ValueError(
            f"tokenizer produced ids in [{int(ids.min())}, {int(ids.max())}], outside "
            f"{dtype.name} for vocab_size {vocab_size}"
        )
    return np.ascontiguousarray(ids, dtype=dtype)


__all__ = ["CACHE_ENV", "default_cache_dir", "encode_cached", "ids_dtype"]
