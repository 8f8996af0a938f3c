"""Fixtures for the decoding tests (the fakes themselves live in genfakes.py)."""

from __future__ import annotations

import pytest
from genfakes import ByteTokenizer, TinyRecurrentLM, TinyWindowLM


@pytest.fixture
def tokenizer() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture
def recurrent() -> TinyRecurrentLM:
    return TinyRecurrentLM().eval()


@pytest.fixture
def window() -> TinyWindowLM:
    return TinyWindowLM(max_context=32).eval()
