"""Fixtures of the analysis tests: a tiny corpus, a char tokenizer, tiny checkpoints."""

from __future__ import annotations

import pytest
from analysis_helpers import tiny_model, tiny_text

from rnn2gpt.config import RunConfig, TrainConfig
from rnn2gpt.tokenizers import CharTokenizer


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(tiny_text(), encoding="utf-8")
    return path


@pytest.fixture
def char_tokenizer():
    return CharTokenizer.train(tiny_text())


@pytest.fixture
def make_checkpoint(tmp_path, char_tokenizer):
    """Factory: ``make_checkpoint("gpt", **model) -> Path`` of a saved, untrained checkpoint."""
    from rnn2gpt.checkpoint import save_checkpoint

    def make(arch: str, data=None, **model):
        net = tiny_model(arch, char_tokenizer.vocab_size, **model)
        config = RunConfig(model=net.config, train=TrainConfig(threads=1, progress=False))
        if data is not None:
            config = config.with_values("data", **data)
        return save_checkpoint(
            tmp_path / f"ckpt-{arch}", model=net, tokenizer=char_tokenizer, config=config
        )

    return make
