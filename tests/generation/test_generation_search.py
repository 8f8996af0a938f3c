"""Greedy and sampled decoding on fake models: argmax chains, batching, seeds, eos, logprobs."""

from __future__ import annotations

import pytest
import torch
from genfakes import (
    EOS,
    ScriptedLM,
    TinyRecurrentLM,
    token_logprobs,
    uncached_greedy,
)

from rnn2gpt.config import GenerationConfig
from rnn2gpt.generation import generate

GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=12)
PROMPTS = [[72, 101, 108], [1, 2, 3, 4, 5, 6, 7], [200]]


def tokens_of(results) -> list[list[int]]:
    return [g.token_ids for per_prompt in results for g in per_prompt]


@pytest.mark.parametrize("name", ["recurrent", "window"])
def test_greedy_is_the_argmax_chain(request, name):
    model = request.getfixturevalue(name)
    for prompt in PROMPTS:
        [[result]] = generate(model, [prompt], GREEDY)
        assert result.token_ids == uncached_greedy(model, prompt, 12)
        assert result.finish_reason == "length"
        assert result.text is None


@pytest.mark.parametrize("name", ["recurrent", "window"])
def test_batched_prompts_equal_one_by_one(request, name):
    model = request.getfixturevalue(name)
    batched = tokens_of(generate(model, PROMPTS, GREEDY, pad_id=9))
    single = [tokens_of(generate(model, [p], GREEDY))[0] for p in PROMPTS]
    assert batched == single


def test_same_seed_same_samples_different_seed_different(recurrent):
    config = GenerationConfig(temperature=1.0, max_new_tokens=20, seed=7)
    first = tokens_of(generate(recurrent, PROMPTS, config))
    again = tokens_of(generate(recurrent, PROMPTS, config))
    other = tokens_of(
        generate(recurrent, PROMPTS, GenerationConfig(temperature=1.0, seed=8, max_new_tokens=20))
    )
    assert first == again
    assert first != other


def test_sampling_draws_from_the_processed_distribution_with_a_private_generator(recurrent):
    prompt, temperature = [10, 20, 30], 0.7
    config = GenerationConfig(temperature=temperature, max_new_tokens=15, seed=123)
    rng_before = torch.random.get_rng_state()
    [[result]] = generate(recurrent, [prompt], config)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched

    # The same draws by hand: softmax(logits / T), one multinomial per step, same generator.
    generator = torch.Generator().manual_seed(123)
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(15):
            logits, _ = recurrent(torch.tensor([sequence]))
            probs = (logits[0, -1] / temperature).softmax(-1)
            sequence.append(int(torch.multinomial(probs[None], 1, generator=generator)))
    assert result.token_ids == sequence[len(prompt) :]


def test_num_return_sequences(recurrent):
    config = GenerationConfig(temperature=1.0, max_new_tokens=10, seed=3, num_return_sequences=3)
    results = generate(recurrent, PROMPTS[:2], config)
    assert [len(r) for r in results] == [3, 3]
    assert len({tuple(g.token_ids) for g in results[0]}) > 1  # different samples
    greedy = generate(
        recurrent,
        PROMPTS[:2],
        GenerationConfig(temperature=0.0, max_new_tokens=10, num_return_sequences=2),
    )
    assert greedy[0][0].token_ids == greedy[0][1].token_ids


def test_top_k_one_sampling_equals_greedy(recurrent):
    sampled = generate(
        recurrent, PROMPTS, GenerationConfig(temperature=1.3, top_k=1, seed=5, max_new_tokens=8)
    )
    greedy = generate(recurrent, PROMPTS, GenerationConfig(temperature=0.0, max_new_tokens=8))
    assert tokens_of(sampled) == tokens_of(greedy)


def test_eos_ends_a_row_and_is_not_returned(tokenizer):
    script = list(b"abcdef") + [EOS] + list(b"xyz")
    model = ScriptedLM(script)
    prompts = [list(b"ab"), list(b"abcde")]
    results = generate(model, prompts, GREEDY, tokenizer=tokenizer)
    assert [r[0].token_ids for r in results] == [list(b"cdef"), list(b"f")]
    assert [r[0].finish_reason for r in results] == ["eos", "eos"]
    assert [r[0].text for r in results] == ["cdef", "f"]
    # stop_at_eos=False: the eos token is just a token
    config = GenerationConfig(temperature=0.0, max_new_tokens=6, stop_at_eos=False)
    [[kept]] = generate(model, [list(b"ab")], config, tokenizer=tokenizer)
    assert kept.token_ids == list(b"cdef") + [EOS] + list(b"x")
    assert kept.finish_reason == "length"
    # no eos known: the row runs to max_new_tokens
    [[plain]] = generate(model, [list(b"ab")], GenerationConfig(temperature=0.0, max_new_tokens=6))
    assert plain.finish_reason == "length" and len(plain.token_ids) == 6


def test_eos_rows_finish_early_while_others_continue(tokenizer):
    model = ScriptedLM(list(b"abc") + [EOS])
    results = generate(model, [list(b"a"), [1, 2, 3, 4, 5]], GREEDY, tokenizer=tokenizer)
    assert results[0][0].token_ids == list(b"bc")
    assert results[1][0].finish_reason == "eos" and results[1][0].token_ids == []


def test_min_new_tokens_delays_eos(tokenizer):
    model = ScriptedLM(list(b"ab") + [EOS] + list(b"cdef"), confidence=3.0)
    config = GenerationConfig(temperature=0.0, max_new_tokens=5, min_new_tokens=3)
    [[result]] = generate(model, [list(b"a")], config, eos_id=EOS)
    assert len(result.token_ids) >= 3 and EOS not in result.token_ids[:3]


def test_max_new_tokens_zero(recurrent):
    [[result]] = generate(recurrent, [[1, 2]], GenerationConfig(max_new_tokens=0))
    assert result.token_ids == [] and result.finish_reason == "length"


def test_logprobs_are_of_the_unprocessed_distribution(recurrent):
    prompt = [5, 6, 7]
    config = GenerationConfig(
        temperature=0.5, top_k=4, max_new_tokens=10, seed=1, repetition_penalty=1.5
    )
    [[result]] = generate(recurrent, [prompt], config, logprobs=3)
    expected = token_logprobs(recurrent, prompt, result.token_ids)
    assert result.logprobs == pytest.approx(expected, abs=1e-5)
    assert len(result.top_logprobs) == 10
    with torch.no_grad():
        logits, _ = recurrent(torch.tensor([prompt]))
    best = logits[0, -1].log_softmax(-1).topk(3)
    first = result.top_logprobs[0]
    assert list(first) == best.indices.tolist()
    assert list(first.values()) == pytest.approx(best.values.tolist(), abs=1e-5)
    # logprobs=0: chosen tokens only, no alternatives
    [[bare]] = generate(recurrent, [prompt], config, logprobs=0)
    assert bare.logprobs == pytest.approx(expected, abs=1e-5)
    assert bare.top_logprobs == [{}] * 10
    [[none]] = generate(recurrent, [prompt], config)
    assert none.logprobs is None and none.top_logprobs is None


def test_training_flag_is_restored():
    model = TinyRecurrentLM().train()
    generate(model, [[1]], GenerationConfig(max_new_tokens=2, seed=0))
    assert model.training


def test_one_forward_per_step(recurrent):
    recurrent.calls = 0
    generate(recurrent, [[1, 2, 3]], GenerationConfig(temperature=0.0, max_new_tokens=10))
    assert recurrent.calls == 10  # one prefill + 9 single-token feeds (the last token is not fed)


def test_penalties_change_greedy_output(recurrent):
    plain = tokens_of(
        generate(recurrent, [[1]], GenerationConfig(temperature=0.0, max_new_tokens=30))
    )[0]
    assert len(set(plain)) < len(plain)  # the random model repeats itself
    blocked = tokens_of(
        generate(
            recurrent,
            [[1]],
            GenerationConfig(temperature=0.0, max_new_tokens=30, no_repeat_ngram_size=1),
        )
    )[0]
    assert len(set(blocked)) == len(blocked) and 1 not in blocked
