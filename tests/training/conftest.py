"""Tiny corpora and run configurations for the training tests (a few seconds per run at most)."""

from __future__ import annotations

import threading

import pytest

from rnn2gpt.config import RunConfig

SENTENCES = [
    "the cat sat on the mat and looked at the dog.",
    "a dog ran after the cat in the garden today.",
    "she sells sea shells by the sea shore at noon.",
    "the quick brown fox jumps over the lazy dog.",
    "we walked to the market and bought some bread.",
    "it rained all day so the children stayed in.",
]


def corpus_text(repeats: int = 8) -> str:
    """About 2,800 characters of repetitive English: learnable in a few dozen steps."""
    lines = []
    for i in range(repeats):
        lines.extend(SENTENCES[(i + j) % len(SENTENCES)] for j in range(len(SENTENCES)))
    return "\n".join(lines) + "\n"


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text(), encoding="utf-8")
    return path


@pytest.fixture
def make_run_config(tmp_path, corpus, monkeypatch):
    """Factory: ``make_run_config(arch="gpt", tokenizer="char", **train_overrides)``."""
    monkeypatch.delenv("RNN2GPT_CACHE", raising=False)

    def make(arch: str = "gpt", tokenizer: str = "char", *, model=None, data=None, **train):
        model_values = dict(arch=arch, n_layer=1, n_embd=16, n_head=2, block_size=32, dropout=0.0)
        model_values.update(model or {})
        train_values = dict(
            batch_size=4,
            seq_len=16,
            max_steps=30,
            max_time=0.0,
            lr=1e-2,
            warmup_steps=3,
            eval_interval=10,
            eval_batches=4,
            log_interval=1,
            progress=False,
            precision="fp32",
            threads=1,
            seed=7,
        )
        train_values.update(train)
        data_values = dict(path=str(corpus), cache_dir=str(tmp_path / "cache"))
        data_values.update(data or {})
        tok_values = {"kind": tokenizer}
        if tokenizer == "bpe":
            tok_values["vocab_size"] = 300
        return RunConfig.from_dict(
            {
                "model": model_values,
                "tokenizer": tok_values,
                "data": data_values,
                "train": train_values,
            }
        ).validate()

    return make


class StopAfter(threading.Event):
    """An interrupt Event that reads as set from its (k+1)-th check on.

    The trainer consults its interrupt Event exactly once per step, before the step, so a run
    given ``StopAfter(k)`` stops after exactly k steps.
    """

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.checks = 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks > self.steps or super().is_set()


@pytest.fixture
def stop_after():
    return StopAfter
