"""Quality guards: the repetition guard (stop or resample), the memorization index, --report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rnn2gpt.cli import main
from rnn2gpt.config import GenerationConfig, ModelConfig
from rnn2gpt.errors import ConfigError
from rnn2gpt.evaluation.diversity import ngrams
from rnn2gpt.evaluation.memorization import CopyIndex
from rnn2gpt.generation import generate
from rnn2gpt.generation.stopping import decode_generated
from rnn2gpt.models import build_model
from rnn2gpt.tokenizers import CharTokenizer

TEXT = "abcdefghij klmnop, qrstuv.\nwxyz!\n"


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer.train(TEXT)


def _looping_model(tokenizer):
    """An untrained RNN: greedy decoding from it falls into a loop within a few dozen tokens."""
    torch.manual_seed(0)
    return build_model(
        ModelConfig(arch="rnn", vocab_size=tokenizer.vocab_size, n_layer=1, n_embd=8)
    )


def test_the_tracker_stops_at_the_first_repeat_of_n_tokens(tokenizer):
    ids = tokenizer.encode("abcdxabcy")
    tracker = decode_generated(tokenizer, ids, repeat_guard=3)
    assert tracker.repeated and tracker.stopped
    assert tracker.text == "abcdxabc"  # every token kept, up to the completed repeat
    assert not decode_generated(tokenizer, ids, repeat_guard=4).repeated
    # the prompt counts as earlier text
    prompted = decode_generated(
        tokenizer, tokenizer.encode("xab"), prompt_ids=tokenizer.encode("xab"), repeat_guard=3
    )
    assert prompted.repeated and prompted.text == "xab"


@pytest.mark.parametrize("beams", [1, 3])
def test_stop_ends_a_loop_and_resample_never_repeats(tokenizer, beams):
    model = _looping_model(tokenizer)
    prompt = [tokenizer.encode("a")]
    base = dict(max_new_tokens=120, temperature=0.0, stop_at_eos=False, num_beams=beams)
    [[plain]] = generate(model, prompt, GenerationConfig(**base), tokenizer=tokenizer)
    grams = list(ngrams(prompt[0] + plain.token_ids, 4))
    assert len(set(grams)) < len(grams)  # it does loop without a guard

    stop = GenerationConfig(**base, repetition_guard=4)
    [[stopped]] = generate(model, prompt, stop, tokenizer=tokenizer)
    assert stopped.finish_reason == "repetition"
    assert stopped.token_ids == plain.token_ids[: len(stopped.token_ids)]
    grams = list(ngrams(prompt[0] + stopped.token_ids, 4))
    assert len(set(grams)) == len(grams) - 1  # exactly one repeat: the last 4-gram

    resample = GenerationConfig(**base, repetition_guard=4, repetition_guard_action="resample")
    [[varied]] = generate(model, prompt, resample, tokenizer=tokenizer)
    grams = list(ngrams(prompt[0] + varied.token_ids, 4))
    assert len(set(grams)) == len(grams) and varied.finish_reason == "length"


def test_guard_settings_are_checked():
    with pytest.raises(ConfigError, match="repetition_guard_action"):
        GenerationConfig(repetition_guard=3, repetition_guard_action="skip").validate()
    with pytest.raises(ConfigError, match="repetition_guard"):
        GenerationConfig(repetition_guard=-1).validate()


def test_the_index_finds_a_planted_copy_whole():
    rng = np.random.default_rng(0)
    corpus = rng.integers(0, 50, 200_000)
    corpus[1000:1200] = 7  # a stretch of one token: a k-gram occurring hundreds of times
    index = CopyIndex(corpus, k=8)
    source = 150_000
    sample = np.concatenate(
        [rng.integers(50, 60, 30), corpus[source : source + 50], rng.integers(50, 60, 30)]
    )
    span = index.longest_copy(sample)
    assert (span.length, span.sample_start, span.corpus_start) == (50, 30, source)
    # a copy that starts with the common stretch is still found from its rarer part
    common = np.concatenate([rng.integers(50, 60, 5), corpus[1150:1250], rng.integers(50, 60, 5)])
    span = index.longest_copy(common)
    assert (span.length, span.sample_start, span.corpus_start) == (100, 5, 1150)
    # short overlaps (< k) are not copies; an empty or short sample is fine
    assert index.longest_copy(rng.integers(50, 60, 100)).length == 0
    assert index.longest_copy([]).length == 0 and index.longest_copy(corpus[:3]).length == 0
    # the corpus edges
    assert index.longest_copy(corpus[:20]).length == 20
    assert index.longest_copy(corpus[-20:]).length == 20


def test_generate_report_prints_the_metrics_and_the_longest_copy(tmp_path, capsys):
    from rnn2gpt.checkpoint import save_checkpoint
    from rnn2gpt.config import RunConfig, TrainConfig

    text = "to be or not to be, that is the question.\n" * 5
    tokenizer = CharTokenizer.train(text)
    shape = ModelConfig(arch="gru", vocab_size=tokenizer.vocab_size, n_layer=1, n_embd=8)
    torch.manual_seed(0)
    save_checkpoint(
        tmp_path / "run" / "best",
        model=build_model(shape),
        tokenizer=tokenizer,
        config=RunConfig(model=shape, train=TrainConfig(threads=1, progress=False)),
    )
    train_text = tmp_path / "train.txt"
    train_text.write_text(text, encoding="utf-8")
    args = [
        "generate",
        str(tmp_path / "run"),
        "--prompt",
        "to be or not",
        "--max-new-tokens",
        "40",
        "--seed",
        "1",
        "--report",
        "--train-text",
        str(train_text),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "distinct-1" in out and "repetition rate" in out and "sample 0:" in out
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["report"]
    assert set(report) >= {"distinct_1", "distinct_2", "repetition_rate", "longest_copy"}
    assert report["longest_copy"][0]["tokens"] >= 0

    from rnn2gpt import load
    from rnn2gpt.api import sample_report

    planted = sample_report(load(str(tmp_path / "run")), ["qq to be or not to be, that qq"], text)
    assert planted["longest_copy"][0] == {
        "tokens": 25,  # the line starts "to be": no space before it in the training text
        "chars": 25,
        "text": "to be or not to be, that ",
    }


def test_report_without_the_training_text_says_how_to_give_it(tmp_path, capsys):
    from rnn2gpt.checkpoint import save_checkpoint
    from rnn2gpt.config import DataConfig, RunConfig, TrainConfig

    tokenizer = CharTokenizer.train("abc def\n")
    shape = ModelConfig(arch="gru", vocab_size=tokenizer.vocab_size, n_layer=1, n_embd=8)
    config = RunConfig(
        model=shape,
        data=DataConfig(path=str(tmp_path / "moved-away.txt")),
        train=TrainConfig(threads=1, progress=False),
    )
    save_checkpoint(
        tmp_path / "run" / "best", model=build_model(shape), tokenizer=tokenizer, config=config
    )
    code = main(
        ["generate", str(tmp_path / "run"), "--prompt", "ab", "--max-new-tokens", "5", "--report"]
    )
    assert code == 2
    assert "--train-text" in capsys.readouterr().err
