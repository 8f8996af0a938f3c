"""Language modelling: predict the next token of a text.

A model whose ``carries_state`` is True (the RNN family) is fed contiguous streams and its state
is carried from batch to batch (truncated backpropagation through time: the values carry on, the
graph is cut); any other model gets independent random windows. The task never asks which
architecture it trains.

Metrics: mean next-token cross-entropy, perplexity, bits per token, and bits per character (the
text's characters per token are known here).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import RunConfig
from ..data import StreamBatches, WindowBatches, encode_cached, eval_batches, load_corpus, read_text
from ..errors import ConfigError, TokenizerError
from ..evaluation import evaluate_lm, lm_metrics
from ..models import next_token_loss
from .base import TaskContext, register_task

logger = logging.getLogger(__name__)


@register_task("lm", load_corpus=load_corpus)
class LanguageModelTask:
    """Windows or streams of one text; cross-entropy of every next token.

    Built by the registry as every task is; one tokenizer (``source_tokenizer`` is unused).
    """

    def __init__(
        self,
        config: RunConfig,
        corpus: Any,
        tokenizer: Any,
        source_tokenizer: Any,
        model: nn.Module,
        context: TaskContext,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.context = context
        self.stream = bool(model.carries_state)
        self.max_context = model.max_context
        tc = config.train
        # Token ids: rank 0 fills the cache first, so ranks never race to write it.
        source = config.data.path or "the bundled corpus"
        if context.rank == 0:
            self.train_ids = self._encode(corpus.train_text, f"the training text ({source})")
        context.barrier()
        if context.rank != 0:
            self.train_ids = self._encode(corpus.train_text, f"the training text ({source})")
        self.val_ids = self._encode(corpus.val_text, "the validation text")
        self.chars = {"val": len(corpus.val_text) / max(len(self.val_ids), 1)}
        self.test_ids: np.ndarray | None = None
        test_text = _test_text(corpus, config)
        if test_text is not None:  # encoded now, so that a bad test text fails before training
            self.test_ids = self._encode(test_text, "the test text")
            self.chars["test"] = len(test_text) / max(len(self.test_ids), 1)

        shape = (tc.batch_size, tc.seq_len)
        ranks = {"rank": context.rank, "world_size": context.world_size}
        if self.stream:
            self.batches: Any = StreamBatches(self.train_ids, *shape, **ranks)
        else:
            self.batches = WindowBatches(self.train_ids, *shape, tc.seed, **ranks)
        self.tokens_per_step = tc.batch_size * tc.seq_len
        per_pass = f", {len(self.batches)} batches per pass" if self.stream else ""
        self.description = f"{len(self.train_ids):,} tokens of training text{per_pass}"

    # ------------------------------------------------------------------ the Task protocol

    def check(self) -> None:
        """Windows fit the model's context (a fine-tune keeps its source's), and the validation
        text fills a batch: fail now, not at the first evaluation."""
        tc = self.config.train
        if self.max_context is not None and tc.seq_len > self.max_context:
            raise ConfigError(
                f"train.seq_len ({tc.seq_len}) exceeds the model's context ({self.max_context} "
                f"tokens); set train.seq_len={self.max_context} or less"
            )
        name = "the validation text"
        next(eval_batches(self.val_ids, tc.batch_size, tc.seq_len, 1, self.stream, name=name))

    def has_split(self, split: str) -> bool:
        return split == "val" or (split == "test" and self.test_ids is not None)

    def batch(self, index: int) -> Any:
        return self.batches.get(index)

    @property
    def plain_windows(self) -> bool:
        """Whether every training batch is a pair of token windows (x, y) whose loss is
        ``next_token_loss``'s mean with nothing carried: what a fused step may compute instead
        (:mod:`rnn2gpt.training.fused_step`)."""
        return not self.stream

    def loss(self, model: nn.Module, batch: Any, state: Any) -> tuple[torch.Tensor, int, Any]:
        """Mean next-token cross-entropy of a batch; the state to carry (streams) or None."""
        x, y = batch[0], batch[1]
        device = next(model.parameters()).device
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        carried = None
        if self.stream and not batch[2] and state is not None:
            carried = state.detach()  # truncated BPTT: keep the values, cut the graph
        loss, new_state = next_token_loss(model, x, y, carried)
        return loss, y.numel(), new_state if self.stream else None

    def evaluate(self, model: nn.Module, split: str, max_batches: int = 0) -> tuple[float, int]:
        tc = self.config.train
        ids = self.val_ids if split == "val" else self.test_ids
        metrics = evaluate_lm(
            model,
            ids,
            batch_size=tc.batch_size,
            seq_len=tc.seq_len,
            stream=self.stream,
            max_batches=max_batches,
        )
        return metrics["loss"], metrics["tokens"]

    def score(self, loss: float, tokens: int, split: str) -> dict[str, Any]:
        return lm_metrics(loss, tokens, self.chars.get(split))

    def decode_metrics(self, model: nn.Module) -> dict[str, float]:
        return {}

    # ------------------------------------------------------------------ helpers

    def _encode(self, text: str, what: str) -> np.ndarray:
        """Token ids of ``text`` (cached); a clear error when a fine-tune's base tokenizer
        cannot encode the new text."""
        try:
            return encode_cached(text, self.tokenizer, self.config.data.cache_dir)
        except TokenizerError as exc:
            if not self.context.finetuning:
                raise
            raise base_tokenizer_error(text, self.tokenizer, what, exc) from None


def _test_text(corpus: Any, config: RunConfig) -> str | None:
    """The test text: the corpus's own, or ``data.test_path`` (relative to ``data.data_dir``)."""
    text = getattr(corpus, "test_text", None)
    if text:
        return text
    if not config.data.test_path:
        return None
    path = Path(config.data.test_path).expanduser()
    if config.data.data_dir and not path.is_absolute():
        path = Path(config.data.data_dir).expanduser() / path
    return read_text(path)


def base_tokenizer_error(
    text: str, tokenizer: Any, what: str, error: TokenizerError
) -> TokenizerError:
    """The error for new text that the fine-tuning source's tokenizer cannot encode."""
    unknown = []
    for char in sorted(set(text)):
        try:
            tokenizer.encode(char)
        except TokenizerError:
            unknown.append(char)
    if not unknown:
        return TokenizerError(
            f"the base model's {tokenizer.kind} tokenizer cannot encode {what}: {error}"
        )
    shown = ", ".join(repr(c) for c in unknown[:10])
    more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
    return TokenizerError(
        f"the base model's {tokenizer.kind} tokenizer cannot encode the new data: {what} has "
        f"{len(unknown)} character(s) it has never seen ({shown}{more}); fine-tune on text "
        "without them, or start from a base model that can encode them (one trained with "
        "tokenizer.unk=true maps unseen characters to <unk>; a BPE tokenizer encodes any text)"
    )


__all__ = ["LanguageModelTask", "base_tokenizer_error"]
