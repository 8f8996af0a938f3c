"""A corpus for distilling a drafter: the target model's own continuations of prompts.

Speculative decoding gains as much as the drafter guesses the token the target picks. A drafter
trained on the corpus alone learns the corpus's next-token distribution, which its target only
approximates; fine-tuned on what the target itself writes, it learns the target's habits
(repetitions included), and more of its drafts are accepted. Measured on a 6L/384 character GPT:
acceptance went from 56% to 80% at K = 4 (benchmarks/RESULTS.md, "Issue 16, fifth part").

:func:`spread_prompts` cuts prompts from a text, evenly over it; :func:`target_documents` decodes
them with the one decoding loop (:func:`~rnn2gpt.generation.search.generate`), a batch at a
time, and returns each prompt followed by its continuation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..config import GenerationConfig
from ..errors import TokenizerError
from ..tokenizers.base import Tokenizer
from .search import generate


def spread_prompts(text: str, count: int, length: int) -> list[str]:
    """Up to ``count`` prompts of ``length`` characters, spread evenly over ``text``.

    Each starts a line (just after a newline) where the text has enough lines: a line start
    is where a speaker, a sentence or a paragraph starts. Otherwise they start at evenly spaced
    offsets.
    """
    if count < 1 or length < 1:
        raise ValueError("count and length must be positive")
    last = len(text) - length
    if last < 0:
        return []
    starts = [i + 1 for i, ch in enumerate(text[:last]) if ch == "\n"]
    if len(starts) < count:
        starts = sorted(set(range(0, last + 1, max(1, (last + 1) // count))))
    if len(starts) > count:  # evenly over all of them, to the end of the text
        starts = [starts[i * len(starts) // count] for i in range(count)]
    return [text[s : s + length] for s in starts]


@dataclass
class DraftDocuments:
    """What :func:`target_documents` wrote: ``documents`` (prompt + continuation each),
    ``generated`` tokens in all, and ``skipped`` prompts the tokenizer could not encode."""

    documents: list[str]
    generated: int
    skipped: int


def target_documents(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    config: GenerationConfig,
    *,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> DraftDocuments:
    """Each prompt followed by the model's continuation under ``config`` (greedy for a drafter
    of greedy decoding), decoded ``batch_size`` prompts at a time.

    A prompt with a character the tokenizer lacks is skipped and counted. ``progress(done,
    total)`` is called after each batch.
    """
    encoded: list[tuple[str, list[int]]] = []
    skipped = 0
    for prompt in prompts:
        try:
            encoded.append((prompt, tokenizer.encode(prompt)))
        except TokenizerError:
            skipped += 1
    documents: list[str] = []
    generated = 0
    for first in range(0, len(encoded), batch_size):
        batch = encoded[first : first + batch_size]
        results = generate(
            model,
            [ids for _, ids in batch],
            config,
            tokenizer=tokenizer,
            pad_id=0 if tokenizer.pad_id is None else tokenizer.pad_id,
        )
        for (prompt, _), [result] in zip(batch, results):
            documents.append(prompt + result.text)
            generated += len(result.token_ids)
        if progress is not None:
            progress(first + len(batch), len(encoded))
    return DraftDocuments(documents, generated, skipped)
