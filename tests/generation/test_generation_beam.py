"""Beam search on fake models: greedy equivalence, optimality, batching, eos and scores."""

from __future__ import annotations

import itertools

import pytest
import torch
from genfakes import TinyRecurrentLM, sequence_logprob, token_logprobs

from rnn2gpt.config import GenerationConfig
from rnn2gpt.generation import beam_search, generate

PROMPTS = [[3, 1], [2, 0, 1, 2, 2], [1]]


def beam_config(**kw) -> GenerationConfig:
    base = dict(temperature=0.0, num_beams=4, max_new_tokens=6, length_penalty=0.0)
    base.update(kw)
    return GenerationConfig(**base)


@pytest.fixture
def small():
    """A 5-token vocabulary, so that exhaustive search is cheap."""
    return TinyRecurrentLM(vocab_size=5, width=8, seed=3, sharp=2.0).eval()


def test_one_beam_equals_greedy(recurrent):
    greedy = generate(recurrent, PROMPTS, GenerationConfig(temperature=0.0, max_new_tokens=8))
    config = beam_config(num_beams=1, max_new_tokens=8)
    via_generate = generate(recurrent, PROMPTS, config)
    with torch.inference_mode():
        direct = beam_search(recurrent, PROMPTS, config)  # the beam code itself, K = 1
    expected = [r[0].token_ids for r in greedy]
    assert [r[0].token_ids for r in via_generate] == expected
    assert [r[0].token_ids for r in direct] == expected


def test_exhaustive_beam_finds_the_best_sequence(small):
    prompt, steps = [1, 2], 3
    # With K >= V^(steps-1) beams nothing is ever pruned: beam search is exact.
    config = beam_config(num_beams=25, num_return_sequences=3, max_new_tokens=steps)
    [results] = generate(small, [prompt], config)
    scored = sorted(
        (
            (sequence_logprob(small, prompt, list(seq)), list(seq))
            for seq in itertools.product(range(5), repeat=steps)
        ),
        reverse=True,
    )
    assert [g.token_ids for g in results] == [seq for _, seq in scored[:3]]
    assert [g.score for g in results] == pytest.approx([s for s, _ in scored[:3]], abs=1e-4)


def test_beam_scores_at_least_greedy(small, recurrent):
    """Beam search is not guaranteed to beat greedy (a narrow beam can prune the greedy path),
    so: a wide beam must never lose to greedy, and any beam must win on average."""
    generator = torch.Generator().manual_seed(0)
    for model in (small, recurrent):
        vocab = model.config.vocab_size
        prompts = [torch.randint(vocab, (n,), generator=generator).tolist() for n in range(1, 13)]
        greedy = generate(model, prompts, GenerationConfig(temperature=0.0, max_new_tokens=6))
        greedy_lp = [sequence_logprob(model, p, r[0].token_ids) for p, r in zip(prompts, greedy)]
        for beams in (2, 8):
            results = generate(model, prompts, beam_config(num_beams=beams))
            beam_lp = [sequence_logprob(model, p, r[0].token_ids) for p, r in zip(prompts, results)]
            gains = [b - g for b, g in zip(beam_lp, greedy_lp)]
            assert sum(gains) > 0
            if beams == 8:
                assert min(gains) >= -1e-5


def test_batched_beams_equal_one_by_one(recurrent):
    config = beam_config(num_return_sequences=2)
    batched = generate(recurrent, PROMPTS, config, pad_id=7)
    single = [generate(recurrent, [p], config)[0] for p in PROMPTS]
    assert [[g.token_ids for g in r] for r in batched] == [[g.token_ids for g in r] for r in single]
    for per_prompt in batched:
        assert per_prompt[0].score >= per_prompt[1].score
        assert per_prompt[0].token_ids != per_prompt[1].token_ids


def test_eos_hypotheses_and_length_penalty(small):
    eos, prompt = 4, [1, 0]
    for length_penalty in (0.0, 1.0, 2.0):
        config = beam_config(
            num_beams=3, max_new_tokens=8, length_penalty=length_penalty, num_return_sequences=3
        )
        [results] = generate(small, [prompt], config, eos_id=eos)
        assert [g.score for g in results] == sorted((g.score for g in results), reverse=True)
        for g in results:
            assert eos not in g.token_ids
            tokens = g.token_ids + ([eos] if g.finish_reason == "eos" else [])
            total = sequence_logprob(small, prompt, tokens)
            assert g.score == pytest.approx(total / len(tokens) ** length_penalty, abs=1e-4)
        assert any(g.finish_reason == "eos" for g in results)


def test_early_stopping_returns_finished_hypotheses(small):
    config = beam_config(
        num_beams=2, max_new_tokens=30, early_stopping=True, num_return_sequences=2
    )
    [results] = generate(small, [[1, 0]], config, eos_id=4)
    assert [g.finish_reason for g in results] == ["eos", "eos"]


def test_processors_apply_to_beams(recurrent):
    config = beam_config(max_new_tokens=12, no_repeat_ngram_size=2, num_return_sequences=4)
    [results] = generate(recurrent, [[1, 1, 2]], config)
    for g in results:
        sequence = [1, 1, 2] + g.token_ids
        bigrams = list(zip(sequence, sequence[1:]))
        assert len(bigrams) == len(set(bigrams))


def test_beam_logprobs(recurrent):
    prompt = [9, 8]
    [results] = generate(recurrent, [prompt], beam_config(num_return_sequences=2), logprobs=2)
    for g in results:
        assert g.logprobs == pytest.approx(token_logprobs(recurrent, prompt, g.token_ids), abs=1e-5)
        assert len(g.top_logprobs) == len(g.token_ids)
        assert all(len(alternatives) == 2 for alternatives in g.top_logprobs)


def test_beam_ignores_sampling_settings(recurrent):
    deterministic = generate(recurrent, PROMPTS, beam_config())
    with_sampling = generate(recurrent, PROMPTS, beam_config(temperature=1.5, top_k=2, seed=1))
    assert [r[0].token_ids for r in deterministic] == [r[0].token_ids for r in with_sampling]
