"""Logits processors: small callables that reshape next-token scores before a token is chosen.

Every processor is a callable ``(input_ids, scores) -> scores`` where

- ``input_ids``: LongTensor (B, L), the tokens so far of each row, prompt then generated tokens.
  Rows are left-padded with :data:`PAD` (-1), which every processor ignores; the generated
  tokens start at column ``prompt_len`` (the padded prompt width) in every row.
- ``scores``: FloatTensor (B, V), next-token logits (sampling, greedy) or log-probabilities
  (beam search).

A processor returns a new tensor and never modifies its inputs. :func:`build_processors` turns a
:class:`~rnn2gpt.config.GenerationConfig` into a plain list, in this one order:

1. ``logit_bias``          add a fixed bias to chosen tokens
2. ``bad_words``           forbid token sequences (the last token when the rest matches)
3. ``min_new_tokens``      forbid end-of-sequence until enough tokens were generated
4. ``no_repeat_ngram_size``  forbid any n-gram that already occurred (also the repetition
   guard's ``resample`` action, at its size)
5. ``repetition_penalty``  CTRL-style: shrink the scores of every token seen so far
6. ``presence_penalty`` / ``frequency_penalty``  OpenAI-style, over generated tokens only
7. ``watermark``           add delta to a green list seeded by the key and the previous tokens
8. ``temperature``         divide by the temperature
9. ``top_k``, 10. ``top_p``, 11. ``min_p``, 12. ``typical_p``  keep a shortlist of tokens

Hard rules first (biases and bans), then penalties, then the watermark (it applies to greedy and
beam search too), then the shape of the distribution, then the shortlists, which must see the
final distribution. Steps 8-12 only change which token is *sampled*: greedy decoding and beam
search leave them out (the argmax is unchanged by temperature,
top-k, top-p and min-p, and those searches are deterministic by design). A processor that is off
is not in the list, so an empty list costs nothing per step.

Everything is vectorised over the batch and the vocabulary; n-gram matching compares all windows
of the history at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from torch import Tensor

from ..config import GenerationConfig
from ..errors import ConfigError, TokenizerError
from ..tokenizers.base import Tokenizer
from .watermark import Watermark

PAD = -1
"""The id that left-pads ``input_ids`` rows; processors ignore it."""

_NEG_INF = float("-inf")


class LogitsProcessor(Protocol):
    """``(input_ids (B, L) int64, scores (B, V) float) -> scores (B, V)``, never in place."""

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor: ...


def token_counts(input_ids: Tensor, vocab_size: int, dtype: torch.dtype) -> Tensor:
    """How often each token occurs in each row: (B, L) ids -> (B, V) counts; PAD is not counted.

    scatter_add (not scatter) so repeated ids accumulate deterministically.
    """
    real = input_ids >= 0
    counts = torch.zeros(input_ids.shape[0], vocab_size, dtype=dtype, device=input_ids.device)
    return counts.scatter_add_(1, input_ids.clamp_min(0), real.to(dtype))


def _ban(scores: Tensor, banned: Tensor) -> Tensor:
    """scores with -inf where ``banned`` (bool, broadcastable to scores) is True."""
    return scores.masked_fill(banned, _NEG_INF)


class LogitBias:
    """Add ``bias[token]`` to every row's score of ``token`` (OpenAI's ``logit_bias``).

    A bias of -inf bans the token; +inf is not allowed (it would break the softmax).
    """

    def __init__(self, bias: Mapping[int, float], vocab_size: int, device: torch.device) -> None:
        vector = torch.zeros(vocab_size)
        for token, value in bias.items():
            _check_token(token, vocab_size, "logit_bias")
            if value == float("inf") or value != value:
                raise ConfigError(
                    f"logit_bias for token {token} must be finite or -inf (got {value})"
                )
            vector[token] = value
        self.bias = vector.to(device)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        return scores + self.bias.to(scores.dtype)


class BadWords:
    """Forbid token sequences: a sequence's last token is banned wherever the tokens before it
    are the end of the row. One-token sequences are banned everywhere.

    Sequences of the same length are matched together: (B, k) tail vs (N, k) prefixes.
    """

    def __init__(
        self, sequences: Sequence[Sequence[int]], vocab_size: int, device: torch.device
    ) -> None:
        singles = torch.zeros(vocab_size, dtype=torch.bool)
        by_prefix_len: dict[int, list[Sequence[int]]] = {}
        for seq in sequences:
            if not seq:
                continue
            for token in seq:
                _check_token(token, vocab_size, "bad_words")
            if len(seq) == 1:
                singles[seq[0]] = True
            else:
                by_prefix_len.setdefault(len(seq) - 1, []).append(seq)
        self.singles = singles.to(device) if bool(singles.any()) else None
        # prefix length k -> (prefixes (N, k), last tokens (N,))
        self.groups = {
            k: (
                torch.tensor([list(s[:-1]) for s in seqs], dtype=torch.long, device=device),
                torch.tensor([s[-1] for s in seqs], dtype=torch.long, device=device),
            )
            for k, seqs in by_prefix_len.items()
        }
        self.vocab_size = vocab_size

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        batch, length = input_ids.shape
        banned = torch.zeros_like(scores, dtype=torch.bool)
        if self.singles is not None:
            banned |= self.singles
        for k, (prefixes, last) in self.groups.items():
            if length < k:
                continue
            tail = input_ids[:, length - k :]  # (B, k)
            match = (tail[:, None, :] == prefixes[None, :, :]).all(dim=-1)  # (B, N)
            hits = torch.zeros_like(scores).scatter_add_(
                1, last.expand(batch, -1), match.to(scores.dtype)
            )
            banned |= hits > 0
        return _ban(scores, banned)


class MinNewTokens:
    """Forbid the end-of-sequence token until ``min_new`` tokens have been generated."""

    def __init__(self, min_new: int, prompt_len: int, eos_id: int) -> None:
        self.min_new, self.prompt_len, self.eos_id = min_new, prompt_len, eos_id

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        # Shapes only: no device sync.
        if input_ids.shape[1] - self.prompt_len >= self.min_new:
            return scores
        out = scores.clone()
        out[:, self.eos_id] = _NEG_INF
        return out


class NoRepeatNGram:
    """Forbid every token that would repeat an n-gram already in the row (prompt included).

    All windows of the history are compared with the row's last n-1 tokens at once:
    windows (B, L-n+1, n); a window whose first n-1 tokens match bans its last token.
    """

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        n = self.n
        batch, length = input_ids.shape
        if length < n:
            return scores
        windows = input_ids.unfold(1, n, 1)  # (B, W, n), W = L - n + 1
        current = input_ids[:, length - n + 1 :]  # (B, n - 1) the n-gram being started
        match = (windows[:, :, :-1] == current[:, None, :]).all(dim=-1)  # (B, W)
        following = windows[:, :, -1]  # (B, W)
        # A prefix still inside the padding is not an n-gram of the text.
        match &= (current >= 0).all(dim=-1, keepdim=True) & (following >= 0)
        hits = torch.zeros_like(scores).scatter_add_(
            1, following.clamp_min(0), match.to(scores.dtype)
        )
        return _ban(scores, hits > 0)


class RepetitionPenalty:
    """CTRL-style (Keskar et al., 2019): the score of every token seen so far (prompt included)
    is divided by ``penalty`` when positive and multiplied by it when negative, so a penalty
    above 1 always makes a repeat less likely."""

    def __init__(self, penalty: float, vocab_size: int) -> None:
        self.penalty, self.vocab_size = penalty, vocab_size

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        seen = token_counts(input_ids, self.vocab_size, scores.dtype) > 0
        penalised = torch.where(scores > 0, scores / self.penalty, scores * self.penalty)
        return torch.where(seen, penalised, scores)


class PresenceFrequencyPenalty:
    """OpenAI-style: ``score - count * frequency - (count > 0) * presence``, where ``count`` is how
    often the token was *generated* so far (the prompt does not count)."""

    def __init__(self, presence: float, frequency: float, prompt_len: int, vocab_size: int) -> None:
        self.presence, self.frequency = presence, frequency
        self.prompt_len, self.vocab_size = prompt_len, vocab_size

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        generated = input_ids[:, self.prompt_len :]
        if generated.shape[1] == 0:
            return scores
        counts = token_counts(generated, self.vocab_size, scores.dtype)
        return scores - counts * self.frequency - (counts > 0).to(scores.dtype) * self.presence


class Temperature:
    """Divide the logits by ``temperature`` (> 0): below 1 sharpens, above 1 flattens."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        return scores / self.temperature


class TopK:
    """Keep the ``k`` highest scores (ties with the k-th are kept too)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        k = min(self.k, scores.shape[-1])
        kth = scores.topk(k, dim=-1).values[:, -1:]  # (B, 1)
        return _ban(scores, scores < kth)


class TopP:
    """Nucleus sampling (Holtzman et al., 2020): keep the smallest set of most likely tokens whose
    probability reaches ``p``; the most likely token is always kept."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        ordered, order = scores.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
        drop_sorted = mass_before >= self.p  # the first token has 0 before it: never dropped
        drop = drop_sorted.scatter(1, order, drop_sorted)
        return _ban(scores, drop)


class MinP:
    """Keep the tokens whose probability is at least ``min_p`` times the top token's."""

    def __init__(self, min_p: float) -> None:
        self.min_p = min_p

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        probs = scores.softmax(dim=-1)
        threshold = probs.amax(dim=-1, keepdim=True) * self.min_p
        return _ban(scores, probs < threshold)


class TypicalP:
    """Locally typical sampling (Meister et al., 2022): rank tokens by how far their information
    content ``-log p`` lies from the distribution's entropy, and keep the closest ones until
    their probability reaches ``mass``; the closest token is always kept."""

    def __init__(self, mass: float) -> None:
        self.mass = mass

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        logp = scores.log_softmax(dim=-1)
        probs = logp.exp()
        # Banned tokens have p = 0 and log p = -inf; nansum drops their 0 * -inf.
        entropy = -(probs * logp).nansum(dim=-1, keepdim=True)
        distance = (-logp - entropy).abs()
        _, order = distance.sort(dim=-1)
        sorted_probs = probs.gather(1, order)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop_sorted = mass_before >= self.mass
        drop = drop_sorted.scatter(1, order, drop_sorted)
        return _ban(scores, drop)


def bad_words_ids(words: Sequence[str], tokenizer: Tokenizer) -> list[list[int]]:
    """Token sequences to ban for ``config.bad_words``.

    Each word is banned as written and, unless it starts with whitespace, also with one leading
    space: subword tokenizers spell a word differently in the middle of a sentence.
    """
    sequences: list[list[int]] = []
    for word in words:
        if not word:
            raise ConfigError("bad_words contains an empty string; remove it")
        variants = [word] if word[:1].isspace() else [word, " " + word]
        for i, variant in enumerate(variants):
            try:
                ids = list(tokenizer.encode(variant))
            except TokenizerError:
                if i == 0:
                    raise
                continue  # e.g. a char vocabulary without a space: the word as written is enough
            if ids and ids not in sequences:
                sequences.append(ids)
    return sequences


def build_processors(
    config: GenerationConfig,
    *,
    vocab_size: int,
    eos_id: int | None = None,
    prompt_len: int = 0,
    tokenizer: Tokenizer | None = None,
    bad_words: Sequence[Sequence[int]] | None = None,
    sampling: bool | None = None,
    device: torch.device | str = "cpu",
) -> list[LogitsProcessor]:
    """The processors ``config`` turns on, in the documented order (see the module docstring).

    Args:
        vocab_size: V, the width of the scores.
        eos_id: the end-of-sequence token; ``min_new_tokens`` needs it (ignored without).
        prompt_len: the column of ``input_ids`` where generated tokens start.
        tokenizer: encodes ``config.bad_words``; required when there are bad words and
            ``bad_words`` is not given.
        bad_words: token sequences to ban instead of encoding ``config.bad_words``.
        sampling: whether tokens are sampled; False leaves out temperature and the shortlists
            (steps 8-12). Default: ``not config.greedy``.
        device: where the processors' constant tensors live (the scores' device).
    """
    device = torch.device(device)
    if sampling is None:
        sampling = not config.greedy
    out: list[LogitsProcessor] = []
    if config.logit_bias:
        out.append(LogitBias(dict(config.logit_bias), vocab_size, device))
    if bad_words is None and config.bad_words:
        if tokenizer is None:
            raise ConfigError(
                "bad_words need a tokenizer to turn them into tokens; pass tokenizer="
            )
        bad_words = bad_words_ids(config.bad_words, tokenizer)
    if bad_words:
        out.append(BadWords(bad_words, vocab_size, device))
    if config.min_new_tokens > 0 and eos_id is not None:
        _check_token(eos_id, vocab_size, "eos_id")
        out.append(MinNewTokens(config.min_new_tokens, prompt_len, eos_id))
    if config.no_repeat_ngram_size > 0:
        out.append(NoRepeatNGram(config.no_repeat_ngram_size))
    resample = config.repetition_guard if config.repetition_guard_action == "resample" else 0
    if resample > 0 and resample != config.no_repeat_ngram_size:
        out.append(NoRepeatNGram(resample))  # the guard's "resample": the same ban at size N
    if config.repetition_penalty != 1.0:
        out.append(RepetitionPenalty(config.repetition_penalty, vocab_size))
    if config.presence_penalty != 0.0 or config.frequency_penalty != 0.0:
        out.append(
            PresenceFrequencyPenalty(
                config.presence_penalty, config.frequency_penalty, prompt_len, vocab_size
            )
        )
    if config.watermark is not None and config.watermark_delta != 0.0:
        out.append(
            Watermark(
                config.watermark,
                gamma=config.watermark_gamma,
                delta=config.watermark_delta,
                context=config.watermark_context,
                vocab_size=vocab_size,
                device=device,
            )
        )
    if not sampling:
        return out
    if config.temperature not in (0.0, 1.0):
        out.append(Temperature(config.temperature))
    if 0 < config.top_k < vocab_size:
        out.append(TopK(config.top_k))
    if config.top_p < 1.0:
        out.append(TopP(config.top_p))
    if config.min_p > 0.0:
        out.append(MinP(config.min_p))
    if config.typical_p < 1.0:
        out.append(TypicalP(config.typical_p))
    return out


def apply_processors(
    processors: Sequence[LogitsProcessor], input_ids: Tensor, scores: Tensor
) -> Tensor:
    """Run ``processors`` in order: (B, L) ids, (B, V) scores -> (B, V) scores."""
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores


def _check_token(token: int, vocab_size: int, what: str) -> None:
    if not 0 <= token < vocab_size:
        raise ConfigError(
            f"{what}: token id {token} is outside the vocabulary (0..{vocab_size - 1}); "
            "use ids of the model's tokenizer"
        )


__all__ = [
    "PAD",
    "BadWords",
    "LogitBias",
    "LogitsProcessor",
    "MinNewTokens",
    "MinP",
    "NoRepeatNGram",
    "PresenceFrequencyPenalty",
    "RepetitionPenalty",
    "Temperature",
    "TopK",
    "TopP",
    "TypicalP",
    "apply_processors",
    "bad_words_ids",
    "build_processors",
    "token_counts",
]
