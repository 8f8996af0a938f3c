"""The watermark processor, its detection, and the key's hygiene."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from rnn2gpt.checkpoint import save_checkpoint
from rnn2gpt.config import GenerationConfig, ModelConfig, RunConfig, TrainConfig
from rnn2gpt.errors import ConfigError
from rnn2gpt.generation import generate
from rnn2gpt.generation.processors import build_processors
from rnn2gpt.generation.watermark import Watermark, detect, z_statistic
from rnn2gpt.models import build_model
from rnn2gpt.tokenizers import CharTokenizer

KEY = "correct horse battery staple"
TEXT = "ROMEO: o romeo, wherefore art thou romeo?\nJULIET: the quick brown fox jumps.\n"
SHAPES = {
    "gpt": dict(arch="gpt", n_layer=1, n_head=2, n_embd=32, block_size=512),
    "lstm": dict(arch="lstm", n_layer=1, n_embd=32),
    "gru": dict(arch="gru", n_layer=1, n_embd=24),
    "rnn": dict(arch="rnn", n_layer=1, n_embd=24),
}


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer.train(TEXT)


def _model(arch, tokenizer, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(vocab_size=tokenizer.vocab_size, **SHAPES[arch])).eval()


def _mark(delta=2.0, context=1, vocab=50, key=KEY):
    return Watermark(key, gamma=0.25, delta=delta, context=context, vocab_size=vocab)


def test_never_changes_logits_or_ids_in_place():
    ids = torch.randint(0, 50, (3, 7))
    scores = torch.randn(3, 50)
    ids_before, scores_before = ids.clone(), scores.clone()
    out = _mark()(ids, scores)
    assert torch.equal(ids, ids_before) and torch.equal(scores, scores_before)
    assert not torch.equal(out, scores)  # and it did change the copy
    assert out.data_ptr() != scores.data_ptr()


def test_delta_zero_is_the_identity():
    ids = torch.randint(0, 50, (2, 5))
    scores = torch.randn(2, 50)
    assert torch.equal(_mark(delta=0.0)(ids, scores), scores)
    config = GenerationConfig(watermark=KEY, watermark_delta=0.0)
    names = [type(p).__name__ for p in build_processors(config, vocab_size=50)]
    assert names == [type(p).__name__ for p in build_processors(GenerationConfig(), vocab_size=50)]
    marked = build_processors(GenerationConfig(watermark=KEY, temperature=0.0), vocab_size=50)
    assert [type(p).__name__ for p in marked] == ["Watermark"]  # greedy keeps it


def test_adds_delta_exactly_on_the_green_list():
    ids = torch.randint(0, 50, (4, 6))
    scores = torch.randn(4, 50)
    mark = _mark(delta=3.0)
    green = mark.green_mask(ids)
    torch.testing.assert_close(mark(ids, scores), scores + 3.0 * green)


def test_the_green_list_depends_only_on_the_key_and_the_previous_tokens():
    mark = _mark(vocab=1000)
    a = torch.tensor([[5, 9, 3, 7]])
    b = torch.tensor([[1, 2, 3, 4, 8, 8, 7]])  # another history, the same last token
    assert torch.equal(mark.green_mask(a), mark.green_mask(b))
    assert torch.equal(mark.green_mask(a), _mark(vocab=1000).green_mask(a))  # a fresh instance
    assert not torch.equal(mark.green_mask(a), mark.green_mask(torch.tensor([[5, 9, 3, 6]])))
    assert not torch.equal(mark.green_mask(a), _mark(vocab=1000, key="other").green_mask(a))
    wide = _mark(vocab=1000, context=2)
    assert torch.equal(wide.green_mask(a), wide.green_mask(torch.tensor([[0, 0, 3, 7]])))
    assert not torch.equal(wide.green_mask(a), wide.green_mask(torch.tensor([[0, 0, 4, 7]])))
    # about gamma of the vocabulary is green, whatever the context
    fractions = _mark(vocab=1000).green_mask(torch.arange(200)[:, None]).float().mean(1)
    assert 0.2 < fractions.mean() < 0.3 and fractions.min() > 0.15


@pytest.mark.parametrize("vocab", [65, 1000, 50257])
def test_unwatermarked_uniform_streams_stay_below_the_thresholds(vocab):
    """200 fixed seeds of uniform random tokens: no z above 5, at most 1% above 3."""
    scores = []
    for seed in range(200):
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab, (200,), generator=generator).tolist()
        scores.append(detect(ids, KEY).z_score)
    assert max(scores) <= 5.0
    assert sum(z > 3.0 for z in scores) <= 2
    assert abs(sum(scores) / len(scores)) < 0.3  # centred on 0: gamma is the null rate


def test_z_statistic():
    z, p = z_statistic(50, 100, 0.25)
    assert z == pytest.approx((50 - 25) / (100 * 0.25 * 0.75) ** 0.5)
    assert p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    assert z_statistic(25, 100, 0.25) == (0.0, pytest.approx(0.5))
    assert z_statistic(0, 0, 0.25) == (0.0, 1.0)


def test_repeats_are_scored_once_unless_asked_and_the_prompt_is_context_only():
    ids = [1, 2] * 50
    once = detect(ids, KEY)
    assert once.tokens == 2  # two distinct (previous, token) pairs
    assert detect(ids, KEY, count_repeats=True).tokens == 99  # the first token has no context
    prompted = detect([7, 8, 9] + ids, KEY, prompt_len=3, count_repeats=True)
    assert prompted.tokens == 100 and len(prompted.scored) == 100


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_every_architecture_and_strategy_writes_a_detectable_mark(arch, tokenizer):
    model = _model(arch, tokenizer)
    prompt = tokenizer.encode("ROMEO:")
    strategies = {
        "sampling": dict(temperature=1.0, seed=3, watermark_delta=4.0),
        "greedy": dict(temperature=0.0, watermark_delta=20.0),
        "beam": dict(temperature=0.0, num_beams=3, watermark_delta=20.0),
    }
    for name, settings in strategies.items():
        config = GenerationConfig(max_new_tokens=160, stop_at_eos=False, **settings)
        [[plain]] = generate(model, [prompt], config, tokenizer=tokenizer)
        marked_config = GenerationConfig(
            max_new_tokens=160, stop_at_eos=False, watermark=KEY, **settings
        )
        [[marked]] = generate(model, [prompt], marked_config, tokenizer=tokenizer)
        found = detect(prompt + marked.token_ids, KEY, prompt_len=len(prompt), count_repeats=True)
        baseline = detect(prompt + plain.token_ids, KEY, prompt_len=len(prompt), count_repeats=True)
        if name == "sampling":
            assert found.watermarked and not baseline.watermarked, (found, baseline)
        else:  # a bias of 20 makes every chosen token green
            assert found.green == found.tokens == 160, name


def test_the_key_is_never_in_a_repr_a_config_file_or_a_log(tmp_path, tokenizer, caplog):
    config = GenerationConfig(watermark=KEY)
    run = RunConfig(
        model=ModelConfig(vocab_size=tokenizer.vocab_size, **SHAPES["lstm"]),
        train=TrainConfig(threads=1, progress=False),
        generate=config,
    )
    assert KEY not in repr(config) and KEY not in repr(run) and KEY not in str(run)
    assert KEY not in json.dumps(run.to_dict())
    assert KEY not in repr(_mark()) and KEY not in repr(build_processors(config, vocab_size=50))
    with caplog.at_level(logging.DEBUG):
        save_checkpoint(
            tmp_path / "ckpt", model=_model("lstm", tokenizer), tokenizer=tokenizer, config=run
        )
    for file in (tmp_path / "ckpt").iterdir():
        assert KEY.encode() not in file.read_bytes(), file.name
    assert KEY not in caplog.text
    with pytest.raises(ConfigError, match="secret"):
        RunConfig.from_dict({"generate": {"watermark": KEY}})
    with pytest.raises(ConfigError):
        GenerationConfig(watermark="").validate()
    with pytest.raises(ConfigError, match="gamma"):
        GenerationConfig(watermark=KEY, watermark_gamma=1.0).validate()
