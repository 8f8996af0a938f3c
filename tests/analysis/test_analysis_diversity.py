"""Diversity metrics on hand-made texts whose answers are known."""

from __future__ import annotations

import pytest

from rnn2gpt.errors import ConfigError
from rnn2gpt.evaluation.diversity import (
    copied_fraction,
    distinct_n,
    diversity_metrics,
    repetition_rate,
    split_units,
)


def test_distinct_n_counts_unique_ngrams_over_all_samples():
    assert distinct_n([["a", "b", "a", "b"]], 1) == pytest.approx(2 / 4)
    assert distinct_n([["a", "b", "a", "b"]], 2) == pytest.approx(2 / 3)  # ab, ba, ab
    # Pooled over samples: "a" appears in both but counts once.
    assert distinct_n([["a", "b"], ["a", "c"]], 1) == pytest.approx(3 / 4)
    assert distinct_n([["x", "y", "z"]], 1) == 1.0


def test_repetition_rate_counts_repeats_within_each_sample_only():
    assert repetition_rate([["a", "b", "a", "b"]], 1) == pytest.approx(2 / 4)
    assert repetition_rate([["a", "b", "a", "b"]], 2) == pytest.approx(1 / 3)
    # The same n-gram in two different samples is not a repetition.
    assert repetition_rate([["a", "b"], ["a", "b"]], 1) == 0.0
    assert repetition_rate([list("aaaaa")], 2) == pytest.approx(3 / 4)


def test_copied_fraction_counts_generated_ngrams_found_in_the_reference():
    assert copied_fraction([["the", "cat", "sat"]], ["the", "cat", "ran"], 2) == pytest.approx(0.5)
    # Repeated generated n-grams count each time: ab (x2) found, ba not.
    assert copied_fraction([["a", "b", "a", "b"]], ["a", "b"], 2) == pytest.approx(2 / 3)
    assert copied_fraction([["q", "r"]], ["a", "b", "c"], 1) == 0.0


def test_too_short_samples_give_zero_not_an_error():
    assert distinct_n([["a"]], 2) == 0.0
    assert repetition_rate([[]], 4) == 0.0
    assert copied_fraction([["a"]], ["a", "b"], 3) == 0.0


def test_diversity_metrics_of_texts_in_words_and_characters():
    metrics = diversity_metrics(
        ["to be or not to be", "be quick"],
        train_text="to be or not to be that is the question",
        repetition_n=2,
        copy_n=2,
    )
    # words: to be or not to be | be quick -> 8 words, 5 distinct (to, be, or, not, quick)
    assert metrics["distinct_1"] == pytest.approx(5 / 8)
    # bigrams: (to be)(be or)(or not)(not to)(to be) | (be quick) -> 6, 5 distinct
    assert metrics["distinct_2"] == pytest.approx(5 / 6)
    assert metrics["repetition_rate"] == pytest.approx(1 / 6)  # the second "to be"
    assert metrics["copied_fraction"] == pytest.approx(5 / 6)  # all but "be quick"
    assert metrics["samples"] == 2 and metrics["units"] == 8

    chars = diversity_metrics(["abab"], unit="char", repetition_n=1)
    assert chars["distinct_1"] == pytest.approx(0.5)
    assert chars["repetition_rate"] == pytest.approx(0.5)
    assert chars["copied_fraction"] is None


def test_bad_unit_and_bad_n_are_clear_errors():
    with pytest.raises(ConfigError, match="unit must be one of"):
        split_units("x", "sentence")
    with pytest.raises(ConfigError, match="at least 1"):
        distinct_n([["a"]], 0)
