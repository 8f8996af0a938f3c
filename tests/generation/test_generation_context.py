"""The context window: context_policy "stop" and "slide" on bounded-context models."""

from __future__ import annotations

import pytest
import torch
from genfakes import ByteTokenizer, TinyWindowLM, sliding_greedy, uncached_greedy

from rnn2gpt.config import GenerationConfig, ModelConfig
from rnn2gpt.errors import ContextLengthError
from rnn2gpt.generation import generate
from rnn2gpt.models import build_model

C = 8


@pytest.fixture
def small_window() -> TinyWindowLM:
    return TinyWindowLM(max_context=C).eval()


def config(policy: str, **kw) -> GenerationConfig:
    settings = dict(temperature=0.0, max_new_tokens=20, context_policy=policy)
    return GenerationConfig(**{**settings, **kw})


def test_stop_ends_with_context(small_window):
    prompt = [1, 2, 3, 4, 5]
    [[result]] = generate(small_window, [prompt], config("stop"))
    assert result.finish_reason == "context"
    assert result.token_ids == uncached_greedy(small_window, prompt, C - len(prompt))
    # max_new_tokens reached first: "length" wins
    [[short]] = generate(small_window, [prompt], config("stop", max_new_tokens=3))
    assert short.finish_reason == "length" and len(short.token_ids) == 3


def test_stop_with_a_full_or_too_long_prompt(small_window):
    [[full]] = generate(small_window, [list(range(C))], config("stop"))
    assert full.token_ids == [] and full.finish_reason == "context"
    with pytest.raises(ContextLengthError, match="context_policy"):
        generate(small_window, [list(range(C + 1))], config("stop"))


def test_stop_in_a_batch_equals_one_by_one(small_window):
    prompts = [[1, 2, 3, 4, 5, 6], [7], list(range(C)), [9, 9, 9]]
    batched = generate(small_window, prompts, config("stop"), pad_id=3)
    for prompt, [result] in zip(prompts, batched):
        [[alone]] = generate(small_window, [prompt], config("stop"))
        assert result.token_ids == alone.token_ids
        assert result.finish_reason == alone.finish_reason == "context"
        assert len(prompt) + len(result.token_ids) == C


def test_slide_continues_past_the_context(small_window):
    prompt = [1, 2, 3, 4, 5]
    small_window.prefills.clear()
    [[result]] = generate(small_window, [prompt], config("slide"))
    prefills = list(small_window.prefills)
    assert result.finish_reason == "length" and len(result.token_ids) == 20
    assert result.token_ids == sliding_greedy(small_window, prompt, 20, C)
    # the state was rebuilt from half a window each time the window filled
    assert prefills[0] == len(prompt)
    assert len(prefills) > 3 and set(prefills[1:]) == {C // 2}


def test_slide_cuts_a_long_prompt(small_window):
    prompt = list(range(20, 40))
    [[result]] = generate(small_window, [prompt], config("slide"))
    assert result.token_ids == sliding_greedy(small_window, prompt, 20, C)


def test_slide_in_a_batch_equals_one_by_one(small_window):
    prompts = [[1, 2, 3, 4, 5, 6], [7], list(range(30, 45)), [9, 9, 9]]
    batched = generate(small_window, prompts, config("slide"), pad_id=3)
    for prompt, [result] in zip(prompts, batched):
        assert result.token_ids == sliding_greedy(small_window, prompt, 20, C)


def test_slide_with_stop_strings_eos_and_sampling(small_window):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]
    plain = generate(small_window, prompts, config("slide"), pad_id=0)
    tracked = generate(
        small_window, prompts, config("slide", stop=("never-there",)), tokenizer=ByteTokenizer()
    )
    assert [r[0].token_ids for r in plain] == [r[0].token_ids for r in tracked]
    sampled = generate(
        small_window,
        prompts,
        GenerationConfig(temperature=1.0, seed=2, max_new_tokens=30, num_return_sequences=2),
        eos_id=3,
    )
    assert all(len(g.token_ids) <= 30 for per_prompt in sampled for g in per_prompt)


@pytest.mark.parametrize("policy", ["slide", "stop"])
def test_beams_within_the_context(small_window, policy):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]
    beam = GenerationConfig(
        temperature=0.0, num_beams=3, max_new_tokens=12, context_policy=policy, length_penalty=0.0
    )
    batched = generate(small_window, prompts, beam, pad_id=1)
    for prompt, per_prompt in zip(prompts, batched):
        [alone] = generate(small_window, [prompt], beam)
        assert per_prompt[0].token_ids == alone[0].token_ids
        if policy == "stop":
            assert per_prompt[0].finish_reason == "context"
            assert len(prompt) + len(per_prompt[0].token_ids) == C
        else:
            assert len(per_prompt[0].token_ids) == 12


def test_cache_is_sized_for_the_request(small_window):
    small_window.capacities.clear()
    generate(small_window, [[1, 2]], GenerationConfig(temperature=0.0, max_new_tokens=3))
    assert small_window.capacities == [2 + 3 - 1]  # prompt + tokens fed afterwards


@pytest.fixture
def tiny_gpt():
    torch.manual_seed(0)
    model_config = ModelConfig(
        arch="gpt", vocab_size=40, n_layer=1, n_embd=16, n_head=2, block_size=10
    )
    return build_model(model_config).eval()


def test_real_gpt_context_policies(tiny_gpt):
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [17]]
    slide = generate(tiny_gpt, prompts, config("slide", max_new_tokens=25), pad_id=0)
    for prompt, [result] in zip(prompts, slide):
        assert result.token_ids == sliding_greedy(tiny_gpt, prompt, 25, 10)
    stop = generate(tiny_gpt, [p[-10:] for p in prompts], config("stop"), pad_id=0)
    for prompt, [result] in zip(prompts, stop):
        assert result.finish_reason == "context"
        assert len(prompt[-10:]) + len(result.token_ids) == 10
