"""Shared fixtures for the data tests: a tiny character tokenizer that counts its calls."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest


class CountingCharTokenizer:
    """Just enough of the tokenizer contract for the data package; counts encode calls."""

    def __init__(self, alphabet: str, vocab_size: int | None = None) -> None:
        self.alphabet = alphabet
        self.index = {ch: i for i, ch in enumerate(alphabet)}
        self.vocab_size = vocab_size if vocab_size is not None else len(alphabet)
        self.calls = 0

    def encode_array(self, text: str) -> np.ndarray:
        self.calls += 1
        return np.array([self.index[ch] for ch in text], dtype=np.int64)

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.alphabet}|{self.vocab_size}".encode()).hexdigest()


@pytest.fixture
def make_tokenizer():
    return CountingCharTokenizer


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private cache directory; $RNN2GPT_CACHE is cleared so the home cache is never touched."""
    monkeypatch.delenv("RNN2GPT_CACHE", raising=False)
    return tmp_path / "cache"
