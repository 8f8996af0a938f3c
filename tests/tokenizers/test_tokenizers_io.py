"""Building from a config, saving, loading, fingerprints and file errors, for every kind."""

from __future__ import annotations

import hashlib
import json

import pytest

from rnn2gpt.config import TokenizerConfig
from rnn2gpt.errors import TokenizerError
from rnn2gpt.tokenizers import (
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    load_tokenizer,
    train_tokenizer,
)

SAMPLE = "The cat sat on the mat.\nDon't panic: 中文 😀 e\u0301!\n"


def _all_tokenizers(corpus: str, tiny_bpe: BPETokenizer) -> list[Tokenizer]:
    return [
        CharTokenizer.train(corpus),
        CharTokenizer.train(corpus, unk=True),
        WordTokenizer.train(corpus, max_vocab=60, lowercase=True),
        WordTokenizer.train(corpus, split_punct=False, pad=True),
        tiny_bpe,
    ]


def test_every_kind_follows_the_protocol(corpus, tiny_bpe):
    for tok in _all_tokenizers(corpus, tiny_bpe):
        assert isinstance(tok, Tokenizer)
        assert tok.kind in ("char", "word", "bpe")


def test_save_load_gives_identical_ids_and_specials(corpus, tiny_bpe, tmp_path):
    for n, tok in enumerate(_all_tokenizers(corpus, tiny_bpe)):
        directory = tmp_path / f"nested{n}" / "tok"  # save creates missing directories
        tok.save(directory)
        assert (directory / "tokenizer.json").is_file()
        loaded = load_tokenizer(directory)
        assert type(loaded) is type(tok)
        assert loaded.kind == tok.kind
        assert loaded.vocab_size == tok.vocab_size
        specials = ("bos_id", "eos_id", "pad_id", "unk_id")
        assert [getattr(loaded, s) for s in specials] == [getattr(tok, s) for s in specials]
        assert loaded.encode(corpus) == tok.encode(corpus)
        assert loaded.encode_array(corpus).tolist() == tok.encode(corpus)
        assert loaded.fingerprint() == tok.fingerprint()
        assert type(tok).load(directory).fingerprint() == tok.fingerprint()
        # the file itself may be given instead of its directory
        assert load_tokenizer(directory / "tokenizer.json").fingerprint() == tok.fingerprint()


def test_fingerprint_is_the_hash_of_the_saved_file(corpus, tiny_bpe, tmp_path):
    for n, tok in enumerate(_all_tokenizers(corpus, tiny_bpe)):
        tok.save(tmp_path / str(n))
        data = (tmp_path / str(n) / "tokenizer.json").read_bytes()
        assert tok.fingerprint() == hashlib.sha256(data).hexdigest()


def test_fingerprint_changes_with_the_vocabulary(corpus, tiny_bpe):
    assert CharTokenizer.train("abc").fingerprint() != CharTokenizer.train("abd").fingerprint()
    assert (
        CharTokenizer.train("abc").fingerprint()
        != CharTokenizer.train("abc", unk=True).fingerprint()
    )
    assert WordTokenizer.train("a b\n").fingerprint() != WordTokenizer.train("a c\n").fingerprint()
    assert (
        WordTokenizer.train("a b\n").fingerprint()
        != WordTokenizer.train("a b\n", lowercase=True).fingerprint()
    )
    bigger = BPETokenizer.train(corpus, vocab_size=310)
    assert bigger.fingerprint() != tiny_bpe.fingerprint()
    assert CharTokenizer.train("cab").fingerprint() == CharTokenizer.train("abc").fingerprint()


def test_train_tokenizer_from_config(tmp_path):
    char = train_tokenizer(SAMPLE, TokenizerConfig(kind="char", unk=True))
    assert isinstance(char, CharTokenizer) and char.unk_id == char.vocab_size - 1
    word = train_tokenizer(SAMPLE, TokenizerConfig(kind="word", max_vocab=6, lowercase=True))
    assert isinstance(word, WordTokenizer) and word.vocab_size == 6
    assert word.words[2] == "the"  # "The" and "the" counted together
    bpe = train_tokenizer(SAMPLE * 3, TokenizerConfig(kind="bpe", vocab_size=270))
    assert isinstance(bpe, BPETokenizer) and bpe.vocab_size == 270
    assert bpe.decode(bpe.encode(SAMPLE)) == SAMPLE


def test_train_tokenizer_with_path_loads_instead(tiny_bpe, tmp_path):
    tiny_bpe.save(tmp_path / "saved")
    loaded = train_tokenizer("ignored", TokenizerConfig(kind="bpe", path=str(tmp_path / "saved")))
    assert loaded.fingerprint() == tiny_bpe.fingerprint()
    tiny_bpe.save_gpt2_files(tmp_path / "pair")
    pair = train_tokenizer("", TokenizerConfig(kind="bpe", path=str(tmp_path / "pair")))
    assert pair.encode(SAMPLE) == tiny_bpe.encode(SAMPLE)


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer file") as info:
        load_tokenizer(tmp_path / "absent")
    assert "absent" in str(info.value)

    broken = tmp_path / "broken"
    broken.mkdir()
    path = broken / "tokenizer.json"
    cases = {
        '{"rnn2gpt_tokenizer": "char", "vocab": ["a", "b"': "not valid JSON",
        '{"rnn2gpt_tokenizer": "char", "vocab": 5}': "malformed",
        '{"rnn2gpt_tokenizer": "char", "vocab": ["ab"]}': "not a single character",
        '{"rnn2gpt_tokenizer": "char", "vocab": ["a", "a"]}': "duplicate",
        '{"rnn2gpt_tokenizer": "word", "vocab": ["a", "<unk>"]}': "must start with",
        '{"rnn2gpt_tokenizer": "sentencepiece"}': "unknown kind",
        "[1, 2]": "malformed",
        '{"model": {"type": "BPE"}}': "not a valid Hugging Face tokenizer",
    }
    for content, expected in cases.items():
        path.write_text(content, encoding="utf-8")
        with pytest.raises(TokenizerError, match=expected) as info:
            load_tokenizer(broken)
        assert str(path) in str(info.value), content

    path.write_bytes(b'{"rnn2gpt_tokenizer": "char", "vocab": ["\xff"]}')
    with pytest.raises(TokenizerError, match="not valid UTF-8") as info:
        load_tokenizer(broken)
    assert str(path) in str(info.value)


def test_non_byte_level_hugging_face_file_is_refused(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    wordlevel = HFTokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
    (tmp_path / "tokenizer.json").write_text(wordlevel.to_str(), encoding="utf-8")
    with pytest.raises(TokenizerError, match="only byte-level BPE"):
        load_tokenizer(tmp_path)

    spec = json.loads(BPETokenizer.train("abc abd", vocab_size=260).to_json())
    spec["model"]["vocab"]["\u2581word"] = len(spec["model"]["vocab"])  # SentencePiece-style
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(TokenizerError, match="byte alphabet"):
        load_tokenizer(tmp_path)
