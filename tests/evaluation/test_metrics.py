"""evaluate_lm: the loss, perplexity and bits of known cases; streaming carries the state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnn2gpt.config import ModelConfig
from rnn2gpt.evaluation import evaluate_lm, lm_metrics
from rnn2gpt.models import build_model


class Uniform(nn.Module):
    """Scores every token equally: the loss is exactly ln(V)."""

    carries_state = False
    max_context = None

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.anchor = nn.Parameter(torch.zeros(()))
        self.modes: list[bool] = []

    def forward(self, tokens, state=None):
        self.modes.append(self.training)
        return torch.zeros(*tokens.shape, self.vocab) + self.anchor, state


def test_uniform_model_scores_ln_vocab():
    model = Uniform(8).train()
    ids = np.arange(101) % 8
    result = evaluate_lm(model, ids, batch_size=3, seq_len=7, stream=False, chars_per_token=2.0)
    assert result["tokens"] == 100  # every target scored once
    assert result["loss"] == pytest.approx(math.log(8))
    assert result["perplexity"] == pytest.approx(8.0)
    assert result["bits_per_token"] == pytest.approx(3.0)
    assert result["bits_per_char"] == pytest.approx(1.5)
    assert model.modes and not any(model.modes)  # evaluated in eval mode...
    assert model.training  # ...and the training mode restored


def test_max_batches_limits_the_scored_tokens():
    result = evaluate_lm(
        Uniform(5), np.arange(200) % 5, batch_size=2, seq_len=10, stream=False, max_batches=3
    )
    assert result["tokens"] == 60
    assert result["bits_per_char"] is None


def test_lm_metrics_overflow():
    assert lm_metrics(1000.0, 1)["perplexity"] == math.inf


def test_streaming_equals_one_long_forward_pass():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="lstm", vocab_size=11, n_layer=1, n_embd=8))
    ids = np.random.default_rng(0).integers(0, 11, size=91)
    batch, seq = 2, 9
    streamed = evaluate_lm(model, ids, batch_size=batch, seq_len=seq, stream=True)

    lanes = torch.as_tensor(ids[: (len(ids) // batch) * batch].astype(np.int64)).view(batch, -1)
    with torch.no_grad():
        logits, _ = model.eval()(lanes[:, :-1])
    expected = F.cross_entropy(logits.reshape(-1, 11), lanes[:, 1:].reshape(-1)).item()
    assert streamed["tokens"] == lanes[:, 1:].numel()
    assert streamed["loss"] == pytest.approx(expected, rel=1e-5)

    windows = evaluate_lm(model, ids, batch_size=batch, seq_len=seq, stream=False)
    assert windows["loss"] != pytest.approx(expected, rel=1e-5)  # resets lose context
