"""Helpers shared by the interop tests (a module of its own: conftest is not importable)."""

from __future__ import annotations

import torch

TRAIN_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! It's a naïve café, isn't it?",
    "ROMEO: But soft, what light through yonder window breaks?",
    "Numbers 3.14 and 2024 — also 中文 and emoji 🚀.",
    "  indented line\twith a tab",
]
SAMPLE_TEXTS = [
    "Hello, world!",
    "the lazy dog jumps over the quick brown fox",
    "  two leading spaces and trailing  ",
    "line one\nline two\n\nline four",
    "naïve café 中文 🚀🚀 3.14159",
    "don't stop<|endoftext|>next document",
    "",
]


def tiny_gpt2(transformers, vocab_size: int, eos_id: int, seed: int = 0, **overrides):
    """A random GPT2LMHeadModel, weights scaled up so greedy choices are far from ties."""
    config = transformers.GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=64,
        vocab_size=vocab_size,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        **overrides,
    )
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("wte.weight") or name.endswith("wpe.weight"):
                param.normal_(0.0, 0.5)
            elif param.dim() == 2:
                param.normal_(0.0, 0.15)
            else:
                param.normal_(0.0, 0.1).add_(
                    1.0 if ".ln_" in name and name.endswith("weight") else 0.0
                )
    return model.eval()
