"""Fixtures for the Hugging Face interop tests: a tiny BPE and tiny random GPT-2 models.

Everything is built in the test's tmp_path; nothing is downloaded (HF_HUB_OFFLINE is set before
transformers is imported).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
from interop_helpers import TRAIN_LINES, tiny_gpt2  # noqa: E402

from rnn2gpt.tokenizers import BPETokenizer  # noqa: E402


@pytest.fixture(scope="session")
def bpe() -> BPETokenizer:
    """A byte-level BPE of about 300 tokens; <|endoftext|> is id 0."""
    return BPETokenizer.train("\n".join(TRAIN_LINES * 20), vocab_size=300)


@pytest.fixture(scope="session")
def transformers_mod():
    return pytest.importorskip("transformers")


@pytest.fixture
def hf_dir(tmp_path, bpe, transformers_mod):
    """(directory, hf model): a save_pretrained GPT-2 with vocab.json + merges.txt."""
    model = tiny_gpt2(transformers_mod, bpe.vocab_size, bpe.eos_id)
    directory = tmp_path / "hf"
    model.save_pretrained(directory)
    bpe.save_gpt2_files(directory)
    return directory, model
