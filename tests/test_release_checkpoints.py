"""Checkpoints written by release 0.1.0 still load, generate the same, and resume.

``tests/fixtures/release-0.1.0/`` was written once by that release
(``tests/fixtures/make_release_fixtures.py``), with what it generated from each checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import rnn2gpt
from rnn2gpt import api

RELEASE = Path(__file__).parent / "fixtures" / "release-0.1.0"


@pytest.mark.parametrize("kind", ["gpt", "lstm", "lora"])
def test_language_models_generate_as_release_0_1_0_did(kind):
    expected = json.loads((RELEASE / kind / "expected.json").read_text())
    gen = rnn2gpt.load(RELEASE / kind)
    greedy = gen.complete([expected["prompt"]], max_new_tokens=24, temperature=0.0)[0][0]
    sample = gen.complete([expected["prompt"]], max_new_tokens=24, temperature=1.0, seed=7)[0][0]
    assert list(greedy.token_ids) == expected["greedy"]
    assert list(sample.token_ids) == expected["sample_seed7"]
    with torch.no_grad():
        logits, _ = gen.model(torch.tensor([expected["logits_input"]]))
    torch.testing.assert_close(logits[0], torch.tensor(expected["logits"]), atol=1e-5, rtol=1e-5)


def test_seq2seq_translates_as_release_0_1_0_did():
    expected = json.loads((RELEASE / "seq2seq" / "expected.json").read_text())
    directory = str(RELEASE / "seq2seq")
    assert rnn2gpt.translate(directory, expected["inputs"], num_beams=1) == expected["greedy"]
    assert rnn2gpt.translate(directory, expected["inputs"], num_beams=3) == expected["beam3"]


@pytest.mark.parametrize("kind", ["gpt", "lstm"])
def test_a_release_0_1_0_run_resumes(tmp_path, kind):
    run = tmp_path / kind
    shutil.copytree(RELEASE / kind, run)
    (run / "expected.json").unlink()
    steps = json.loads((run / "last" / "trainer_state.json").read_text())["step"]
    # The run read its text from a folder that is gone; the same text is kept beside it.
    text = str(RELEASE / "text.txt")
    result = api.train(out=run, resume=True, max_steps=steps + 3, data=text)
    assert result.steps == steps + 3
    assert result.best_val_loss is not None
