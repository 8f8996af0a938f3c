"""Each logits processor on hand-made scores with known results; the builder's order."""

from __future__ import annotations

import math

import pytest
import torch
from genfakes import ByteTokenizer

from rnn2gpt.config import GenerationConfig
from rnn2gpt.errors import ConfigError
from rnn2gpt.generation import build_processors
from rnn2gpt.generation.processors import (
    PAD,
    BadWords,
    LogitBias,
    MinNewTokens,
    MinP,
    NoRepeatNGram,
    PresenceFrequencyPenalty,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    TypicalP,
    bad_words_ids,
)

INF = float("-inf")
V = 6


def ids(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


def banned(scores: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(row == INF).flatten().tolist() for row in scores]


def run(processor, input_ids, scores):
    """Apply and check the inputs were not modified."""
    ids_before, scores_before = input_ids.clone(), scores.clone()
    out = processor(input_ids, scores)
    assert torch.equal(input_ids, ids_before)
    assert torch.equal(scores, scores_before)
    assert out.shape == scores.shape
    return out


def test_logit_bias_adds_and_bans():
    scores = torch.zeros(2, V)
    out = run(LogitBias({1: 2.5, 4: INF}, V, torch.device("cpu")), ids([0], [0]), scores)
    assert out[:, 1].tolist() == [2.5, 2.5]
    assert banned(out) == [[4], [4]]
    assert out[:, [0, 2, 3, 5]].eq(0).all()


def test_logit_bias_rejects_unknown_token():
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        LogitBias({V: 1.0}, V, torch.device("cpu"))


def test_bad_words_single_and_sequences():
    processor = BadWords([[5], [1, 2], [3, 1, 4]], V, torch.device("cpu"))
    history = ids([PAD, 0, 1], [0, 3, 1], [PAD, PAD, 2])
    out = run(processor, history, torch.zeros(3, V))
    # row 0 ends with 1 -> ban 2; row 1 ends with 3 1 -> ban 4 (and 2, since it ends with 1)
    assert banned(out) == [[2, 5], [2, 4, 5], [5]]


def test_bad_words_ids_encodes_with_and_without_space():
    sequences = bad_words_ids(["ab"], ByteTokenizer())
    assert sequences == [[97, 98], [32, 97, 98]]
    with pytest.raises(ConfigError):
        bad_words_ids([""], ByteTokenizer())


def test_min_new_tokens_bans_eos_until_reached():
    processor = MinNewTokens(min_new=2, prompt_len=3, eos_id=4)
    scores = torch.randn(1, V)
    assert banned(run(processor, ids([0, 1, 2, 3]), scores)) == [[4]]  # 1 new token
    assert torch.equal(run(processor, ids([0, 1, 2, 3, 3]), scores), scores)  # 2 new tokens


def test_no_repeat_ngram_bans_continuations():
    # bigrams seen: (1,2) (2,3) (3,1); the row ends with 1 -> 2 is banned
    out = run(NoRepeatNGram(2), ids([1, 2, 3, 1]), torch.zeros(1, V))
    assert banned(out) == [[2]]
    # trigrams: (1,2,1) (2,1,2); ends with (1,2) -> ban 1
    out = run(NoRepeatNGram(3), ids([1, 2, 1, 2]), torch.zeros(1, V))
    assert banned(out) == [[1]]
    # n = 1 bans every token seen
    out = run(NoRepeatNGram(1), ids([PAD, 3, 0]), torch.zeros(1, V))
    assert banned(out) == [[0, 3]]


def test_no_repeat_ngram_ignores_padding():
    # the padded prefix (-1 -1) must not count as a bigram context
    out = run(NoRepeatNGram(2), ids([PAD, PAD, 4]), torch.zeros(1, V))
    assert banned(out) == [[]]
    out = run(NoRepeatNGram(3), ids([PAD, 4, 4]), torch.zeros(1, V))
    assert banned(out) == [[]]


def test_repetition_penalty_ctrl_style():
    scores = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0.5, 3.0]])
    out = run(RepetitionPenalty(2.0, V), ids([PAD, 0, 1, 1, 4]), scores)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0, 0.25, 3.0]]


def test_presence_and_frequency_count_generated_tokens_only():
    scores = torch.zeros(1, V)
    # prompt [2, 2] (width 2), generated [2, 3, 3]
    processor = PresenceFrequencyPenalty(presence=0.5, frequency=0.25, prompt_len=2, vocab_size=V)
    out = run(processor, ids([2, 2, 2, 3, 3]), scores)
    assert out[0].tolist() == [0.0, 0.0, -0.75, -1.0, 0.0, 0.0]


def test_temperature_divides():
    scores = torch.tensor([[1.0, -2.0]])
    assert run(Temperature(0.5), ids([0]), scores).tolist() == [[2.0, -4.0]]


def test_top_k_keeps_k_best():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.9, -1.0, 0.0]])
    out = run(TopK(2), ids([0]), scores)
    assert banned(out) == [[0, 2, 4, 5]]
    assert run(TopK(100), ids([0]), scores).isfinite().all()


def probs_scores(*probs: float) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in probs]])


def test_top_p_keeps_smallest_nucleus():
    scores = probs_scores(0.05, 0.5, 0.15, 0.3)
    assert banned(run(TopP(0.7), ids([0]), scores)) == [[0, 2]]  # 0.5 + 0.3 >= 0.7
    assert banned(run(TopP(0.85), ids([0]), scores)) == [[0]]
    assert banned(run(TopP(0.01), ids([0]), scores)) == [[0, 2, 3]]  # the top token stays


def test_min_p_relative_threshold():
    scores = probs_scores(0.5, 0.3, 0.15, 0.05)
    # threshold 0.4 * 0.5 = 0.2
    assert banned(run(MinP(0.4), ids([0]), scores)) == [[2, 3]]


def test_typical_p_keeps_tokens_closest_to_entropy():
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    scores = probs.log()[None]
    entropy = float(-(probs * probs.log()).sum())  # ~1.28 nats
    distance = (-probs.log() - entropy).abs()  # 0.36, 0.08, 0.33, 1.02
    order = distance.argsort().tolist()
    assert order == [1, 2, 0, 3]
    # keep until mass >= 0.45: 0.3 (tok 1) then 0.2 (tok 2) -> 0.5
    assert banned(run(TypicalP(0.45), ids([0]), scores)) == [[0, 3]]
    assert banned(run(TypicalP(0.1), ids([0]), scores)) == [[0, 2, 3]]


def test_shortlists_handle_banned_tokens():
    scores = torch.tensor([[INF, 0.0, 1.0, INF]])
    for processor in (TopP(0.9), TypicalP(0.9), MinP(0.1), TopK(3)):
        out = run(processor, ids([0]), scores)
        assert out[0, 2] == 1.0
        assert out[0, 0] == INF and out[0, 3] == INF


def names(processors) -> list[str]:
    return [type(p).__name__ for p in processors]


def test_builder_order_and_omission():
    assert build_processors(GenerationConfig(temperature=1.0), vocab_size=V) == []
    everything = GenerationConfig(
        temperature=0.7,
        top_k=3,
        top_p=0.9,
        min_p=0.05,
        typical_p=0.95,
        repetition_penalty=1.2,
        presence_penalty=0.1,
        frequency_penalty=0.1,
        no_repeat_ngram_size=2,
        bad_words=("a",),
        logit_bias=((1, 1.0),),
        min_new_tokens=2,
    )
    built = build_processors(
        everything, vocab_size=300, eos_id=256, prompt_len=3, tokenizer=ByteTokenizer()
    )
    assert names(built) == [
        "LogitBias",
        "BadWords",
        "MinNewTokens",
        "NoRepeatNGram",
        "RepetitionPenalty",
        "PresenceFrequencyPenalty",
        "Temperature",
        "TopK",
        "TopP",
        "MinP",
        "TypicalP",
    ]
    # greedy (temperature 0) and beam search leave the sampling steps out
    greedy = build_processors(
        GenerationConfig(temperature=0.0, top_k=3, top_p=0.5, repetition_penalty=1.3),
        vocab_size=V,
    )
    assert names(greedy) == ["RepetitionPenalty"]
    beam = build_processors(everything, vocab_size=300, eos_id=256, sampling=False, bad_words=[])
    assert "Temperature" not in names(beam) and "TopK" not in names(beam)
    # min_new_tokens without a known eos has nothing to ban
    assert build_processors(GenerationConfig(min_new_tokens=3, temperature=1.0), vocab_size=V) == []


def test_builder_needs_tokenizer_for_bad_words():
    with pytest.raises(ConfigError, match="tokenizer"):
        build_processors(GenerationConfig(bad_words=("x",)), vocab_size=V)
