"""Encoder-decoder checkpoints at work: load one, translate or summarize texts, score them.

- :func:`load_seq2seq` -> :class:`Seq2SeqRunner` (model, tokenizers, task, settings)
- :func:`translate`, :func:`summarize`: output text per input (beam search by default); the
  same code with each task's own defaults
- :func:`evaluate_seq2seq`: BLEU (translation) or ROUGE (summarization) against references
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..checkpoint import load_checkpoint, resolve_checkpoint_dir
from ..config import GenerationConfig
from ..errors import ConfigError
from ..models.base import use_inference_layout
from ..models.seq2seq import require_encoder_decoder
from ..tokenizers.base import pick_source_tokenizer
from .decoding import decode_texts
from .seq2seq import METRICS

logger = logging.getLogger(__name__)


@dataclass
class Seq2SeqRunner:
    """An encoder-decoder checkpoint ready to decode: model, tokenizers, task and settings.

    ``tokenizer`` is the target (or joint) tokenizer; ``source_tokenizer`` encodes the inputs:
    the checkpoint's own source tokenizer (``tokenizer.separate = true``), else ``tokenizer``.
    """

    model: Any
    tokenizer: Any
    task: str  # translation | summarization
    generation: GenerationConfig
    data_config: Any = None  # the training run's DataConfig (JSON Lines field names)
    source_tokenizer: Any = None  # None = the joint tokenizer

    def __post_init__(self) -> None:
        self.source_tokenizer = pick_source_tokenizer(self.tokenizer, self.source_tokenizer)

    def run(
        self,
        texts: Sequence[str],
        *,
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
        batch_size: int = 32,
        length_penalty: float | None = None,
        prompt_lookup: int | None = None,
    ) -> list[str]:
        """Output text for each input text (beam search with ``num_beams > 1``, else greedy;
        greedy with ``prompt_lookup`` N drafts tokens by copying from the source, the same
        output faster where it copies)."""
        settings = replace(self.generation, temperature=0.0)
        if prompt_lookup is not None:
            settings = replace(settings, prompt_lookup=prompt_lookup)
        if num_beams is not None:
            settings = replace(settings, num_beams=num_beams)
        if max_new_tokens is not None:
            settings = replace(settings, max_new_tokens=max_new_tokens)
        if length_penalty is not None:
            settings = replace(settings, length_penalty=length_penalty)
        return decode_texts(
            self.model,
            self.tokenizer,
            texts,
            settings,
            batch_size=batch_size,
            source_tokenizer=self.source_tokenizer,
        )


def load_seq2seq(
    checkpoint: str | os.PathLike[str] | Seq2SeqRunner, *, device: str = "cpu"
) -> Seq2SeqRunner:
    """A :class:`Seq2SeqRunner` from a checkpoint (or run) directory (a runner is returned as it
    is); CheckpointError when the checkpoint is a language model."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        return checkpoint  # already a runner
    path = resolve_checkpoint_dir(checkpoint)
    ckpt = load_checkpoint(path, map_location=device)
    require_encoder_decoder(ckpt.model, f"{path} holds a {ckpt.config.model.arch} model")
    use_inference_layout(ckpt.model.eval())  # as rnn2gpt.load: faster decoding, same results
    return Seq2SeqRunner(
        ckpt.model,
        ckpt.tokenizer,
        ckpt.config.train.task,  # translation or summarization: the config's arch and task agree
        ckpt.config.generate,
        ckpt.config.data,
        source_tokenizer=ckpt.source_tokenizer,
    )


def evaluate_seq2seq(
    checkpoint: str | os.PathLike[str] | Seq2SeqRunner,
    sources: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    task: str | None = None,
    num_beams: int = 1,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Decode ``sources`` and score against ``references`` (one or a list per source).

    Returns dict(task, count, num_beams, hypotheses, and bleu + signature (translation) or
    rouge1/rouge2/rougeL (summarization)).
    """
    runner = load_seq2seq(checkpoint)
    task = task or runner.task
    metric = METRICS.get(task)
    if metric is None:
        raise ConfigError(f"task must be one of {', '.join(METRICS)} (got {task!r})")
    if len(sources) != len(references):
        raise ConfigError(
            f"{len(sources)} sources but {len(references)} references; the files must align"
        )
    hypotheses = runner.run(
        sources, num_beams=num_beams, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    result: dict[str, Any] = {"task": task, "count": len(sources), "num_beams": num_beams}
    scores = metric.score(hypotheses, references)
    result.update({name: scores[name] for name in (*metric.names, "signature") if name in scores})
    result["hypotheses"] = hypotheses
    return result


# Each task's defaults: (beams, longest output in tokens; None = from the source's length).
TASK_DEFAULTS = {"translation": (5, None), "summarization": (4, 64)}


def run_seq2seq(
    checkpoint: str | os.PathLike[str] | Seq2SeqRunner,
    texts: Sequence[str],
    *,
    task: str,
    num_beams: int | None = None,
    max_new_tokens: int | None = None,
    length_penalty: float | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    prompt_lookup: int | None = None,
) -> list[str]:
    """Output text for each input text with ``task``'s defaults (see :data:`TASK_DEFAULTS`)."""
    beams, longest = TASK_DEFAULTS[task]
    runner = load_seq2seq(checkpoint, device=device)
    return runner.run(
        list(texts),
        num_beams=beams if num_beams is None else num_beams,
        max_new_tokens=longest if max_new_tokens is None else max_new_tokens,
        length_penalty=length_penalty,
        batch_size=batch_size,
        prompt_lookup=prompt_lookup,
    )


def translate(
    checkpoint: str | os.PathLike[str] | Seq2SeqRunner, lines: Sequence[str], **options: Any
) -> list[str]:
    """Translate each line (beam search with 5 beams unless ``num_beams`` says otherwise; 1 is
    greedy). Options: ``num_beams``, ``max_new_tokens``, ``length_penalty``, ``batch_size``,
    ``device``."""
    return run_seq2seq(checkpoint, lines, task="translation", **options)


def summarize(
    checkpoint: str | os.PathLike[str] | Seq2SeqRunner, texts: Sequence[str], **options: Any
) -> list[str]:
    """A summary of each text (4 beams and at most 64 tokens unless told otherwise); options as
    :func:`translate`."""
    return run_seq2seq(checkpoint, texts, task="summarization", **options)


__all__ = [
    "TASK_DEFAULTS",
    "Seq2SeqRunner",
    "evaluate_seq2seq",
    "load_seq2seq",
    "run_seq2seq",
    "summarize",
    "translate",
]
