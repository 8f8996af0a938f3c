"""Encoder-decoder models: the decoder contract, batching, beam search, and learning to copy."""

from __future__ import annotations

import os

import pytest
import torch
from seq2seq_helpers import (
    ARCHS,
    BOS,
    EOS,
    PAD,
    VOCAB,
    exact_match,
    sample_pairs,
    tiny_model,
    train_until_exact,
)

from rnn2gpt.config import GenerationConfig
from rnn2gpt.data.parallel import pad_sources
from rnn2gpt.errors import ConfigError
from rnn2gpt.generation import generate

NAMES = list(ARCHS)


def _batch(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    sources, _ = sample_pairs(3, "copy", generator)
    src, mask = pad_sources(sources, PAD)
    tgt = torch.randint(1, VOCAB, (3, 5), generator=generator)
    return sources, src, mask, tgt


@pytest.mark.parametrize("name", NAMES)
def test_decoding_in_pieces_equals_one_call(name):
    model = tiny_model(name, n_layer=2).eval()
    _, src, mask, tgt = _batch()
    full, _ = model(tgt, source=src, source_mask=mask)
    state = model.encode(src, mask)
    first, state = model(tgt[:, :2], state)
    rest, state = model(tgt[:, 2:], state)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_padding_of_the_source_changes_nothing(name):
    model = tiny_model(name).eval()
    sources, src, mask, tgt = _batch()
    batched, _ = model(tgt, source=src, source_mask=mask)
    for row, source in enumerate(sources):
        alone, _ = model(tgt[row : row + 1], source=torch.tensor([source]))
        torch.testing.assert_close(alone[0], batched[row], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_state_select_reorders_every_part(name):
    model = tiny_model(name).eval()
    _, src, mask, tgt = _batch()
    state = model.encode(src, mask)
    _, state = model(tgt[:, :2], state)
    index = torch.tensor([2, 0])
    picked, _ = model(tgt[index, 2:], state.select(index))
    full, _ = model(tgt, source=src, source_mask=mask)
    torch.testing.assert_close(picked, full[index, 2:], atol=1e-5, rtol=1e-5)


def test_an_unbound_model_asks_for_a_source():
    model = tiny_model("transformer")
    with pytest.raises(ConfigError, match="bind"):
        model.new_state(2)
    with pytest.raises(ConfigError, match="source"):
        model(torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.parametrize("name", NAMES)
def test_recorder_reports_cross_attention_that_ignores_padding(name):
    model = tiny_model(name).eval()
    _, src, mask, tgt = _batch()
    found = {}
    model(tgt, source=src, source_mask=mask, recorder=lambda n, t: found.__setitem__(n, t))
    weights = found["decoder.layer0.cross_attention"]  # (B, heads, T, S)
    assert weights.shape[0] == 3 and weights.shape[2:] == (5, src.shape[1])
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert float(weights.masked_select(~mask[:, None, None, :].expand_as(weights)).abs().sum()) == 0


@pytest.fixture(scope="module")
def trained():
    """Each architecture trained on the copy task (shared by the learning and decoding tests)."""
    # Module-scoped fixtures run before the suite's per-test one-thread setting: pin it here too,
    # so the result does not depend on the machine's default thread count.
    seed = int(os.environ.get("RNN2GPT_TEST_SEED", "0"))  # see the learning_seed fixture
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = {}
        for name in NAMES:
            model = tiny_model(name, seed=seed)
            train_until_exact(model, "copy", seed=seed)
            models[name] = model
    finally:
        torch.set_num_threads(threads)
    return models


def _exact(model, task: str, count: int = 40, **settings) -> tuple[float, list]:
    return exact_match(model, task, count, **settings)


@pytest.mark.parametrize("name", NAMES)
def test_learns_to_copy_exactly(trained, name):
    accuracy, _ = _exact(trained[name], "copy")
    assert accuracy == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_learns_to_reverse_exactly(name, learning_seed):
    model = tiny_model(name, seed=learning_seed)
    train_until_exact(model, "reverse", seed=learning_seed)
    accuracy, _ = _exact(model, "reverse")
    assert accuracy == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_beam_search_with_one_beam_is_greedy_and_beams_find_the_copy(trained, name):
    model = trained[name]
    _, greedy = _exact(model, "copy", count=8)
    sources, _ = sample_pairs(8, "copy", torch.Generator().manual_seed(99))
    src, mask = pad_sources(sources, PAD)
    from rnn2gpt.generation import beam_search

    with torch.inference_mode():
        one_beam = beam_search(
            model.bind(src, mask),
            [[BOS]] * 8,
            GenerationConfig(temperature=0.0, max_new_tokens=10, num_beams=1),
            eos_id=EOS,
        )
    assert [o[0].token_ids for o in one_beam] == [g[0].token_ids for g in greedy]
    accuracy, beams = _exact(model, "copy", count=8, num_beams=3, num_return_sequences=2)
    assert accuracy == 1.0
    assert all(len(b) == 2 and b[0].score >= b[1].score for b in beams)


@pytest.mark.parametrize("name", NAMES)
def test_batched_decoding_equals_one_by_one(trained, name):
    model = trained[name]
    sources, _ = sample_pairs(5, "copy", torch.Generator().manual_seed(7))
    config = GenerationConfig(temperature=0.0, max_new_tokens=10, num_beams=2)
    src, mask = pad_sources(sources, PAD)
    batched = generate(model.bind(src, mask), [[BOS]] * 5, config, eos_id=EOS)
    for source, result in zip(sources, batched):
        alone = generate(model.bind(torch.tensor([source])), [[BOS]], config, eos_id=EOS)
        assert alone[0][0].token_ids == result[0].token_ids


@pytest.mark.parametrize("name", NAMES)
def test_prompt_lookup_from_the_source_gives_the_greedy_output(trained, name):
    """Speculative decoding of an encoder-decoder: drafts copied from the source, checked by the
    decoder (slot state, rolled back with truncate); a copying model accepts most of them."""
    from rnn2gpt.generation.speculative import PromptLookup, SpeculationStats

    model = trained[name]
    sources, _ = sample_pairs(6, "copy", torch.Generator().manual_seed(5))
    src, mask = pad_sources(sources, PAD)
    config = GenerationConfig(temperature=0.0, max_new_tokens=12)
    plain = generate(model.bind(src, mask), [[BOS]] * 6, config, eos_id=EOS)
    stats = SpeculationStats()
    lookup = PromptLookup(1, sources=[s[:-1] for s in sources])
    spec = generate(
        model.bind(src, mask), [[BOS]] * 6, config, eos_id=EOS, draft=lookup, speculation=stats
    )
    assert [g[0].token_ids for g in spec] == [g[0].token_ids for g in plain]
    assert stats.acceptance_rate > 0.5
