"""Decoding over the four real architectures (tiny random weights): the engine never asks which
architecture it holds, so the same properties must hold for each."""

from __future__ import annotations

import pytest
import torch
from genfakes import ByteTokenizer, sequence_logprob, token_logprobs, uncached_greedy

from rnn2gpt.config import GenerationConfig, ModelConfig
from rnn2gpt.generation import generate, stream
from rnn2gpt.models import build_model

ARCHS = ["gpt", "lstm", "gru", "rnn"]
VOCAB = ByteTokenizer().vocab_size
PROMPTS = [list(b"To be"), list(b"or"), list(b"not to be, that is")]
GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=10)


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    torch.manual_seed(0)
    config = ModelConfig(
        arch=request.param,
        vocab_size=VOCAB,
        n_layer=2,
        n_embd=16,
        n_head=2,
        block_size=48,
        # A spread-out init, so that greedy and beam search differ on a random model.
        tie_weights=False,
    )
    built = build_model(config).eval()
    with torch.no_grad():
        for name, param in built.named_parameters():
            if name.endswith("weight") and param.dim() == 2:
                param.mul_(3.0)
    return built


def test_cached_equals_uncached_greedy(model):
    for prompt in PROMPTS:
        [[result]] = generate(model, [prompt], GREEDY)
        assert result.token_ids == uncached_greedy(model, prompt, 10)


def test_batched_equals_one_by_one(model):
    beam = GenerationConfig(temperature=0.0, num_beams=3, max_new_tokens=8, num_return_sequences=2)
    for config in (GREEDY, beam):
        batched = generate(model, PROMPTS, config, pad_id=5)
        single = [generate(model, [p], config)[0] for p in PROMPTS]
        assert [[g.token_ids for g in r] for r in batched] == [
            [g.token_ids for g in r] for r in single
        ]


def test_beam_search_beats_greedy(model):
    beam = GenerationConfig(temperature=0.0, num_beams=6, max_new_tokens=8, length_penalty=0.0)
    greedy = generate(model, PROMPTS, GenerationConfig(temperature=0.0, max_new_tokens=8))
    best = generate(model, PROMPTS, beam)
    for prompt, [g], [b] in zip(PROMPTS, greedy, best):
        assert (
            sequence_logprob(model, prompt, b.token_ids)
            >= sequence_logprob(model, prompt, g.token_ids) - 1e-4
        )
        assert b.score == pytest.approx(sequence_logprob(model, prompt, b.token_ids), abs=1e-3)


def test_sampling_stream_and_logprobs(model):
    tokenizer = ByteTokenizer()
    config = GenerationConfig(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=9)
    prompt = PROMPTS[0]
    [[result]] = generate(model, [prompt], config, tokenizer=tokenizer, logprobs=2)
    assert "".join(stream(model, prompt, config, tokenizer=tokenizer)) == result.text
    expected = token_logprobs(model, prompt, result.token_ids)
    assert result.logprobs == pytest.approx(expected, abs=1e-4)
    [[again]] = generate(model, [prompt], config, tokenizer=tokenizer)
    assert again.token_ids == result.token_ids
