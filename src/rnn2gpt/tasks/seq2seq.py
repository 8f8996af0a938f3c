"""Loading an encoder-decoder checkpoint and running it over texts: the engine of both tasks."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import GenerationConfig
from ..errors import CheckpointError, ConfigError
from ..models.base import use_inference_layout
from ..tokenizers.base import pick_source_tokenizer
from .common import cross_attention, decode_texts, encode_sources, source_limit

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
    ) -> list[str]:
        """Output text for each input text (beam search with ``num_beams > 1``, else greedy)."""
        settings = replace(self.generation, temperature=0.0)
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
    """A :class:`Seq2SeqRunner` from a checkpoint (or run) directory; CheckpointError when the
    checkpoint is a language model."""
    if isinstance(checkpoint, Seq2SeqRunner):
        return checkpoint
    from ..checkpoint import load_checkpoint
    from ..models.seq2seq import is_seq2seq

    path = Path(checkpoint).expanduser()
    if not (path / "config.json").exists():
        for sub in ("best", "last"):
            if (path / sub / "config.json").exists():
                path = path / sub
                break
    ckpt = load_checkpoint(path, map_location=device)
    if not is_seq2seq(ckpt.model):
        raise CheckpointError(
            f"{path} holds a {ckpt.config.model.arch} language model; translate and summarize "
            "need an encoder-decoder (train one with --task translation or summarization)"
        )
    task = ckpt.config.train.task if ckpt.config.train.task != "lm" else "translation"
    use_inference_layout(ckpt.model.eval())  # as rnn2gpt.load: faster decoding, same results
    return Seq2SeqRunner(
        ckpt.model,
        ckpt.tokenizer,
        task,
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
    from ..evaluation.bleu_rouge import bleu, rouge

    runner = load_seq2seq(checkpoint)
    task = task or runner.task
    if task not in ("translation", "summarization"):
        raise ConfigError(f"task must be translation or summarization (got {task!r})")
    if len(sources) != len(references):
        raise ConfigError(
            f"{len(sources)} sources but {len(references)} references; the files must align"
        )
    hypotheses = runner.run(
        sources, num_beams=num_beams, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    result: dict[str, Any] = {"task": task, "count": len(sources), "num_beams": num_beams}
    if task == "translation":
        scores = bleu(hypotheses, references)
        result.update(bleu=scores["bleu"], signature=scores["signature"])
    else:
        result.update(rouge(hypotheses, references))
    result["hypotheses"] = hypotheses
    return result


def plot_cross_attention(
    checkpoint: str | os.PathLike[str] | Seq2SeqRunner,
    source: str,
    out_png: str | os.PathLike[str],
    *,
    output: str | None = None,
    num_beams: int = 1,
) -> Path | None:
    """Heatmap of the decoder's last-layer cross-attention (heads averaged) for ``source``.

    ``output``: the text to force-decode (default: the model's own output). Returns the PNG's
    path, or None when matplotlib is missing.
    """
    from ..analysis.plots import new_figure, save_figure

    runner = load_seq2seq(checkpoint)
    tokenizer, src_tokenizer = runner.tokenizer, runner.source_tokenizer
    if output is None:
        output = runner.run([source], num_beams=num_beams)[0]
    out_ids = tokenizer.encode(output) if output else []
    weights = cross_attention(
        runner.model, tokenizer, source, out_ids, source_tokenizer=src_tokenizer
    )  # (T, S)
    src_ids = encode_sources(src_tokenizer, [source], source_limit(runner.model))[0]
    fig = new_figure(figsize=(max(4.0, 0.4 * len(src_ids) + 2), max(3.0, 0.35 * len(out_ids) + 2)))
    if fig is None:
        logger.warning("matplotlib is not installed: no attention plot")
        return None
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(weights.cpu().numpy(), aspect="auto", cmap="viridis", vmin=0.0)
    ax.set_xticks(range(len(src_ids)))
    ax.set_xticklabels([_piece(src_tokenizer, i) for i in src_ids], rotation=90, fontsize=8)
    rows = [*out_ids, None]
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(["<eos>" if i is None else _piece(tokenizer, i) for i in rows], fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    fig.colorbar(image, ax=ax)
    return save_figure(fig, out_png)


def _piece(tokenizer: Any, token: int) -> str:
    try:
        return tokenizer.decode([token]).strip() or repr(tokenizer.decode([token]))
    except Exception:  # noqa: BLE001 - a label is never worth failing a plot
        return str(token)


__all__ = ["Seq2SeqRunner", "evaluate_seq2seq", "load_seq2seq", "plot_cross_attention"]
