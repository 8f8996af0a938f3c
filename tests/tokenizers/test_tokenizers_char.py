"""Character tokenizer: vocabulary, exact round trips, unknown characters, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnn2gpt.errors import TokenizerError
from rnn2gpt.tokenizers import CharTokenizer

TRAIN_TEXT = "Hello, world!\n中文 😀 e\u0301 naïve\ttab\U0001f680 \u200d"
VOCAB_CHARS = sorted(set(TRAIN_TEXT))


def test_vocabulary_is_sorted_distinct_code_points():
    tok = CharTokenizer.train(TRAIN_TEXT)
    assert list(tok.chars) == VOCAB_CHARS
    assert tok.vocab_size == len(VOCAB_CHARS)
    # a combining accent is its own token, separate from its base letter
    assert "\u0301" in tok.chars and "e" in tok.chars
    assert tok.encode("e\u0301") == [VOCAB_CHARS.index("e"), VOCAB_CHARS.index("\u0301")]
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (None, None, None, None)


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet=st.sampled_from(VOCAB_CHARS)))
def test_round_trip_over_vocabulary(text):
    tok = CharTokenizer.train(TRAIN_TEXT)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    array = tok.encode_array(text)
    assert array.dtype == np.int32
    assert array.tolist() == ids


def test_unknown_characters_are_named():
    tok = CharTokenizer.train("abc ")
    with pytest.raises(TokenizerError) as info:
        tok.encode("abc é中😀 é")
    message = str(info.value)
    for ch in ("é", "中", "😀"):
        assert repr(ch) in message
    assert "3 character" in message
    assert "tokenizer.unk=true" in message and "retrain" in message


def test_unknown_error_lists_at_most_ten_characters():
    tok = CharTokenizer.train("a")
    unseen = "".join(chr(0x4E00 + i) for i in range(25))
    with pytest.raises(TokenizerError, match="25 character") as info:
        tok.encode_array(unseen)
    assert "and 15 more" in str(info.value)
    assert repr(chr(0x4E00 + 9)) in str(info.value)
    assert repr(chr(0x4E00 + 10)) not in str(info.value)


def test_unk_maps_unseen_characters():
    tok = CharTokenizer.train("abc", unk=True)
    assert tok.unk_id == 3 and tok.vocab_size == 4
    ids = tok.encode("a😀c\U0010ffff")
    assert ids == [0, 3, 2, 3]
    assert tok.decode(ids) == "a\ufffdc\ufffd"


def test_decode_rejects_out_of_range_ids():
    tok = CharTokenizer.train("abc")
    with pytest.raises(TokenizerError, match="outside the char vocabulary"):
        tok.decode([0, 3])
    with pytest.raises(TokenizerError, match="-1"):
        tok.decode([-1])
    assert tok.decode([]) == ""
    assert tok.decode(np.array([2, 1, 0])) == "cba"


def test_empty_training_text_is_an_error():
    with pytest.raises(TokenizerError, match="non-empty"):
        CharTokenizer.train("")


def test_encode_array_is_fast_on_a_large_text():
    text = (TRAIN_TEXT * 40_000)[:2_000_000]  # 2 M characters
    tok = CharTokenizer.train(TRAIN_TEXT)
    start = time.perf_counter()
    ids = tok.encode_array(text)
    decoded = tok.decode(ids)
    elapsed = time.perf_counter() - start
    assert decoded == text
    assert elapsed < 3.0, f"char encode+decode of 2M characters took {elapsed:.2f}s"
