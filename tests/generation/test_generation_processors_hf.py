"""Cross-check the processors against Hugging Face's on random scores (same definitions)."""

from __future__ import annotations

import pytest
import torch

from rnn2gpt.generation.processors import (
    MinP,
    NoRepeatNGram,
    RepetitionPenalty,
    TopK,
    TopP,
    TypicalP,
)

hf = pytest.importorskip("transformers.generation.logits_process")


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 50, generator=generator) * 3
    input_ids = torch.randint(0, 50, (4, 12), generator=generator)
    return input_ids, scores


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (TopK(7), lambda: hf.TopKLogitsWarper(7)),
        (TopP(0.8), lambda: hf.TopPLogitsWarper(0.8)),
        (MinP(0.1), lambda: hf.MinPLogitsWarper(0.1)),
        (TypicalP(0.7), lambda: hf.TypicalLogitsWarper(0.7)),
        (RepetitionPenalty(1.5, 50), lambda: hf.RepetitionPenaltyLogitsProcessor(1.5)),
        (NoRepeatNGram(2), lambda: hf.NoRepeatNGramLogitsProcessor(2)),
        (NoRepeatNGram(3), lambda: hf.NoRepeatNGramLogitsProcessor(3)),
    ],
    ids=["top_k", "top_p", "min_p", "typical_p", "repetition", "ngram2", "ngram3"],
)
def test_matches_hugging_face(batch, ours, theirs):
    input_ids, scores = batch
    if isinstance(ours, NoRepeatNGram):
        # few distinct tokens so that n-grams repeat
        input_ids = input_ids % 3
    expected = theirs()(input_ids, scores.clone())
    got = ours(input_ids, scores)
    assert torch.equal(got.isinf(), expected.isinf())
    finite = ~got.isinf()
    torch.testing.assert_close(got[finite], expected[finite])
