"""Word tokenizer: PTB conventions, punctuation splitting, vocabulary limits, decoding."""

from __future__ import annotations

import numpy as np
import pytest

from rnn2gpt.errors import TokenizerError
from rnn2gpt.tokenizers import WordTokenizer
from rnn2gpt.tokenizers.word import split_words

PTB_LINES = (
    " the company said it does n't have <unk> plans \n"
    " mr. <unk> 's chairman of the u.s. company \n"
    " the plans are n't new \n"
)


def test_ptb_line_with_unk_and_contractions():
    tok = WordTokenizer.train(PTB_LINES, split_punct=False)
    ids = tok.encode(PTB_LINES)
    words = [tok.words[i] for i in ids]
    assert words[:9] == ["the", "company", "said", "it", "does", "n't", "have", "<unk>", "plans"]
    assert words[9] == "<eos>"
    # one <eos> per newline, at the end of each line
    assert ids.count(tok.eos_id) == PTB_LINES.count("\n") == 3
    assert ids[-1] == tok.eos_id
    # literal <unk> maps to the unk id and takes no second vocabulary slot
    assert ids[7] == tok.unk_id == 0
    assert tok.words.count("<unk>") == 1
    # PTB tokens with periods and apostrophes stay whole without punctuation splitting
    for word in ("mr.", "u.s.", "'s", "n't"):
        assert word in tok.words
    assert tok.vocab_size == 2 + len(set(PTB_LINES.split()) - {"<unk>"})


def test_punctuation_is_split_but_apostrophes_stay():
    text = "He said, \"don't go!\" (twice) 'tis the end... u.s. 3.5"
    assert split_words(text) == [
        "He", "said", ",", '"', "don't", "go", "!", '"', "(", "twice", ")",
        "'tis", "the", "end", ".", ".", ".", "u.s", ".", "3.5",
    ]  # fmt: skip
    assert split_words("<unk>.\nx", split_punct=True) == ["<unk>", ".", "\n", "x"]
    assert split_words("mr. <unk>\n", split_punct=False) == ["mr.", "<unk>", "\n"]


def test_eos_per_newline_including_empty_lines():
    tok = WordTokenizer.train("a b\n\nc\n")
    ids = tok.encode("a b\n\nc\nzzz")
    eos, unk = tok.eos_id, tok.unk_id
    a, b, c = (tok.words.index(w) for w in "abc")
    assert ids == [a, b, eos, eos, c, eos, unk]
    assert tok.bos_id == eos


def test_max_vocab_keeps_most_frequent_with_deterministic_ties():
    text = "a a a a b b c c d d e\n"
    tok = WordTokenizer.train(text, max_vocab=4)  # <unk>, <eos> and two words
    assert tok.words == ("<unk>", "<eos>", "a", "b")  # b and c tie at 2: alphabetical order wins
    assert tok.vocab_size == 4
    assert tok.encode("c a") == [tok.unk_id, 2]
    again = WordTokenizer.train("e d d c c b b a a a a\n", max_vocab=4)
    assert again.words == tok.words  # order of the text does not matter


def test_min_freq_drops_rare_words():
    tok = WordTokenizer.train("x x x y y z\n", min_freq=2)
    assert tok.words == ("<unk>", "<eos>", "x", "y")
    assert tok.encode("z") == [tok.unk_id]


def test_invalid_limits_are_errors():
    with pytest.raises(TokenizerError, match="max_vocab"):
        WordTokenizer.train("a b", max_vocab=2)
    with pytest.raises(TokenizerError, match="min_freq"):
        WordTokenizer.train("a b", min_freq=0)
    with pytest.raises(TokenizerError, match="non-empty"):
        WordTokenizer.train(" \n\n ")


def test_lowercase():
    tok = WordTokenizer.train("The the THE cat\n", lowercase=True)
    assert tok.words == ("<unk>", "<eos>", "the", "cat")
    assert tok.encode("tHe CAT") == [2, 3]


def test_pad_token_is_optional_and_never_read_from_text():
    tok = WordTokenizer.train("a b <pad>\n", pad=True)
    assert tok.pad_id == 2 and tok.words[2] == "<pad>"
    assert tok.encode("<pad>") == [tok.unk_id]
    assert WordTokenizer.train("a\n").pad_id is None
    assert tok.decode([tok.words.index("a"), 2, 2]) == "a"


def test_decode_joins_words_and_glues_punctuation():
    text = 'Hello , world ! He said " hi there " ( twice ) .\nnext line'
    tok = WordTokenizer.train(text)
    assert tok.decode(tok.encode(text)) == 'Hello, world! He said "hi there" (twice).\nnext line'
    assert tok.decode(tok.encode("world\n\nline\n")) == "world\n\nline\n"
    assert tok.decode_bytes(tok.encode("hi there")) == b"hi there"
    with pytest.raises(TokenizerError, match="outside the word vocabulary"):
        tok.decode([tok.vocab_size])


def test_encode_array_matches_encode(corpus):
    tok = WordTokenizer.train(corpus, max_vocab=50)
    array = tok.encode_array(corpus)
    assert array.dtype == np.int32
    assert array.tolist() == tok.encode(corpus)
    assert int(array.max()) < tok.vocab_size
    assert (array == tok.unk_id).any()  # the vocabulary limit left some words out
