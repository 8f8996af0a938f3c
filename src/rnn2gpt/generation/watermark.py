"""A watermark in what a model writes, and its detection (after Kirchenbauer et al., 2023, "A
Watermark for Large Language Models").

At every step the previous ``context`` tokens and a secret key pick a *green list*, a
pseudo-random fraction ``gamma`` of the vocabulary, and ``delta`` is added to the green tokens'
scores. Text written that way holds more green tokens than chance; text written without it (by a
person, or by a model without the key) holds about ``gamma`` of them. Detection needs the key and
the tokenizer, not the model: it counts green tokens and computes the one-sided z-score

    z = (green - gamma * T) / sqrt(T * gamma * (1 - gamma))

over the T scored tokens, and its p-value under the normal approximation.

**The green list.** A token v is green after the context c when ``hash(key, c, v)``, a value in
[0, P) with P = 2**31 - 1, is below ``gamma * P``. So it depends only on (key, previous tokens),
costs a few integer operations per vocabulary entry (no permutation of the vocabulary per step),
and is computed by the same function when writing and when detecting. Each list holds about
``gamma * V`` tokens (binomially distributed around it); under the null hypothesis each scored
token is green with probability ``gamma`` either way. All arithmetic stays below 2**62, so int64
never overflows and results are identical on every CPU.

**Repeated (context, token) pairs** are scored once by default: a human text with a repeated
phrase repeats its green/red pattern too, and counting it twice would inflate z (most of all for
character vocabularies, where bigrams repeat constantly). ``count_repeats=True`` scores them all.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import check_watermark_settings
from ..errors import ConfigError

MODULUS = 2**31 - 1  # a Mersenne prime; products of two residues fit in int64
_PAD = -1  # left padding of input_ids (processors.PAD), hashed like any other context token


@dataclass(frozen=True)
class WatermarkKey:
    """The secret, reduced to the multipliers of the hash. Its repr never shows the key."""

    seeds: tuple[int, ...]

    @classmethod
    def from_text(cls, key: str) -> WatermarkKey:
        if not key:
            raise ConfigError("the watermark key is empty; give a secret string")
        digest = hashlib.sha256(("rnn2gpt-watermark:" + key).encode("utf-8")).digest()
        # Five residues in [1, P): four multipliers/offsets of the hash and one starting value.
        return cls(
            tuple(
                1 + int.from_bytes(digest[4 * i : 4 * i + 4], "big") % (MODULUS - 1)
                for i in range(5)
            )
        )

    def __repr__(self) -> str:
        return "WatermarkKey(<secret>)"


def _mix(values: np.ndarray, key: WatermarkKey) -> np.ndarray:
    """Two rounds of a quadratic residue mix: int64 in [0, P) -> int64 in [0, P)."""
    _, _, _, multiplier, offset = key.seeds
    for _ in range(2):
        values = (values * values + offset) % MODULUS
        values = (values * multiplier + 1) % MODULUS
    return values


def context_seeds(context: np.ndarray, key: WatermarkKey) -> np.ndarray:
    """(N, h) int64 previous tokens (PAD allowed) -> (N,) int64 seeds in [0, P)."""
    start, step, _, _, _ = key.seeds
    seed = np.full(context.shape[:1], start, dtype=np.int64)
    for column in range(context.shape[1]):
        seed = (seed * step + context[:, column] + 2) % MODULUS  # PAD (-1) becomes 1
    return _mix(seed, key)


def green_values(seeds: np.ndarray, tokens: np.ndarray, key: WatermarkKey) -> np.ndarray:
    """Hash values in [0, P) of ``tokens`` after contexts with ``seeds`` (int64 arrays).

    ``seeds`` (N,) with ``tokens`` (N,) gives (N,); ``seeds`` (N, 1) with ``tokens`` (V,) gives the
    whole vocabulary per row, (N, V). NumPy, not torch: the vectors are short and numpy's
    per-operation cost is a tenth of torch's, and the integer results are the same anywhere.
    """
    token_step = key.seeds[2]
    return _mix((seeds * token_step + tokens + 1) % MODULUS, key)


@functools.lru_cache(maxsize=8)
def _shared_biases(
    key: WatermarkKey, threshold: int, delta: float, context: int, vocab_size: int, device: str
) -> dict[tuple[int, ...], Tensor]:
    """One bias cache per watermark setting (the last 8 settings used in this process)."""
    return {}


def green_threshold(gamma: float) -> int:
    return int(gamma * MODULUS)


class Watermark:
    """Logits processor: ``scores + delta`` on the green list of each row (never in place).

    Args:
        key: the secret.
        gamma: the green fraction of the vocabulary, in (0, 1).
        delta: the bias added to green scores (0: the identity).
        context: h, how many previous tokens seed the list.
        vocab_size: V.
    """

    def __init__(
        self,
        key: str,
        *,
        gamma: float,
        delta: float,
        context: int,
        vocab_size: int,
        device: torch.device | str = "cpu",
    ) -> None:
        check_watermark_settings(gamma, delta, context)
        self.key = WatermarkKey.from_text(key)
        self.delta = delta
        self.context = context
        self.threshold = green_threshold(gamma)
        self.vocabulary = np.arange(vocab_size, dtype=np.int64)
        self.device = torch.device(device)
        # Bias vectors by context, so a context seen before costs one lookup, not a hash of the
        # whole vocabulary (a char model meets every one of its V contexts within a few hundred
        # tokens). Shared by every processor of the same settings (each generate call builds
        # its own processor), bounded to about 64 MB of vectors.
        self._biases = _shared_biases(
            self.key, self.threshold, delta, context, vocab_size, str(device)
        )
        self._cache_limit = max(16, (64 << 20) // (4 * vocab_size))

    def green_mask(self, input_ids: Tensor) -> Tensor:
        """(B, L) ids so far -> (B, V) bool, True on each row's green list."""
        context = input_ids[:, -self.context :].cpu().numpy().astype(np.int64)
        if context.shape[1] < self.context:  # shorter than h: pad on the left as the rows are
            pad = np.full((context.shape[0], self.context - context.shape[1]), _PAD, np.int64)
            context = np.concatenate([pad, context], axis=1)
        seeds = context_seeds(context, self.key)[:, None]  # (B, 1)
        green = green_values(seeds, self.vocabulary, self.key) < self.threshold
        return torch.from_numpy(green).to(self.device)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.delta == 0.0:
            return scores
        contexts = [tuple(row) for row in input_ids[:, -self.context :].tolist()]
        missing = [i for i, c in enumerate(contexts) if c not in self._biases]
        if len(self._biases) + len(missing) > self._cache_limit:
            self._biases.clear()
            missing = list(range(len(contexts)))
        if missing:
            biases = self.delta * self.green_mask(input_ids[missing]).to(torch.float32)
            for row, bias in zip(missing, biases, strict=True):
                self._biases[contexts[row]] = bias
        if len(contexts) == 1:
            bias = self._biases[contexts[0]]
        else:
            bias = torch.stack([self._biases[c] for c in contexts])
        return scores + bias.to(scores.dtype)

    def __repr__(self) -> str:
        return f"Watermark(key=<secret>, delta={self.delta}, context={self.context})"


@dataclass(frozen=True)
class Detection:
    """The verdict on one text.

    ``scored``: per token of the text (prompt excluded), True when it was counted; ``is_green``:
    per token, whether it is on its green list (meaningful where it has a full context).
    """

    tokens: int  # T, the tokens scored
    green: int
    z_score: float
    p_value: float
    watermarked: bool
    threshold: float
    gamma: float
    is_green: tuple[bool, ...]
    scored: tuple[bool, ...]

    def summary(self) -> dict[str, object]:
        return {
            "tokens": self.tokens,
            "green": self.green,
            "z_score": self.z_score,
            "p_value": self.p_value,
            "watermarked": self.watermarked,
        }


def z_statistic(green: int, tokens: int, gamma: float) -> tuple[float, float]:
    """(z, one-sided p-value) of ``green`` hits in ``tokens`` Bernoulli(gamma) draws."""
    if tokens == 0:
        return 0.0, 1.0
    z = (green - gamma * tokens) / math.sqrt(tokens * gamma * (1.0 - gamma))
    return z, 0.5 * math.erfc(z / math.sqrt(2.0))


def detect(
    ids: list[int],
    key: str,
    *,
    gamma: float = 0.25,
    context: int = 1,
    prompt_len: int = 0,
    threshold: float = 4.0,
    count_repeats: bool = False,
) -> Detection:
    """Score token ids for the watermark of ``key``.

    Args:
        ids: the tokens, prompt (if any) then the text to judge.
        prompt_len: how many leading ids are the prompt: they serve as context, never counted.
        threshold: the z-score at or above which the text is called watermarked.
        count_repeats: count every occurrence of a (context, token) pair, not just the first.

    Without a prompt the first ``context`` tokens have no full context and are not counted.
    """
    check_watermark_settings(gamma, 0.0, context)
    if threshold <= 0:
        raise ConfigError(f"the detection threshold must be a positive z-score (got {threshold})")
    secret = WatermarkKey.from_text(key)
    text = np.asarray(ids, dtype=np.int64)
    first = max(prompt_len, context)
    positions = np.arange(first, len(ids))
    if len(positions) == 0:
        return Detection(
            0,
            0,
            0.0,
            1.0,
            False,
            threshold,
            gamma,
            (False,) * (len(ids) - prompt_len),
            (False,) * (len(ids) - prompt_len),
        )
    windows = np.stack([text[positions - context + i] for i in range(context)], axis=1)
    seeds = context_seeds(windows, secret)
    green = (green_values(seeds, text[positions], secret) < green_threshold(gamma)).tolist()
    seen: set[tuple[int, ...]] = set()
    counted = []
    for row, token in zip(windows.tolist(), text[positions].tolist(), strict=True):
        pair = (*row, token)
        counted.append(count_repeats or pair not in seen)
        seen.add(pair)
    tokens = sum(counted)
    hits = sum(g for g, c in zip(green, counted, strict=True) if c)
    z, p = z_statistic(hits, tokens, gamma)
    lead = first - prompt_len  # text tokens before the first scored one
    return Detection(
        tokens=tokens,
        green=hits,
        z_score=z,
        p_value=p,
        watermarked=z >= threshold,
        threshold=threshold,
        gamma=gamma,
        is_green=(False,) * lead + tuple(green),
        scored=(False,) * lead + tuple(counted),
    )


__all__ = [
    "Detection",
    "Watermark",
    "WatermarkKey",
    "detect",
    "green_values",
    "z_statistic",
]
