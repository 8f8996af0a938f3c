"""A fixed seeded run computes the same losses as the trainer before every redesign and speed-up.

``tests/fixtures/reference_losses.json`` holds the first 20 losses of a tiny GPT and LSTM in fp32
(written once by ``tests/fixtures/make_reference_losses.py``); any change to the trainer, the
optimizer or the models that alters them is a change of results, not of speed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rnn2gpt.training import train

FIXTURES = Path(__file__).parents[1] / "fixtures"
_spec = importlib.util.spec_from_file_location("refs", FIXTURES / "make_reference_losses.py")
refs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(refs)


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_the_first_20_losses_are_unchanged(tmp_path, arch):
    expected = json.loads((FIXTURES / "reference_losses.json").read_text())[arch]
    corpus = tmp_path / "text.txt"
    corpus.write_text(refs.TEXT)
    run = tmp_path / "run"
    train(refs.config_for(arch, corpus, tmp_path / "cache"), run)
    assert refs.losses(run) == pytest.approx(expected, rel=1e-4)
