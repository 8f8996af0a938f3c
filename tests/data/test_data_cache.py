"""encode_cached: the on-disk token id cache."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from rnn2gpt.data import default_cache_dir, encode_cached, ids_dtype

TEXT = "the quick brown fox jumps over the lazy dog\n" * 5
ALPHABET = "".join(sorted(set(TEXT)))


def test_second_call_hits_the_cache(make_tokenizer, cache_dir):
    tok = make_tokenizer(ALPHABET)
    first = encode_cached(TEXT, tok, str(cache_dir))
    assert tok.calls == 1
    second = encode_cached(TEXT, tok, str(cache_dir))
    assert tok.calls == 1  # not tokenized again
    fresh = tok.encode_array(TEXT)
    np.testing.assert_array_equal(first, fresh)
    np.testing.assert_array_equal(second, fresh)
    assert isinstance(second, np.memmap)
    assert not second.flags.writeable
    assert second.dtype == np.uint16
    assert [p for p in cache_dir.iterdir() if p.name.startswith(".tmp")] == []


def test_key_depends_on_text_and_tokenizer(make_tokenizer, cache_dir):
    tok = make_tokenizer(ALPHABET)
    encode_cached(TEXT, tok, cache_dir)
    encode_cached(TEXT[:-1], tok, cache_dir)
    assert tok.calls == 2
    other = make_tokenizer(ALPHABET[::-1])  # a different fingerprint
    ids = encode_cached(TEXT, other, cache_dir)
    assert other.calls == 1
    np.testing.assert_array_equal(ids, other.encode_array(TEXT))
    assert len(list(cache_dir.iterdir())) == 3


def test_large_vocab_uses_uint32(make_tokenizer, cache_dir):
    tok = make_tokenizer(ALPHABET, vocab_size=70_000)
    ids = encode_cached(TEXT, tok, cache_dir)
    assert ids.dtype == np.uint32
    assert ids_dtype(65_536) == np.uint16 and ids_dtype(65_537) == np.uint32


def test_environment_variable_chooses_the_directory(make_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("RNN2GPT_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    assert default_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    encode_cached(TEXT, make_tokenizer(ALPHABET))
    assert len(list((tmp_path / "env-cache").iterdir())) == 1


def test_unwritable_cache_falls_back_to_memory(make_tokenizer, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    tok = make_tokenizer(ALPHABET)
    with caplog.at_level(logging.WARNING, logger="rnn2gpt.data.cache"):
        ids = encode_cached(TEXT, tok, blocker / "cache")
    np.testing.assert_array_equal(ids, tok.encode_array(TEXT))
    assert "cannot write the token cache" in caplog.text


def test_damaged_entry_is_recomputed(make_tokenizer, cache_dir):
    tok = make_tokenizer(ALPHABET)
    encode_cached(TEXT, tok, cache_dir)
    (entry,) = cache_dir.iterdir()
    entry.write_bytes(b"\x01\x02\x03")  # odd size: cannot be uint16 ids
    ids = encode_cached(TEXT, tok, cache_dir)
    assert tok.calls == 2
    np.testing.assert_array_equal(ids, tok.encode_array(TEXT))


def test_empty_text_gives_empty_ids(make_tokenizer, cache_dir):
    ids = encode_cached("", make_tokenizer(ALPHABET), cache_dir)
    assert ids.shape == (0,) and ids.dtype == np.uint16


def test_out_of_range_ids_are_refused(cache_dir):
    class Broken:
        vocab_size = 10

        def encode_array(self, text):
            return np.array([1, 2, 70_000])

        def fingerprint(self):
            return "broken"

    with pytest.raises(ValueError, match="outside uint16"):
        encode_cached("abc", Broken(), cache_dir)
