"""Sequence to sequence: translation and summarization, one task configured by its metric.

- batches of pairs bucketed by length (:class:`~rnn2gpt.data.parallel.PairBatches`),
  deterministic per (seed, rank, step), so resuming is exact;
- cross-entropy over target tokens only (padding ignored), with optional label smoothing;
- validation loss and perplexity (no smoothing), and the task's metric of decoded validation
  pairs (BLEU for translation, ROUGE-1/2/L for summarization) when ``train.early_stop_metric``
  asks for it.

Sources are encoded (and padded) with the source tokenizer of a run with
``tokenizer.separate = true``, else with the joint tokenizer; targets and decoded outputs always
use ``tokenizer``. Sources and targets are cut to the model's positions (``model.max_context``)
when it has a limit.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GenerationConfig, RunConfig
from ..data.parallel import (
    IGNORE_INDEX,
    PairBatch,
    PairBatches,
    ParallelCorpus,
    encode_pairs,
    filter_pairs,
    load_parallel,
    pair_eval_batches,
)
from ..errors import ConfigError
from ..evaluation import lm_metrics
from ..evaluation.bleu_rouge import bleu, rouge
from ..models.base import eval_mode, model_device
from ..tokenizers.base import pick_source_tokenizer
from .base import TaskContext, register_task
from .decoding import decode_ids, special_ids

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskMetric:
    """How a task's decoded outputs are scored: the values ``train.early_stop_metric`` may take,
    the package that computes them (the ``[eval]`` extra), and the scorer: hypotheses and
    references -> the full result (numbers, and BLEU's signature)."""

    names: tuple[str, ...]
    package: str
    score: Callable[[Sequence[str], Sequence[Any]], dict[str, Any]]

    def numbers(self, hypotheses: Sequence[str], references: Sequence[Any]) -> dict[str, float]:
        """Only the metrics named in ``names`` (what early stopping and the log use)."""
        result = self.score(hypotheses, references)
        return {name: float(result[name]) for name in self.names}


METRICS = {
    "translation": TaskMetric(("bleu",), "sacrebleu", bleu),
    "summarization": TaskMetric(("rouge1", "rouge2", "rougeL"), "rouge_score", rouge),
}


@register_task("translation", "summarization", load_corpus=load_parallel)
class Seq2SeqTask:
    """Pairs, loss and metrics of a translation or summarization run.

    ``tokenizer`` encodes targets and decodes outputs; ``source_tokenizer`` (a run with
    ``tokenizer.separate = true``) encodes sources, which otherwise ``tokenizer`` does.
    """

    def __init__(
        self,
        config: RunConfig,
        corpus: ParallelCorpus,
        tokenizer: Any,
        source_tokenizer: Any,
        model: nn.Module,
        context: TaskContext,
    ) -> None:
        self.config = config
        self.metric = METRICS[config.train.task]
        self.tokenizer = tokenizer
        self.source_tokenizer = pick_source_tokenizer(tokenizer, source_tokenizer)
        self.corpus = corpus
        self.bos, self.eos, self.pad = special_ids(tokenizer)
        # Sources end in (and are padded with) their own tokenizer's specials.
        _, self.src_eos, self.src_pad = special_ids(self.source_tokenizer)
        dc, tc = config.data, config.train
        limit = model.max_context or 0
        max_src = min((x for x in (dc.max_source_len, limit) if x), default=0)
        max_tgt = min((x for x in (dc.max_target_len, limit) if x), default=0)

        sources, targets = self._encode(corpus.train)
        keep = filter_pairs(sources, targets, max_src, max_tgt)
        if len(keep) < len(sources):
            logger.info("kept %d of %d training pairs (length limits)", len(keep), len(sources))
        self.train_sources = [sources[i] for i in keep]
        self.train_targets = [targets[i] for i in keep]
        train_tokens = sum(len(t) + 1 for t in self.train_targets)
        self.specials = {
            "bos_id": self.bos,
            "eos_id": self.eos,
            "pad_id": self.pad,
            "src_pad_id": self.src_pad,
        }
        ranks = {"rank": context.rank, "world_size": context.world_size}
        self.batches = PairBatches(
            self.train_sources, self.train_targets, tc.batch_size, tc.seed, **ranks, **self.specials
        )
        self.splits = {"val": self._encode_eval(corpus.val, limit)}
        if corpus.test is not None:
            self.splits["test"] = self._encode_eval(corpus.test, limit)
        mean_target = train_tokens / max(len(self.train_targets), 1)
        self.tokens_per_step = int(self.batches.batch_size * mean_target)
        self.description = (
            f"{len(self.train_sources):,} training pairs ({train_tokens:,} target tokens), "
            f"{self.batches.batch_size} pairs per micro-batch"
        )

    # ------------------------------------------------------------------ the Task protocol

    def check(self) -> None:
        """The metric fits the task and its package is installed; there is something to score."""
        metric = self.config.train.early_stop_metric
        if metric != "val_loss" and metric not in self.metric.names:
            raise ConfigError(
                f"train.early_stop_metric={metric} does not fit train.task="
                f"{self.config.train.task}: use val_loss or {' or '.join(self.metric.names)}"
            )
        if metric != "val_loss" and importlib.util.find_spec(self.metric.package) is None:
            raise ConfigError(
                f"train.early_stop_metric={metric} needs the {self.metric.package} package, which "
                "is not installed: pip install 'rnn2gpt[eval]' (or set "
                "train.early_stop_metric=val_loss)"
            )
        if not self.splits["val"][0]:
            raise ConfigError("the validation data holds no pairs; give a validation file")

    def has_split(self, split: str) -> bool:
        return split in self.splits

    def batch(self, index: int) -> PairBatch:
        return self.batches.get(index)

    def loss(
        self, model: nn.Module, batch: PairBatch, state: Any
    ) -> tuple[torch.Tensor, int, None]:
        """Mean (label-smoothed) cross-entropy over the batch's target tokens and their count;
        nothing is carried between batches."""
        batch = batch.to(model_device(model))
        logits, _ = model(batch.tgt_in, source=batch.src, source_mask=batch.src_mask)
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            batch.tgt_out.reshape(-1),
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.config.train.label_smoothing,
        )
        return loss, batch.num_tokens, None

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, max_batches: int = 0) -> tuple[float, int]:
        """Mean token cross-entropy (no smoothing) on ``split``, and the tokens scored."""
        sources, targets = self.splits[split]
        device = model_device(model)
        total, count = 0.0, 0
        with eval_mode(model):
            for batch in pair_eval_batches(
                sources,
                targets,
                self.config.train.batch_size,
                max_batches=max_batches,
                **self.specials,
            ):
                batch = batch.to(device)
                logits, _ = model(batch.tgt_in, source=batch.src, source_mask=batch.src_mask)
                loss = F.cross_entropy(
                    logits.float().reshape(-1, logits.size(-1)),
                    batch.tgt_out.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
                total += float(loss)
                count += batch.num_tokens
        return total / max(count, 1), count

    def score(self, loss: float, tokens: int, split: str) -> dict[str, Any]:
        return lm_metrics(loss, tokens)  # no characters per token: pairs, not one text

    def decode_metrics(self, model: nn.Module) -> dict[str, float]:
        """BLEU (translation) or ROUGE (summarization) of the first ``train.metric_samples``
        validation pairs, decoded with ``train.metric_beams`` beams."""
        tc = self.config.train
        sources = self.splits["val"][0]
        n = len(sources) if tc.metric_samples <= 0 else min(tc.metric_samples, len(sources))
        if n == 0:
            return {}
        settings = GenerationConfig(temperature=0.0, num_beams=tc.metric_beams, max_new_tokens=256)
        ids = decode_ids(
            model, self.tokenizer, sources[:n], settings, source_tokenizer=self.source_tokenizer
        )
        hypotheses = [self.tokenizer.decode(t).strip() for t in ids]
        return self.metric.numbers(hypotheses, self.corpus.val.references[:n])

    # ------------------------------------------------------------------ encoding

    def _encode(self, split: Any) -> tuple[list[list[int]], list[list[int]]]:
        """Source ids (ending in the source eos) and target ids of ``split``."""
        return encode_pairs(
            split, self.tokenizer, eos_id=self.src_eos, source_tokenizer=self.source_tokenizer
        )

    def _encode_eval(self, split: Any, limit: int) -> tuple[list[list[int]], list[list[int]]]:
        """Evaluation pairs, all kept; cut to the model's positions when it has a limit."""
        sources, targets = self._encode(split)
        if limit:
            sources = [s if len(s) <= limit else s[: limit - 1] + [self.src_eos] for s in sources]
            targets = [t[: limit - 1] for t in targets]
        # A target must hold at least its eos to be scored; empty lines still score that.
        return sources, targets


__all__ = ["METRICS", "Seq2SeqTask", "TaskMetric"]
