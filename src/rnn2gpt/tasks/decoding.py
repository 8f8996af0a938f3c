"""Decoding text with an encoder-decoder: what translation, summarization and evaluation share.

:func:`decode_texts` encodes each source (ending in end-of-sequence), binds the model to a batch
of sources (:meth:`~rnn2gpt.models.seq2seq.Seq2SeqModel.bind`) and runs the ordinary decoding
engine (:func:`rnn2gpt.generation.generate`) from a lone ``bos`` token: greedy, sampling and beam
search are the language models' own.

Tokenizers: ``tokenizer`` is the target (or joint) tokenizer: it gives bos/eos/pad of the
decoder and turns output ids into text. A run trained with ``tokenizer.separate = true`` also
has a ``source_tokenizer``, which encodes and pads the sources; without it the joint tokenizer
does (:func:`~rnn2gpt.tokenizers.base.pick_source_tokenizer`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from ..config import GenerationConfig
from ..data.parallel import pad_sources
from ..errors import ConfigError
from ..generation import generate
from ..generation.speculative import PromptLookup
from ..models.base import Recorder, eval_mode
from ..tokenizers.base import pick_source_tokenizer

logger = logging.getLogger(__name__)


def special_ids(tokenizer: object) -> tuple[int, int, int]:
    """(bos, eos, pad) ids for sequence-to-sequence use; eos doubles as bos and pad if needed."""
    eos = getattr(tokenizer, "eos_id", None)
    if eos is None:
        raise ConfigError(
            f"a {getattr(tokenizer, 'kind', '?')} tokenizer has no end-of-sequence token, which "
            "sequence-to-sequence models need; use tokenizer.kind=bpe or tokenizer.kind=word"
        )
    bos = getattr(tokenizer, "bos_id", None)
    pad = getattr(tokenizer, "pad_id", None)
    return (eos if bos is None else bos), eos, (eos if pad is None else pad)


def source_limit(model: nn.Module) -> int | None:
    """The longest source (tokens) the model takes: its positions, or None (RNNs)."""
    return model.max_context


def encode_sources(tokenizer: object, texts: Sequence[str], limit: int | None) -> list[list[int]]:
    """Token ids of each source, ending in eos; sources beyond ``limit`` keep their beginning.

    ``tokenizer`` is the one that encodes sources (the source tokenizer of a run with separate
    tokenizers: see :func:`~rnn2gpt.tokenizers.base.pick_source_tokenizer`).
    """
    _, eos, _ = special_ids(tokenizer)
    out = []
    for text in texts:
        ids = tokenizer.encode(text)  # type: ignore[attr-defined]
        if limit is not None and len(ids) + 1 > limit:
            logger.warning("a source of %d tokens is cut to the model's %d", len(ids) + 1, limit)
            ids = ids[: limit - 1]
        out.append(ids + [eos])
    return out


def decode_ids(
    model: nn.Module,
    tokenizer: object,
    sources: Sequence[Sequence[int]],
    config: GenerationConfig,
    *,
    batch_size: int = 32,
    source_tokenizer: object = None,
) -> list[list[int]]:
    """Best output token ids (eos excluded) for each encoded source, in order.

    ``tokenizer``: the target tokenizer (bos, eos, pad of the decoder); ``source_tokenizer``:
    the separate source tokenizer, if any (its pad id pads the sources).
    ``config.max_new_tokens`` is capped per batch at twice the longest source plus 10 and at the
    model's target positions.
    """
    bos, eos, pad = special_ids(tokenizer)
    src_pad = special_ids(pick_source_tokenizer(tokenizer, source_tokenizer))[2]
    device = next(model.parameters()).device
    limit = source_limit(model)
    results: list[list[int]] = []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        src, mask = pad_sources(chunk, src_pad, device)
        longest = max(len(s) for s in chunk)
        max_new = min(config.max_new_tokens, 2 * longest + 10)
        if limit is not None:
            max_new = min(max_new, limit - 1)
        settings = replace(config, max_new_tokens=max_new, num_return_sequences=1)
        bound = model.bind(src, mask)  # type: ignore[operator]
        draft = None
        if settings.prompt_lookup and settings.num_beams == 1:
            # Outputs copy from their sources: look the last tokens up there too (when source
            # and target share one tokenizer, so their ids mean the same).
            shared = source_tokenizer is None or source_tokenizer is tokenizer
            sources = [s[:-1] for s in chunk] if shared else None
            draft = PromptLookup(settings.prompt_lookup, sources=sources)
        generations = generate(
            bound, [[bos]] * len(chunk), settings, eos_id=eos, pad_id=pad, draft=draft
        )
        results.extend(g[0].token_ids for g in generations)
    return results


def decode_texts(
    model: nn.Module,
    tokenizer: object,
    texts: Sequence[str],
    config: GenerationConfig,
    *,
    batch_size: int = 32,
    source_tokenizer: object = None,
) -> list[str]:
    """The model's output text for each source text, in order (sources encoded with
    ``source_tokenizer`` when the run has one, outputs decoded with ``tokenizer``)."""
    if not texts:
        return []
    src_tokenizer = pick_source_tokenizer(tokenizer, source_tokenizer)
    sources = encode_sources(src_tokenizer, texts, source_limit(model))
    ids = decode_ids(
        model, tokenizer, sources, config, batch_size=batch_size, source_tokenizer=src_tokenizer
    )
    return [tokenizer.decode(t).strip() for t in ids]  # type: ignore[attr-defined]


def cross_attention(
    model: nn.Module,
    tokenizer: object,
    source: str,
    output_ids: Sequence[int],
    *,
    source_tokenizer: object = None,
) -> torch.Tensor:
    """Cross-attention weights (T, S) of the decoder's last layer, heads averaged, while it reads
    ``[bos] + output_ids`` for ``source`` (rows: output tokens + eos; columns: source tokens).

    ``output_ids`` are target-tokenizer ids; ``source`` is encoded with ``source_tokenizer``
    when the run has one, else with ``tokenizer``."""
    bos, _, _ = special_ids(tokenizer)
    src_tokenizer = pick_source_tokenizer(tokenizer, source_tokenizer)
    src_ids = encode_sources(src_tokenizer, [source], source_limit(model))[0]
    device = next(model.parameters()).device
    src = torch.tensor([src_ids], dtype=torch.long, device=device)
    tgt = torch.tensor([[bos, *output_ids]], dtype=torch.long, device=device)
    found: dict[str, torch.Tensor] = {}
    recorder: Recorder = lambda name, t: found.__setitem__(name, t)  # noqa: E731
    with eval_mode(model):
        with torch.inference_mode():
            model(tgt, source=src, recorder=recorder)
    names = sorted(n for n in found if n.endswith("cross_attention"))
    if not names:
        raise ConfigError("this model reports no cross-attention weights")
    return found[names[-1]][0].float().mean(dim=0)  # (T, S)


__all__ = [
    "cross_attention",
    "decode_ids",
    "decode_texts",
    "encode_sources",
    "source_limit",
    "special_ids",
]
