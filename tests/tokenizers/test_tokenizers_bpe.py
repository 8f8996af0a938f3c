"""Byte-level BPE: exact round trips, the byte table, chunked encoding, GPT-2 file interop."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnn2gpt.errors import TokenizerError
from rnn2gpt.tokenizers import BPETokenizer, bpe
from rnn2gpt.tokenizers.bpe import EOT_TOKEN, bytes_to_unicode, safe_chunks, unicode_to_bytes

VARIED_TEXTS = [
    "Hello world",
    " Hello  world \n\n  indented\tline\r\n",
    "don't it's we'll I'M 'quoted'",
    "中文字符和日本語のテキスト",
    "emoji 😀🚀👩‍👩‍👧 flags 🇫🇷",
    "e\u0301 naïve café Ωmega",
    "numbers 3.14159 2024-01-01 1,000,000",
    f"before{EOT_TOKEN}after {EOT_TOKEN}\n",
    "\u00a0nbsp\u2028line sep\u3000ideographic space",
    "",
    "    ",
    "x",
]

# Pieces chosen to hit every branch of GPT-2's regex and the chunk cutting rule.
_PIECES = [
    "a", "bc", "Z", " ", "  ", "\n", "\n\n", "\t", "\u00a0", "\u3000", "'s", "'t", "'ll", "'",
    "1", "234", ".", "!?", "中", "文字", "😀", "é", "e\u0301", EOT_TOKEN, "\x1c", "\r\n",
]  # fmt: skip
piece_texts = st.lists(st.sampled_from(_PIECES), max_size=40).map("".join)


@pytest.fixture(scope="module")
def piece_bpe() -> BPETokenizer:
    """A BPE trained on the pieces themselves, so that it has merges of runs of whitespace,
    contractions and symbols: only then would a bad chunk cut change the ids."""
    rng = random.Random(1)
    text = "".join(rng.choice(_PIECES) for _ in range(20_000))
    tok = BPETokenizer.train(text, vocab_size=400)
    merged = {tok.decode([i]) for i in range(257, tok.vocab_size)}
    assert {"  ", "\n\n", "'s", " 1"} <= merged  # the merges the test relies on
    return tok


def test_byte_table_is_a_printable_bijection():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())
    assert table[ord("A")] == "A" and table[ord(" ")] == "\u0120"  # 'Ġ', as in GPT-2
    assert table[ord("\n")] == "\u010a"  # 'Ċ'
    assert unicode_to_bytes()["\u0120"] == ord(" ")


def test_trained_specials_and_size(tiny_bpe):
    assert tiny_bpe.vocab_size == 300
    assert tiny_bpe.eos_id == tiny_bpe.bos_id == tiny_bpe.pad_id == 0
    assert tiny_bpe.unk_id is None
    assert tiny_bpe.encode(EOT_TOKEN) == [0]
    assert tiny_bpe.decode_bytes([0]) == EOT_TOKEN.encode()


def test_training_is_deterministic(corpus, tiny_bpe):
    again = BPETokenizer.train(corpus, vocab_size=300)
    assert again.to_json() == tiny_bpe.to_json()
    assert again.fingerprint() == tiny_bpe.fingerprint()


def test_vocab_size_below_bytes_is_an_error():
    with pytest.raises(TokenizerError, match="at least 257"):
        BPETokenizer.train("abc", vocab_size=256)
    with pytest.raises(TokenizerError, match="empty"):
        BPETokenizer.train("", vocab_size=300)


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_round_trip_arbitrary_unicode(tiny_bpe, text):
    ids = tiny_bpe.encode(text)
    assert all(0 <= i < tiny_bpe.vocab_size for i in ids)
    assert tiny_bpe.decode_bytes(ids) == text.encode("utf-8")
    assert tiny_bpe.decode(ids) == text


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_decode_agrees_with_hugging_face_decoder(tiny_bpe, text):
    ids = tiny_bpe.encode(text)
    assert tiny_bpe.decode(ids) == text
    assert tiny_bpe.hf_tokenizer.decode(ids, skip_special_tokens=False) == text


def test_decode_bytes_can_split_a_character(tiny_bpe):
    ids = tiny_bpe.encode("😀")  # four UTF-8 bytes, no merges for them in a tiny vocabulary
    assert len(ids) > 1
    partial = tiny_bpe.decode_bytes(ids[:1])
    assert "😀".encode().startswith(partial) and len(partial) < 4
    assert tiny_bpe.decode(ids[:1]) == "\ufffd"
    with pytest.raises(TokenizerError, match="outside the BPE vocabulary"):
        tiny_bpe.decode([tiny_bpe.vocab_size])
    with pytest.raises(TokenizerError, match="outside the BPE vocabulary"):
        tiny_bpe.decode([-1])


def test_lone_surrogate_is_a_clear_error(tiny_bpe):
    with pytest.raises(TokenizerError, match="surrogate"):
        tiny_bpe.encode("ok\ud800")


@contextmanager
def chunk_size(size: int) -> Iterator[None]:
    """Shrink encode_array's chunk size so small texts take the chunked (parallel) path."""
    original = bpe._CHUNK_CHARS
    bpe._CHUNK_CHARS = size
    try:
        yield
    finally:
        bpe._CHUNK_CHARS = original


@settings(max_examples=100, deadline=None)
@given(piece_texts | st.text(max_size=60), st.integers(min_value=1, max_value=8))
def test_chunked_encoding_equals_whole(piece_bpe, text, size):
    pieces = list(safe_chunks(text, size))
    assert "".join(pieces) == text
    whole = piece_bpe.encode(text)
    assert sum((piece_bpe.encode(p) for p in pieces), []) == whole
    with chunk_size(size):
        array = piece_bpe.encode_array(text)
    assert array.dtype == np.int32
    assert array.tolist() == whole


def test_encode_array_on_a_big_text_equals_encode(tiny_bpe, corpus):
    text = corpus * 12  # ~250 K characters: several real chunks
    assert len(text) > 2 * bpe._CHUNK_CHARS
    whole = tiny_bpe.hf_tokenizer.encode(text, add_special_tokens=False).ids  # one call, no cuts
    assert tiny_bpe.encode_array(text).tolist() == whole
    assert tiny_bpe.encode(text) == whole


def test_gpt2_files_give_transformers_ids(tiny_bpe, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gpt2_dir = tmp_path / "gpt2"
    vocab_path, merges_path = tiny_bpe.save_gpt2_files(gpt2_dir)
    assert merges_path.read_text(encoding="utf-8").startswith("#version")

    by_dir = BPETokenizer.from_files(gpt2_dir)
    by_pair = BPETokenizer.from_files(vocab_path, merges_path)
    by_vocab_file = BPETokenizer.from_files(vocab_path)
    reference = transformers.GPT2TokenizerFast.from_pretrained(str(gpt2_dir))
    assert reference.eos_token_id == by_dir.eos_id == tiny_bpe.eos_id

    for text in VARIED_TEXTS:
        expected = reference.encode(text, add_special_tokens=False)
        assert by_dir.encode(text) == expected, text
        assert by_pair.encode(text) == expected, text
        assert by_vocab_file.encode(text) == expected, text
        assert tiny_bpe.encode(text) == expected, text  # same files as the trained tokenizer
        assert by_dir.decode(expected) == text


def test_gpt2_files_without_end_of_text_get_one_appended(tmp_path):
    # a vocabulary of the 256 byte tokens only: transformers would append <|endoftext|> as 256
    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = BPETokenizer.from_files(tmp_path)
    assert tok.eos_id == tok.vocab_size - 1
    assert tok.encode(f"a{EOT_TOKEN}") == [ord("a"), tok.eos_id]


def test_from_files_errors_name_the_path(tmp_path):
    with pytest.raises(TokenizerError, match="neither tokenizer.json"):
        BPETokenizer.from_files(tmp_path)
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(TokenizerError, match="nope"):
        BPETokenizer.from_files(missing)
    (tmp_path / "vocab.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="vocab.json"):
        BPETokenizer.from_files(tmp_path)
