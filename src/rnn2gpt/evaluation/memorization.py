"""Memorization check: the longest span of a sample copied verbatim from the training text.

:class:`CopyIndex` indexes every k-gram of the training token ids (k = 8 by default) by a 64-bit
polynomial hash, sorted once (``np.argsort``; about 15 s and 2 GiB for 100 M tokens). A query
looks up each k-gram of the sample with a binary search and, at every corpus position where the
k-gram occurs, extends the match backwards and forwards token by token (vectorised), so a
copied span is found whole from any k-gram inside it. Spans shorter than k are not reported
(length 0): they are everyday phrases, not memorization.

A k-gram occurring more than ``max_candidates`` times in the corpus is checked at that many of
its occurrences only: such a k-gram is a stock phrase, and a long copy that contains it also
contains rarer k-grams, which find it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_BASE = np.uint64(0x9E3779B97F4A7C15)  # an odd 64-bit multiplier; arithmetic wraps mod 2**64


@dataclass(frozen=True)
class CopiedSpan:
    """The longest verbatim copy: ``length`` tokens of the sample from ``sample_start``, found
    in the training ids at ``corpus_start`` (length 0 and starts -1: no copy of k tokens or
    more)."""

    length: int
    sample_start: int
    corpus_start: int


def kgram_hashes(ids: np.ndarray, k: int) -> np.ndarray:
    """(n,) token ids -> (n - k + 1,) uint64 hashes of every window of k tokens."""
    ids = np.asarray(ids).astype(np.uint64, copy=False)
    count = len(ids) - k + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    hashes = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(k):
            hashes *= _BASE
            hashes += ids[offset : offset + count] + np.uint64(1)
    return hashes


class CopyIndex:
    """An index of the training ids for :meth:`longest_copy` queries.

    Args:
        ids: (N,) the training text's token ids (any integer dtype; kept as int32).
        k: the shortest span reported, and the width of the indexed windows.
        max_candidates: occurrences of one k-gram checked per query position.
    """

    def __init__(self, ids: np.ndarray, *, k: int = 8, max_candidates: int = 64) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1 (got {k})")
        self.k = k
        self.max_candidates = max_candidates
        self.ids = np.ascontiguousarray(np.asarray(ids), dtype=np.int32)
        hashes = kgram_hashes(self.ids, k)
        self.order = np.argsort(hashes, kind="stable")  # corpus positions by hash
        self.sorted_hashes = hashes[self.order]

    def __len__(self) -> int:
        return len(self.ids)

    def longest_copy(self, sample: np.ndarray | list[int]) -> CopiedSpan:
        """The longest span of ``sample`` (token ids) that occurs verbatim in the training ids."""
        sample = np.asarray(sample, dtype=np.int32)
        best = CopiedSpan(0, -1, -1)
        queries = kgram_hashes(sample, self.k)
        if len(queries) == 0 or len(self.sorted_hashes) == 0:
            return best
        lo = np.searchsorted(self.sorted_hashes, queries, side="left")
        hi = np.searchsorted(self.sorted_hashes, queries, side="right")
        covered_to = -1  # sample positions inside the best span found need no second look
        for start in np.flatnonzero(hi > lo):
            if start + self.k <= covered_to and best.length:
                continue
            positions = self.order[lo[start] : min(hi[start], lo[start] + self.max_candidates)]
            length, back, position = self._extend(sample, int(start), positions)
            if length > best.length:
                best = CopiedSpan(length, int(start) - back, position - back)
                covered_to = best.sample_start + best.length
        return best

    def _extend(
        self, sample: np.ndarray, start: int, positions: np.ndarray
    ) -> tuple[int, int, int]:
        """Longest match through sample[start] at the candidate corpus ``positions``:
        (length, tokens matched before start, the candidate's corpus position)."""
        forward = self._run(sample[start:], positions, step=1)
        backward = self._run(sample[:start][::-1], positions - 1, step=-1)
        total = forward + backward
        best = int(np.argmax(total))
        return int(total[best]), int(backward[best]), int(positions[best])

    def _run(self, wanted: np.ndarray, positions: np.ndarray, *, step: int) -> np.ndarray:
        """Per candidate, how many tokens of ``wanted`` match the corpus from its position on
        (going forwards with step 1, backwards with step -1)."""
        if len(wanted) == 0:
            return np.zeros(len(positions), dtype=np.int64)
        offsets = np.arange(len(wanted)) * step
        where = positions[:, None] + offsets[None, :]  # (C, M) corpus positions
        inside = (where >= 0) & (where < len(self.ids))
        tokens = self.ids[np.clip(where, 0, len(self.ids) - 1)]
        equal = inside & (tokens == wanted[None, :])
        mismatch = ~equal
        # the first mismatch per row; rows that match throughout have length M
        return np.where(mismatch.any(axis=1), mismatch.argmax(axis=1), len(wanted))


__all__ = ["CopiedSpan", "CopyIndex", "kgram_hashes"]
