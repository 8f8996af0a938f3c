"""Speculative decoding over the four architectures: any drafts for any, the output is the target's.

Greedy speculation must give plain greedy decoding's tokens (tiny random models here, with
spread-out weights so that ties are out of reach); sampled speculation must follow plain
sampling's distribution (a chi-squared test against the exact distribution); the rollback
(``truncate``) must give back exactly the state of the kept tokens.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from genfakes import ByteTokenizer

from rnn2gpt.config import GenerationConfig, ModelConfig
from rnn2gpt.errors import ConfigError
from rnn2gpt.generation import generate, stream
from rnn2gpt.generation.speculative import (
    ModelDrafter,
    PromptLookup,
    SpeculationStats,
    speculative_generate,
)
from rnn2gpt.models import build_model

ARCHS = ["gpt", "lstm", "gru", "rnn"]
VOCAB = ByteTokenizer().vocab_size
PROMPTS = [list(b"To be"), list(b"o"), list(b"not to be, that is to be")]


def tiny(arch: str, seed: int, *, vocab: int = VOCAB, block_size: int = 40, scale: float = 3.0):
    torch.manual_seed(seed)
    config = ModelConfig(
        arch=arch,
        vocab_size=vocab,
        n_layer=2,
        n_embd=16,
        n_head=2,
        block_size=block_size,
        tie_weights=False,
    )
    model = build_model(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.dim() == 2:
                param.mul_(scale)
    return model


def nudged(model, seed: int, amount: float = 0.3):
    """A copy of ``model`` with noise on its weights: a drafter that agrees only sometimes."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * amount * param.std())
    return other


@pytest.fixture(scope="module")
def models():
    return {arch: tiny(arch, seed=i) for i, arch in enumerate(ARCHS)}


# ---------------------------------------------------------------------- greedy: the same tokens


@pytest.mark.parametrize("target_arch", ARCHS)
def test_greedy_equals_plain_for_every_drafter(models, target_arch):
    target = models[target_arch]
    # Block 40 < prompt + 60 new tokens: the GPT's window slides mid-run, as in plain decoding.
    config = GenerationConfig(temperature=0.0, max_new_tokens=60, num_return_sequences=2)
    plain = generate(target, PROMPTS, config)
    drafters = {arch: ModelDrafter(models[arch]) for arch in ARCHS}
    drafters["nudged target"] = ModelDrafter(nudged(target, seed=7, amount=0.1))
    drafters["prompt lookup"] = PromptLookup(2)
    for name, drafter in drafters.items():
        for k in (1, 4):
            spec, stats = speculative_generate(target, PROMPTS, config, drafter, draft_tokens=k)
            tokens = [[g.token_ids for g in per] for per in spec]
            assert tokens == [[g.token_ids for g in per] for per in plain], (name, k)
            assert stats.drafted > 0 and 0 <= stats.accepted <= stats.drafted, (name, stats)
    # A drafter close to the target is right at times: the accept branch ran too.
    _, stats = speculative_generate(target, PROMPTS, config, drafters["nudged target"])
    assert stats.accepted > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_self_drafting_accepts_everything(models, arch):
    """The target drafting for itself: every draft is accepted, which holds only if both rolled
    back exactly every round (a drifted state would disagree sooner or later)."""
    model = models[arch]
    config = GenerationConfig(temperature=0.0, max_new_tokens=50)
    spec, stats = speculative_generate(model, PROMPTS, config, ModelDrafter(model), draft_tokens=3)
    assert stats.accepted == stats.drafted > 0
    plain = generate(model, PROMPTS, config)
    assert [s[0].token_ids for s in spec] == [p[0].token_ids for p in plain]


def test_processors_see_the_accepted_prefix(models):
    """Penalties, n-gram bans and the watermark act at every verified position exactly as
    plain decoding applies them."""
    target = models["gpt"]
    config = GenerationConfig(
        temperature=0.0,
        max_new_tokens=40,
        repetition_penalty=1.4,
        no_repeat_ngram_size=3,
        presence_penalty=0.5,
        min_new_tokens=5,
        watermark="key",
    )
    plain = generate(target, PROMPTS, config, eos_id=3)
    for drafter in (ModelDrafter(nudged(target, seed=1)), PromptLookup(1)):
        spec, stats = speculative_generate(target, PROMPTS, config, drafter, eos_id=3)
        assert [s[0].token_ids for s in spec] == [p[0].token_ids for p in plain]
        assert stats.drafted > 0


def test_stop_strings_eos_and_limits_end_rows_as_plain_decoding_does(models):
    tokenizer = ByteTokenizer()
    target = models["lstm"]
    free = generate(target, PROMPTS, GenerationConfig(temperature=0.0, max_new_tokens=30))
    stop = free[0][0].token_ids[10:12]  # two tokens the first row does produce
    config = GenerationConfig(temperature=0.0, max_new_tokens=30, stop=(tokenizer.decode(stop),))
    plain = generate(target, PROMPTS, config, tokenizer=tokenizer, eos_id=101)
    spec, _ = speculative_generate(
        target, PROMPTS, config, ModelDrafter(models["gru"]), tokenizer=tokenizer, eos_id=101
    )
    for a, b in zip(plain, spec):
        assert (a[0].text, a[0].finish_reason, a[0].token_ids) == (
            b[0].text,
            b[0].finish_reason,
            b[0].token_ids,
        )
    assert {p[0].finish_reason for p in plain} - {"length"}  # some row did stop early


def test_generate_and_stream_take_a_drafter(models):
    tokenizer = ByteTokenizer()
    target, draft = models["gpt"], models["rnn"]
    config = GenerationConfig(temperature=0.0, max_new_tokens=25)
    stats = SpeculationStats()
    [[via_generate]] = generate(
        target, [PROMPTS[0]], config, tokenizer=tokenizer, draft=draft, speculation=stats
    )
    [[plain]] = generate(target, [PROMPTS[0]], config, tokenizer=tokenizer)
    assert via_generate.text == plain.text and stats.drafted > 0
    pieces = list(stream(target, PROMPTS[0], config, tokenizer=tokenizer, draft=draft))
    assert "".join(pieces) == plain.text
    lookup = GenerationConfig(temperature=0.0, max_new_tokens=25, prompt_lookup=2)
    [[copied]] = generate(target, [PROMPTS[0]], lookup, tokenizer=tokenizer)
    assert copied.text == plain.text


def test_unsupported_requests_get_one_clear_error(models):
    with pytest.raises(ConfigError, match="not beam search"):
        GenerationConfig(num_beams=2, prompt_lookup=3).validate()
    with pytest.raises(ConfigError, match="vocabulary"):
        speculative_generate(
            models["gpt"], PROMPTS, GenerationConfig(), ModelDrafter(tiny("gru", 0, vocab=50))
        )
    with pytest.raises(ConfigError, match="logprobs|log-probabilities"):
        generate(models["gpt"], PROMPTS, GenerationConfig(prompt_lookup=2), logprobs=1)
    with pytest.raises(ConfigError, match="draft_tokens"):
        GenerationConfig(draft_tokens=0).validate()


def test_prompt_lookup_copies_the_latest_match():
    lookup = PromptLookup(2)
    history = [1, 2, 3, 4, 9, 1, 2, 5, 6, 7, 1, 2]
    assert lookup.lookup(history, 3) == [5, 6, 7]  # the latest earlier "1 2", not the first
    assert lookup.lookup([1, 2, 3], 3) == []  # no earlier occurrence
    assert lookup.lookup(history, 0) == []


# ---------------------------------------------------------------------- the rollback is exact


@pytest.mark.parametrize("arch", ARCHS)
def test_truncate_restores_the_state_of_the_kept_tokens(models, arch):
    """Feed 3 rows 4 more tokens, roll each back to its own length, continue: the logits equal a
    fresh state fed the kept tokens only."""
    model = models[arch]
    rows = [list(b"abcdefg"), list(b"hijklmn"), list(b"opqrstu")]
    keep_extra = [0, 2, 4]  # tokens each row keeps of the last 4
    with torch.inference_mode():
        state = model.new_state(3, slots=True, rollback=5)
        first = torch.tensor([r[:3] for r in rows])
        _, light = model(first, None)
        state.write_rows([0, 1, 2], light)
        _, state = model(torch.tensor([r[3:7] for r in rows]), state)
        state.truncate({i: 3 + keep_extra[i] for i in range(3)})
        nxt = torch.tensor([[ord("z")]] * 3)
        logits, _ = model(nxt, state)
        for i, row in enumerate(rows):
            kept = row[: 3 + keep_extra[i]] + [ord("z")]
            expected, _ = model(torch.tensor([kept]), None)
            torch.testing.assert_close(logits[i, -1], expected[0, -1], rtol=1e-4, atol=1e-5)


def test_recurrent_truncate_refuses_what_its_trail_cannot_reach(models):
    model = models["gru"]
    with torch.inference_mode():
        state = model.new_state(1, slots=True, rollback=2)
        _, state = model(torch.tensor([[1, 2, 3, 4, 5]]), state)
        with pytest.raises(ValueError, match="trail"):
            state.truncate({0: 1})
        untracked = model.new_state(1)
        with pytest.raises(ValueError, match="rollback"):
            untracked.truncate({0: 0})


# ---------------------------------------------------------------------- sampling: same law


def _exact_two_token_law(model, prompt, config) -> torch.Tensor:
    """P(x1, x2) (V, V) under plain sampling with ``config``'s temperature and top-k."""
    vocab = model.config.vocab_size

    def next_probs(tokens):
        logits, _ = model(torch.tensor([tokens]), None)
        scores = logits[0, -1].double() / config.temperature
        if config.top_k:
            kth = scores.topk(config.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, -math.inf)
        return scores.softmax(-1)

    with torch.inference_mode():
        first = next_probs(prompt)
        law = torch.zeros(vocab, vocab, dtype=torch.float64)
        for token in range(vocab):
            if first[token] > 0:
                law[token] = first[token] * next_probs(prompt + [token])
    return law


def _chi_squared_p(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """p-value of Pearson's test, cells with expected count < 5 pooled into one."""
    small = expected < 5
    obs = torch.cat([observed[~small], observed[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    statistic = float(((obs - exp) ** 2 / exp).sum())
    df = obs.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2), torch.tensor(statistic / 2)))


@pytest.mark.parametrize("drafter_kind", ["model", "prompt lookup"])
def test_sampled_speculation_follows_the_target_distribution(drafter_kind):
    """4,000 independent samples (a batch of rows) of the first two tokens, which the first round
    drafts two at a time: chi-squared against the exact law. The drafter disagrees often, so
    the accept, the resample and the bonus branches all shape the result; a wrong rejection
    rule fails this (checked: p < 1e-10 when the residual distribution is replaced by the
    target's)."""
    vocab = 6
    target = tiny("gpt", seed=3, vocab=vocab, scale=1.5)
    drafter = ModelDrafter(tiny("lstm", seed=4, vocab=vocab, scale=1.5))
    config = GenerationConfig(
        temperature=0.9, top_k=5, max_new_tokens=3, num_return_sequences=4000, seed=11
    )
    prompt = [1, 2, 1]
    if drafter_kind == "prompt lookup":
        # Prompt [1, b, 1]: the lookup drafts b; pick the b the target finds likeliest there.
        likely = [_exact_two_token_law(target, [1, b, 1], config)[b].sum() for b in range(vocab)]
        prompt = [1, int(torch.tensor(likely).argmax()), 1]
        drafter = PromptLookup(1)
    [samples], stats = speculative_generate(target, [prompt], config, drafter, draft_tokens=2)
    assert 0 < stats.accepted < stats.drafted
    observed = torch.zeros(vocab, vocab, dtype=torch.float64)
    for g in samples:
        observed[g.token_ids[0], g.token_ids[1]] += 1
    expected = _exact_two_token_law(target, prompt, config) * len(samples)
    assert _chi_squared_p(observed.flatten(), expected.flatten()) > 1e-3


def test_chi_squared_check_rejects_a_wrong_law():
    """The statistic itself: a sample from another law is refused."""
    generator = torch.Generator().manual_seed(0)
    law = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    wrong = torch.tensor([0.3, 0.3, 0.3, 0.1], dtype=torch.float64)
    draws = torch.multinomial(wrong, 4000, replacement=True, generator=generator)
    observed = torch.bincount(draws, minlength=4).double()
    assert _chi_squared_p(observed, law * 4000) < 1e-6
    draws = torch.multinomial(law, 4000, replacement=True, generator=generator)
    observed = torch.bincount(draws, minlength=4).double()
    assert _chi_squared_p(observed, law * 4000) > 1e-3


def test_a_speculative_cache_attends_over_its_filled_slots_with_the_same_result(models):
    """A GPT slot cache built for rollback reads only its filled slots (the scheduler's reads all
    of them, for fixed shapes); the logits agree."""
    model = models["gpt"]
    x = torch.tensor([list(b"abcdefgh"), list(b"ijklmnop")])
    with torch.inference_mode():
        full = model.new_state(2, slots=True)
        trimmed = model.new_state(2, slots=True, rollback=4)
        assert trimmed.trim and not full.trim
        assert trimmed.attended(1) == 1 and full.attended(1) == full.capacity
        expected, full = model(x, full)
        got, trimmed = model(x, trimmed)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        trimmed.truncate({0: 3})
        full.truncate({0: 3})
        step = torch.tensor([[ord("z")], [ord("y")]])
        torch.testing.assert_close(
            model(step, trimmed)[0], model(step, full)[0], rtol=1e-4, atol=1e-5
        )
