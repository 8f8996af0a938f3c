"""Tiny model configurations shared by the model tests."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from rnn2gpt.config import ModelConfig
from rnn2gpt.models import build_model

VOCAB = 13

# id -> ModelConfig overrides; every architecture and cell variant the contract must hold for.
VARIANTS = {
    "rnn-tanh": dict(arch="rnn", nonlinearity="tanh"),
    "rnn-relu": dict(arch="rnn", nonlinearity="relu"),
    "lstm": dict(arch="lstm"),
    "gru": dict(arch="gru"),
    "rnn-tanh-explicit": dict(arch="rnn", cell="explicit"),
    "rnn-relu-explicit": dict(arch="rnn", nonlinearity="relu", cell="explicit"),
    "lstm-explicit": dict(arch="lstm", cell="explicit"),
    "gru-explicit": dict(arch="gru", cell="explicit"),
    "gpt": dict(arch="gpt"),
    "gpt-sinusoidal": dict(arch="gpt", pos_encoding="sinusoidal"),
}


def tiny_config(**overrides) -> ModelConfig:
    base = ModelConfig(
        arch="gpt", vocab_size=VOCAB, n_layer=2, n_embd=16, n_head=2, block_size=32, dropout=0.0
    )
    return replace(base, **overrides)


def tiny_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny_config(**overrides)).eval()


@pytest.fixture
def make_model():
    """Factory: ``make_model(seed=0, **ModelConfig overrides)`` -> a tiny eval-mode model."""
    return tiny_model


@pytest.fixture
def make_config():
    """Factory: ``make_config(**ModelConfig overrides)`` -> a tiny ModelConfig."""
    return tiny_config


@pytest.fixture(params=sorted(VARIANTS), ids=sorted(VARIANTS))
def variant_model(request):
    """An eval-mode tiny model of each architecture/cell variant."""
    return tiny_model(**VARIANTS[request.param])
