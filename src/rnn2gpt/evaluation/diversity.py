"""Diversity and repetition metrics of generated text.

Every metric works on *units*: whitespace-separated words by default (``unit="word"``),
characters (``unit="char"``), or ready-made sequences (token ids) passed to the sequence
functions directly.

- ``distinct-n`` (Li et al., 2016): distinct n-grams / all n-grams, pooled over every sample.
  1.0 means no n-gram ever repeats; low values mean the samples say the same things.
- ``repetition rate``: the fraction of n-grams of a sample that already occurred earlier *in the
  same sample*, pooled over samples (sum of repeats / sum of n-grams). It catches the loops
  ("the the the ...") that greedy decoding falls into; 0.0 means no loop at all.
- ``copied fraction``: the fraction of generated n-grams that occur anywhere in the training
  text. High values at a large n mean the model recites its training data.

An empty pool (samples shorter than n units) gives 0.0, never a division error.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import Any

from ..errors import ConfigError

UNITS = ("word", "char")


def split_units(text: str, unit: str = "word") -> list[str]:
    """``text`` as a list of units: whitespace-separated words or single characters."""
    if unit == "word":
        return text.split()
    if unit == "char":
        return list(text)
    raise ConfigError(f"unit must be one of {', '.join(UNITS)} (got {unit!r})")


def ngrams(seq: Sequence[Hashable], n: int) -> Iterator[tuple[Hashable, ...]]:
    """The n-grams of ``seq`` in order (none when ``len(seq) < n``)."""
    if n < 1:
        raise ConfigError(f"n-gram size must be at least 1 (got {n})")
    return zip(*(seq[i:] for i in range(n)))


def distinct_n(samples: Iterable[Sequence[Hashable]], n: int) -> float:
    """Distinct n-grams / total n-grams over all ``samples`` (each a sequence of units)."""
    seen: set[tuple[Hashable, ...]] = set()
    total = 0
    for sample in samples:
        for gram in ngrams(sample, n):
            seen.add(gram)
            total += 1
    return len(seen) / total if total else 0.0


def repetition_rate(samples: Iterable[Sequence[Hashable]], n: int = 4) -> float:
    """Fraction of n-grams that repeat an earlier n-gram of the same sample (pooled)."""
    repeats = total = 0
    for sample in samples:
        seen: set[tuple[Hashable, ...]] = set()
        for gram in ngrams(sample, n):
            total += 1
            if gram in seen:
                repeats += 1
            else:
                seen.add(gram)
    return repeats / total if total else 0.0


def copied_fraction(
    samples: Iterable[Sequence[Hashable]], reference: Sequence[Hashable], n: int = 4
) -> float:
    """Fraction of the samples' n-grams (counted with repeats) found anywhere in ``reference``.

    Only the generated n-grams are held in memory; the reference (a whole training text) is
    streamed past them once.
    """
    counts: dict[tuple[Hashable, ...], int] = {}
    for sample in samples:
        for gram in ngrams(sample, n):
            counts[gram] = counts.get(gram, 0) + 1
    total = sum(counts.values())
    if not total:
        return 0.0
    found: set[tuple[Hashable, ...]] = set()
    for gram in ngrams(reference, n):
        if gram in counts:
            found.add(gram)
            if len(found) == len(counts):
                break
    return sum(counts[g] for g in found) / total


def diversity_metrics(
    samples: Sequence[str],
    *,
    train_text: str | None = None,
    unit: str = "word",
    repetition_n: int = 4,
    copy_n: int = 4,
) -> dict[str, Any]:
    """All diversity metrics of generated ``samples`` (texts), in ``unit`` units.

    Returns ``{"distinct_1", "distinct_2", "repetition_rate", "copied_fraction" (None without
    ``train_text``), "samples", "units" (total units generated), "unit", "repetition_n",
    "copy_n"}``.
    """
    split = [split_units(s, unit) for s in samples]
    copied = None
    if train_text is not None:
        copied = copied_fraction(split, split_units(train_text, unit), copy_n)
    return {
        "distinct_1": distinct_n(split, 1),
        "distinct_2": distinct_n(split, 2),
        "repetition_rate": repetition_rate(split, repetition_n),
        "copied_fraction": copied,
        "samples": len(split),
        "units": sum(len(s) for s in split),
        "unit": unit,
        "repetition_n": repetition_n,
        "copy_n": copy_n,
    }


__all__ = [
    "UNITS",
    "copied_fraction",
    "distinct_n",
    "diversity_metrics",
    "ngrams",
    "repetition_rate",
    "split_units",
]
