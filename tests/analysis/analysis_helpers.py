"""Helpers shared by the analysis tests (a uniquely named module, importable from any test)."""

from __future__ import annotations

import torch

from rnn2gpt.config import ModelConfig
from rnn2gpt.models import build_model

SENTENCES = [
    "the cat sat on the mat and looked at the dog.",
    "a dog ran after the cat in the garden today.",
    "she sells sea shells by the sea shore at noon.",
    "the quick brown fox jumps over the lazy dog.",
]


def tiny_text(repeats: int = 6) -> str:
    """About 1,100 characters of repetitive English."""
    lines = []
    for i in range(repeats):
        lines.extend(SENTENCES[(i + j) % len(SENTENCES)] for j in range(len(SENTENCES)))
    return "\n".join(lines) + "\n"


def tiny_model(arch: str, vocab_size: int, *, seed: int = 0, **model) -> torch.nn.Module:
    """A freshly initialised tiny model in eval mode (2 layers of width 16 unless told)."""
    values = dict(
        arch=arch, vocab_size=vocab_size, n_layer=2, n_embd=16, n_head=2, block_size=32, dropout=0.0
    )
    values.update(model)
    torch.manual_seed(seed)
    return build_model(ModelConfig(**values)).eval()
