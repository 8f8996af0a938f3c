"""Character tokenizer: one token per Unicode code point of the training text.

The vocabulary is the sorted set of distinct code points seen in training (Chinese, emoji and
combining marks included: a base letter and its combining accent are two tokens). There are no
bos/eos/pad tokens. Text with a character outside the vocabulary is an error unless the tokenizer
was built with ``unk=True``, which adds one ``<unk>`` id (the last) that every unseen character
maps to and that decodes to U+FFFD.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TokenizerError
from ._files import dump_own_json, sha256_hex, write_tokenizer_file

UNK_TOKEN = "<unk>"
REPLACEMENT_CHAR = "\ufffd"
_MAX_NAMED = 10  # how many unknown characters an error message lists


def text_code_points(text: str) -> np.ndarray:
    """The code points of ``text`` as a uint32 array of shape (len(text),), without a Python loop."""
    # UTF-32 is one fixed-width unit per code point; surrogatepass keeps lone surrogates intact.
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


class CharTokenizer:
    """Maps each code point to its index in a fixed, ordered list of characters.

    Args:
        chars: the vocabulary in id order, each a single code point, no duplicates.
        unk: add an ``<unk>`` id (``len(chars)``) for characters outside the vocabulary.
    """

    kind = "char"

    def __init__(self, chars: Sequence[str], *, unk: bool = False) -> None:
        chars = list(chars)
        if not chars:
            raise TokenizerError(
                "a char tokenizer needs at least one character; train it on non-empty text"
            )
        for ch in chars:
            if not isinstance(ch, str) or len(ch) != 1:
                raise TokenizerError(
                    f"char vocabulary entry {ch!r} is not a single character; rebuild the tokenizer"
                )
        if len(set(chars)) != len(chars):
            raise TokenizerError("char vocabulary has duplicate characters; rebuild the tokenizer")
        self._chars: tuple[str, ...] = tuple(chars)
        self._unk = bool(unk)
        # decode table: id -> code point (the <unk> id renders as the replacement character)
        itos = list(chars) + ([REPLACEMENT_CHAR] if self._unk else [])
        self._decode_codes = np.array([ord(c) for c in itos], dtype="<u4")
        # encode table: code point -> id, dense up to the largest code point, -1 for "unknown".
        # The extra last slot is -1 too, so clamping any larger code point to it marks it unknown.
        codes = np.fromiter((ord(c) for c in chars), dtype=np.int64, count=len(chars))
        self._table = np.full(int(codes.max()) + 2, -1, dtype=np.int32)
        self._table[codes] = np.arange(len(chars), dtype=np.int32)

    # ------------------------------------------------------------------ construction

    @classmethod
    def train(cls, text: str, *, unk: bool = False) -> CharTokenizer:
        """The tokenizer whose vocabulary is every distinct code point of ``text``, sorted."""
        if not text:
            raise TokenizerError(
                "cannot build a char tokenizer from empty text; give a non-empty corpus"
            )
        return cls(sorted(set(text)), unk=unk)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "tokenizer.json") -> CharTokenizer:
        """Rebuild from the parsed JSON written by :meth:`save`."""
        chars = data.get("vocab")
        unk = data.get("unk", False)
        if not isinstance(chars, list) or not isinstance(unk, bool):
            raise TokenizerError(
                f"tokenizer file {source} is malformed (char vocab must be a list of characters); "
                "the file is corrupt, save the tokenizer again"
            )
        try:
            return cls(chars, unk=unk)
        except TokenizerError as exc:
            raise TokenizerError(f"tokenizer file {source}: {exc}") from None

    # ------------------------------------------------------------------ special ids

    @property
    def vocab_size(self) -> int:
        return len(self._decode_codes)

    @property
    def chars(self) -> tuple[str, ...]:
        """The vocabulary characters in id order (without ``<unk>``)."""
        return self._chars

    @property
    def bos_id(self) -> int | None:
        return None

    @property
    def eos_id(self) -> int | None:
        return None

    @property
    def pad_id(self) -> int | None:
        return None

    @property
    def unk_id(self) -> int | None:
        return len(self._chars) if self._unk else None

    # ------------------------------------------------------------------ encode / decode

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of ``text``, int32 array of shape (len(text),); vectorised, fine for 100 MB."""
        codes = text_code_points(text)
        ids = self._table[np.minimum(codes, len(self._table) - 1)]  # a fresh array (fancy index)
        unknown = ids < 0
        if unknown.any():
            if not self._unk:
                raise self._unknown_error(codes[unknown])
            ids[unknown] = len(self._chars)
        return ids

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``: one per code point."""
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` (exact inverse of :meth:`encode` when no ``<unk>`` is involved)."""
        if not isinstance(ids, np.ndarray):
            ids = np.fromiter(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)][0]
            raise TokenizerError(
                f"token id {int(bad)} is outside the char vocabulary (0..{self.vocab_size - 1}); "
                "decode ids produced with this tokenizer"
            )
        # gather code points, then one UTF-32 decode: no per-character Python work
        return self._decode_codes[ids].tobytes().decode("utf-32-le", "surrogatepass")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """UTF-8 bytes of :meth:`decode` (every token is whole characters, so never partial)."""
        return self.decode(ids).encode("utf-8", "surrogatepass")

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> str:
        """The JSON text that :meth:`save` writes."""
        return dump_own_json(self.kind, {"vocab": list(self._chars), "unk": self._unk})

    def save(self, directory: str | Path) -> None:
        """Write ``directory/tokenizer.json`` (the directory is created if needed)."""
        write_tokenizer_file(directory, self.to_json())

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        """Read a char tokenizer saved by :meth:`save` (``directory`` or the file itself)."""
        from . import load_tokenizer  # late import: the dispatcher imports this module

        tokenizer = load_tokenizer(directory)
        if not isinstance(tokenizer, cls):
            raise TokenizerError(f"{directory} holds a {tokenizer.kind} tokenizer, not a char one")
        return tokenizer

    def fingerprint(self) -> str:
        """sha256 hex of the saved JSON; equal fingerprints mean identical encodings."""
        return sha256_hex(self.to_json())

    # ------------------------------------------------------------------ helpers

    def _unknown_error(self, codes: np.ndarray) -> TokenizerError:
        distinct = np.unique(codes)
        shown = ", ".join(repr(chr(int(c))) for c in distinct[:_MAX_NAMED])
        more = f" and {len(distinct) - _MAX_NAMED} more" if len(distinct) > _MAX_NAMED else ""
        return TokenizerError(
            f"text contains {len(distinct)} character(s) not in the char vocabulary "
            f"({shown}{more}); retrain the tokenizer on text that contains them, "
            "or set tokenizer.unk=true to map unseen characters to <unk>"
        )

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, unk={self._unk})"
