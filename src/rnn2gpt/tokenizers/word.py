"""Word tokenizer in the Penn Treebank style: a line's words, then ``<eos>`` for its newline.

Splitting rules (:func:`split_words`):

- whitespace separates words; every ``"\\n"`` becomes one ``<eos>`` token;
- with ``split_punct`` (the default) punctuation such as ``. , ; : ! ? " ( ) [ ] { }`` is split
  off the start and end of a word, one token per mark, while marks inside a word stay
  (``u.s``, ``3.5``) and apostrophes are never split, so PTB's ``n't`` and ``'s`` stay whole;
- without ``split_punct`` a word is exactly a whitespace-separated run. Mikolov's PTB files are
  already tokenized and keep abbreviation periods (``mr.``, ``u.s.``): train on them with
  ``split_punct=False`` to get the standard 10,000-word vocabulary.

The vocabulary is ``<unk>`` (id 0), ``<eos>`` (id 1, also used as bos), an optional ``<pad>``
(id 2), then words by decreasing frequency, ties broken alphabetically (by code point). Words
outside the vocabulary, and the literal ``<unk>`` of PTB text, map to ``<unk>``.

Decoding is *not* byte-exact: whitespace is normalised to single spaces, closing punctuation is
glued to the word before it and opening punctuation to the word after it, ``<eos>`` becomes a
newline and ``<unk>`` is written as the literal ``<unk>``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TokenizerError
from ._files import dump_own_json, sha256_hex, write_tokenizer_file

UNK_TOKEN = "<unk>"
EOS_TOKEN = "<eos>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = (UNK_TOKEN, EOS_TOKEN, PAD_TOKEN)

# Marks that attach to the word before them (no space before when decoding) ...
CLOSING_PUNCT = ".,;:!?)]}\u2026\u201d\u00bb"  # ... … ” »
# ... and marks that attach to the word after them (no space after).
OPENING_PUNCT = "([{\u201c\u00ab\u00bf\u00a1\u201e"  # “ « ¿ ¡ „
QUOTE = '"'  # opens and closes in turn
PUNCTUATION = CLOSING_PUNCT + OPENING_PUNCT + QUOTE

_P = re.escape(PUNCTUATION)
# A newline, a single edge punctuation mark, or a word that starts and ends with a
# non-punctuation character (and may hold punctuation inside). Regex alternation is tried at
# each position from the left, so leading marks come off one by one, then the greedy word
# backs off to its last non-punctuation character, leaving the trailing marks.
_SPLIT_PUNCT = re.compile(rf"\n|[{_P}]|[^\s{_P}](?:\S*[^\s{_P}])?")
_SPLIT_SPACE = re.compile(r"\n|\S+")


def split_words(text: str, *, split_punct: bool = True) -> list[str]:
    """The word tokens of ``text`` in order, with ``"\\n"`` kept as its own token."""
    return (_SPLIT_PUNCT if split_punct else _SPLIT_SPACE).findall(text)


class WordTokenizer:
    """Maps words to ids through a fixed vocabulary; unknown words become ``<unk>``.

    Args:
        words: the non-special vocabulary in id order (ids start after the special tokens).
        lowercase: lowercase text before splitting it.
        split_punct: split edge punctuation off words (see the module docstring).
        pad: add a ``<pad>`` token (id 2).
    """

    kind = "word"

    def __init__(
        self,
        words: Sequence[str],
        *,
        lowercase: bool = False,
        split_punct: bool = True,
        pad: bool = False,
    ) -> None:
        specials = [UNK_TOKEN, EOS_TOKEN] + ([PAD_TOKEN] if pad else [])
        vocab = specials + list(words)
        if len(set(vocab)) != len(vocab):
            raise TokenizerError(
                "word vocabulary has duplicate or special-token entries; rebuild the tokenizer"
            )
        for word in words:
            if not isinstance(word, str) or not word or any(c.isspace() for c in word):
                raise TokenizerError(
                    f"word vocabulary entry {word!r} is empty or holds whitespace; "
                    "rebuild the tokenizer"
                )
        self._vocab: list[str] = vocab
        self._lowercase = bool(lowercase)
        self._split_punct = bool(split_punct)
        self._pad = bool(pad)
        # Encoding table. "\n" is the eos; <pad> is left out so that literal "<pad>" in
        # text can never turn into padding (it becomes <unk>).
        self._lookup: dict[str, int] = {w: i for i, w in enumerate(vocab) if w != PAD_TOKEN}
        self._lookup["\n"] = self.eos_id

    # ------------------------------------------------------------------ construction

    @classmethod
    def train(
        cls,
        text: str,
        *,
        max_vocab: int = 0,
        min_freq: int = 1,
        lowercase: bool = False,
        split_punct: bool = True,
        pad: bool = False,
    ) -> WordTokenizer:
        """Count the words of ``text`` and keep the frequent ones.

        ``max_vocab`` bounds the whole vocabulary *including* the special tokens (so PTB's
        conventional 10,000 is ``max_vocab=10000``); 0 means no limit. Words seen fewer than
        ``min_freq`` times are left out. Ties in frequency are broken alphabetically.
        """
        n_special = 3 if pad else 2
        if max_vocab < 0 or 0 < max_vocab <= n_special:
            raise TokenizerError(
                f"tokenizer.max_vocab must be 0 (no limit) or more than the {n_special} special "
                f"tokens (got {max_vocab})"
            )
        if min_freq < 1:
            raise TokenizerError(f"tokenizer.min_freq must be at least 1 (got {min_freq})")
        if lowercase:
            text = text.lower()
        counts = Counter(split_words(text, split_punct=split_punct))
        for token in ("\n", *SPECIAL_TOKENS):
            counts.pop(token, None)
        if not counts:
            raise TokenizerError(
                "cannot build a word tokenizer from text without words; give a non-empty corpus"
            )
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        words = [word for word, count in ranked if count >= min_freq]
        if max_vocab:
            words = words[: max_vocab - n_special]
        return cls(words, lowercase=lowercase, split_punct=split_punct, pad=pad)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "tokenizer.json") -> WordTokenizer:
        """Rebuild from the parsed JSON written by :meth:`save`."""
        vocab = data.get("vocab")
        flags = [
            data.get(key, default)
            for key, default in (("lowercase", False), ("split_punct", True), ("pad", False))
        ]
        if not isinstance(vocab, list) or not all(isinstance(f, bool) for f in flags):
            raise TokenizerError(
                f"tokenizer file {source} is malformed (word vocab must be a list of words); "
                "the file is corrupt, save the tokenizer again"
            )
        lowercase, split_punct, pad = flags
        specials = [UNK_TOKEN, EOS_TOKEN] + ([PAD_TOKEN] if pad else [])
        if vocab[: len(specials)] != specials:
            raise TokenizerError(
                f"tokenizer file {source} is malformed (the vocab must start with "
                f"{', '.join(specials)}); the file is corrupt, save the tokenizer again"
            )
        try:
            return cls(
                vocab[len(specials) :], lowercase=lowercase, split_punct=split_punct, pad=pad
            )
        except TokenizerError as exc:
            raise TokenizerError(f"tokenizer file {source}: {exc}") from None

    # ------------------------------------------------------------------ special ids

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def words(self) -> tuple[str, ...]:
        """The whole vocabulary in id order, special tokens first."""
        return tuple(self._vocab)

    @property
    def unk_id(self) -> int:
        return 0

    @property
    def eos_id(self) -> int:
        return 1

    @property
    def bos_id(self) -> int:
        return 1  # PTB convention: the end of one line starts the next

    @property
    def pad_id(self) -> int | None:
        return 2 if self._pad else None

    # ------------------------------------------------------------------ encode / decode

    def tokenize(self, text: str) -> list[str]:
        """The word strings ``text`` splits into (``"\\n"`` for each line end)."""
        return split_words(text.lower() if self._lowercase else text, split_punct=self._split_punct)

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of ``text`` as an int32 array of shape (n_words,)."""
        tokens = self.tokenize(text)
        ids = map(self._lookup.get, tokens, repeat(self.unk_id))
        return np.fromiter(ids, dtype=np.int32, count=len(tokens))

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``: each word, and ``<eos>`` for each newline."""
        lookup, unk = self._lookup, self.unk_id
        return [lookup.get(token, unk) for token in self.tokenize(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Readable text of ``ids`` (not byte-exact: see the module docstring)."""
        vocab, eos, pad = self._vocab, self.eos_id, self.pad_id
        pieces: list[str] = []
        line_start = True  # no space before the first word of a line
        glue_next = False  # the previous token was opening punctuation
        quote_open = False
        for raw in ids:
            i = int(raw)
            if not 0 <= i < len(vocab):
                raise TokenizerError(
                    f"token id {i} is outside the word vocabulary (0..{len(vocab) - 1}); "
                    "decode ids produced with this tokenizer"
                )
            if i == eos:
                pieces.append("\n")
                line_start, glue_next, quote_open = True, False, False
                continue
            if i == pad:
                continue
            word = vocab[i]
            space = not (line_start or glue_next or word in CLOSING_PUNCT)
            if word == QUOTE:
                space = space and not quote_open  # a closing quote hugs the word before it
                quote_open = not quote_open
                glue_next = quote_open
            else:
                glue_next = word in OPENING_PUNCT
            if space:
                pieces.append(" ")
            pieces.append(word)
            line_start = False
        return "".join(pieces)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """UTF-8 bytes of :meth:`decode` (words are whole characters, so never partial)."""
        return self.decode(ids).encode("utf-8", "surrogatepass")

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> str:
        """The JSON text that :meth:`save` writes."""
        payload = {
            "vocab": self._vocab,
            "lowercase": self._lowercase,
            "split_punct": self._split_punct,
            "pad": self._pad,
        }
        return dump_own_json(self.kind, payload)

    def save(self, directory: str | Path) -> None:
        """Write ``directory/tokenizer.json`` (the directory is created if needed)."""
        write_tokenizer_file(directory, self.to_json())

    @classmethod
    def load(cls, directory: str | Path) -> WordTokenizer:
        """Read a word tokenizer saved by :meth:`save` (``directory`` or the file itself)."""
        from . import load_tokenizer  # late import: the dispatcher imports this module

        tokenizer = load_tokenizer(directory)
        if not isinstance(tokenizer, cls):
            raise TokenizerError(f"{directory} holds a {tokenizer.kind} tokenizer, not a word one")
        return tokenizer

    def fingerprint(self) -> str:
        """sha256 hex of the saved JSON; equal fingerprints mean identical encodings."""
        return sha256_hex(self.to_json())

    def __repr__(self) -> str:
        return (
            f"WordTokenizer(vocab_size={self.vocab_size}, lowercase={self._lowercase}, "
            f"split_punct={self._split_punct}, pad={self._pad})"
        )
