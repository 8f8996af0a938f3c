"""What the trainer trains on, beyond language modelling: sequence-to-sequence pairs.

The trainer's loop (steps, accumulation, clipping, schedule, checkpoints, resume, early
stopping) is the same for every task; a task supplies the data and the loss. Language
modelling (``train.task = "lm"``) is the trainer's built-in path; :class:`Seq2SeqTask` serves
``translation`` and ``summarization``:

- batches of pairs bucketed by length (:class:`~rnn2gpt.data.parallel.PairBatches`),
  deterministic per (seed, step), so resuming is exact;
- cross-entropy over target tokens only (padding ignored), with optional label smoothing;
- validation loss and perplexity (no smoothing), and BLEU (translation) or ROUGE
  (summarization) of decoded validation pairs when ``train.early_stop_metric`` asks for them.

Sources are encoded (and padded) with the source tokenizer of a run with
``tokenizer.separate = true``, else with the joint tokenizer; targets and decoded outputs always
use ``tokenizer``.
"""

from __future__ import annotations

import logging
import math
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
from ..models.base import eval_mode
from ..tokenizers.base import pick_source_tokenizer
from .precision import autocast

logger = logging.getLogger(__name__)


def is_seq2seq_task(config: RunConfig) -> bool:
    """True when the run trains an encoder-decoder (translation or summarization)."""
    return config.train.task != "lm"


class Seq2SeqTask:
    """Pairs, loss and metrics of a translation or summarization run.

    ``tokenizer`` encodes targets and decodes outputs; ``source_tokenizer`` (a run with
    ``tokenizer.separate = true``) encodes sources, which otherwise ``tokenizer`` does.
    """

    def __init__(
        self,
        config: RunConfig,
        tokenizer: Any,
        corpus: ParallelCorpus,
        *,
        rank: int = 0,
        world_size: int = 1,
        source_tokenizer: Any = None,
    ) -> None:
        from ..tasks.common import special_ids

        self.config = config
        self.tokenizer = tokenizer
        self.source_tokenizer = pick_source_tokenizer(tokenizer, source_tokenizer)
        self.corpus = corpus
        self.bos, self.eos, self.pad = special_ids(tokenizer)
        # Sources end in (and are padded with) their own tokenizer's specials.
        _, self.src_eos, self.src_pad = special_ids(self.source_tokenizer)
        dc, tc = config.data, config.train
        limit = config.model.block_size if config.model.arch == "transformer" else 0
        max_src = (
            min(x for x in (dc.max_source_len, limit) if x) if dc.max_source_len or limit else 0
        )
        max_tgt = (
            min(x for x in (dc.max_target_len, limit) if x) if dc.max_target_len or limit else 0
        )

        sources, targets = self._encode(corpus.train)
        keep = filter_pairs(sources, targets, max_src, max_tgt)
        if len(keep) < len(sources):
            logger.info("kept %d of %d training pairs (length limits)", len(keep), len(sources))
        self.train_sources = [sources[i] for i in keep]
        self.train_targets = [targets[i] for i in keep]
        self.train_tokens = sum(len(t) + 1 for t in self.train_targets)
        specials = {
            "bos_id": self.bos,
            "eos_id": self.eos,
            "pad_id": self.pad,
            "src_pad_id": self.src_pad,
        }
        self.batches = PairBatches(
            self.train_sources,
            self.train_targets,
            tc.batch_size,
            tc.seed,
            rank=rank,
            world_size=world_size,
            **specials,
        )
        self.specials = specials
        self.val = self._encode_eval(corpus.val, limit)
        self.test = None if corpus.test is None else self._encode_eval(corpus.test, limit)

    @classmethod
    def from_config(
        cls, config: RunConfig, tokenizer: Any, corpus: ParallelCorpus | None = None, **kw: Any
    ) -> Seq2SeqTask:
        """Read the pairs ``config.data`` names (unless ``corpus`` is given); ``kw`` as in
        the constructor (``source_tokenizer``, ``rank``, ``world_size``)."""
        return cls(config, tokenizer, corpus or load_parallel(config.data), **kw)

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

    # ------------------------------------------------------------------ training

    def loss(self, model: nn.Module, batch: PairBatch) -> tuple[torch.Tensor, int]:
        """Mean (label-smoothed) cross-entropy over the batch's target tokens, and their count."""
        logits, _ = model(batch.tgt_in, source=batch.src, source_mask=batch.src_mask)
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            batch.tgt_out.reshape(-1),
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.config.train.label_smoothing,
        )
        return loss, batch.num_tokens

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        split: str = "val",
        *,
        max_batches: int = 0,
        dtype: torch.dtype | None = None,
    ) -> dict[str, Any]:
        """Mean token cross-entropy (no smoothing) on ``split``: dict(loss, perplexity, ...)."""
        from ..evaluation import lm_metrics

        sources, targets = self.val if split == "val" else (self.test or ([], []))
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            for batch in pair_eval_batches(
                sources,
                targets,
                self.config.train.batch_size,
                max_batches=max_batches,
                **self.specials,
            ):
                batch = batch.to(device)
                with autocast(device, dtype):
                    logits, _ = model(batch.tgt_in, source=batch.src, source_mask=batch.src_mask)
                loss = F.cross_entropy(
                    logits.float().reshape(-1, logits.size(-1)),
                    batch.tgt_out.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
                total += float(loss)
                count += batch.num_tokens
        finally:
            model.train(was_training)
        return lm_metrics(total / max(count, 1), count)

    def decode_metrics(self, model: nn.Module, split: str = "val") -> dict[str, Any]:
        """BLEU (translation) or ROUGE (summarization) of the first ``train.metric_samples``
        pairs of ``split``, decoded with ``train.metric_beams`` beams."""
        from ..evaluation.bleu_rouge import bleu, rouge
        from ..tasks.common import decode_ids

        tc = self.config.train
        data = self.corpus.val if split == "val" else self.corpus.test
        sources = (self.val if split == "val" else self.test or ([], []))[0]
        n = len(sources) if tc.metric_samples <= 0 else min(tc.metric_samples, len(sources))
        if data is None or n == 0:
            return {}
        settings = GenerationConfig(temperature=0.0, num_beams=tc.metric_beams, max_new_tokens=256)
        with eval_mode(model):
            ids = decode_ids(
                model, self.tokenizer, sources[:n], settings, source_tokenizer=self.source_tokenizer
            )
        hypotheses = [self.tokenizer.decode(t).strip() for t in ids]
        references = data.references[:n]
        if tc.task == "translation":
            return {"bleu": bleu(hypotheses, references)["bleu"]}
        return rouge(hypotheses, references)


def better(metric: str, value: float, best: float | None) -> bool:
    """True when ``value`` improves on ``best`` (loss: lower; BLEU/ROUGE: higher)."""
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return value < best if metric == "val_loss" else value > best


__all__ = ["Seq2SeqTask", "better", "is_seq2seq_task"]
