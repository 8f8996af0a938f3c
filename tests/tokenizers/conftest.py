"""Shared fixtures for the tokenizer tests: a small multilingual corpus and one tiny trained BPE."""

from __future__ import annotations

import random

import pytest

from rnn2gpt.tokenizers import BPETokenizer

_WORDS = (
    "the of and to in is that it was for on are with as his they be at one have this from "
    "or had by word but what some we can out other were all there when up use your how said "
    "an each she which do their time if will way about many then them write would like so "
    "these her long make thing see him two has look more day could go come did number sound"
).split()
_EXTRAS = [
    "don't",
    "it's",
    "Hello,",
    "world!",
    "(aside)",
    '"quoted"',
    "naïve",
    "café",
    "e\u0301",  # e + combining acute accent
    "中文",
    "日本語",
    "😀",
    "🚀🚀",
    "3.14",
    "2024",
    "  ",
    "\t",
]


def make_corpus(n_lines: int = 300, seed: int = 0) -> str:
    """Deterministic text of ``n_lines`` lines mixing English words, accents, CJK and emoji."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
        if rng.random() < 0.5:
            words.insert(rng.randrange(len(words) + 1), rng.choice(_EXTRAS))
        lines.append(" ".join(words) + rng.choice([".", "", "?", "!"]))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus() -> str:
    return make_corpus()


@pytest.fixture(scope="session")
def tiny_bpe(corpus: str) -> BPETokenizer:
    """A byte-level BPE of 300 tokens (256 bytes, <|endoftext|> and 43 merges), trained once."""
    return BPETokenizer.train(corpus, vocab_size=300)
