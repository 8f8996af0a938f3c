"""Byte-level BPE (GPT-2 style), trained and run by the Hugging Face ``tokenizers`` library.

Text is split by GPT-2's pre-tokenization regex, each piece's UTF-8 bytes are written as
printable characters (:func:`bytes_to_unicode`), and BPE merges join them into tokens. Every
string is encodable (there is no unknown token) and ``decode(encode(s)) == s`` exactly. One
special token, ``<|endoftext|>``, serves as eos, bos and pad.

The tokenizer saves itself as a standard Hugging Face ``tokenizer.json``; it also reads GPT-2's
``vocab.json`` + ``merges.txt`` pair and gives the same ids as ``transformers``' GPT-2 tokenizer.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from ..errors import TokenizerError
from ._files import (
    read_json_file,
    resolve_tokenizer_file,
    sha256_hex,
    write_tokenizer_file,
)
from .base import TOKENIZER_FILE

logger = logging.getLogger(__name__)

EOT_TOKEN = "<|endoftext|>"
MIN_VOCAB_SIZE = 257  # the 256 byte tokens and <|endoftext|>
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"

# encode_array cuts big texts into pieces of about this many characters and encodes them in
# parallel; training feeds the trainer pieces of the same kind.
_CHUNK_CHARS = 1 << 16
# A cut is safe right before a space or newline that follows a non-whitespace character: no
# pre-token of GPT-2's regex spans it (word/number/symbol runs cannot take in whitespace, and
# a whitespace run cannot start on a non-space), and the regex has no look-behind, so encoding
# the two sides separately gives exactly the ids of the whole.
_SAFE_CUT = re.compile(r"(?<=\S)[ \n]")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte value to one printable character.

    Bytes that are already visible, non-space Latin-1 characters (``!``..``~``, ``¡``..``¬``,
    ``®``..``ÿ``) stand for themselves. The other 68 (control codes, space, DEL, NBSP, soft
    hyphen...) are given the code points 256, 257, ... in byte order, so no token string
    contains whitespace or control characters.
    """
    visible = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in visible}
    next_code = 256
    for b in range(256):
        if b not in table:
            table[b] = chr(next_code)
            next_code += 1
    return table


@functools.lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """The inverse of :func:`bytes_to_unicode`."""
    return {ch: b for b, ch in bytes_to_unicode().items()}


def safe_chunks(text: str, size: int = _CHUNK_CHARS) -> Iterator[str]:
    """Consecutive pieces of ``text`` of about ``size`` characters, cut only at safe places.

    ``"".join(safe_chunks(text)) == text`` and byte-level BPE encodes the pieces to the same
    ids as the whole (see ``_SAFE_CUT``). A stretch without a safe place stays whole.
    """
    start = 0
    while len(text) - start > size:
        match = _SAFE_CUT.search(text, start + size)
        if match is None:
            break
        yield text[start : match.start()]
        start = match.start()
    yield text[start:]


class BPETokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer`` behind the rnn2gpt tokenizer contract."""

    kind = "bpe"

    def __init__(self, hf_tokenizer: HFTokenizer, *, source: str = "tokenizer") -> None:
        self._hf = hf_tokenizer
        spec = json.loads(hf_tokenizer.to_str())
        model_type = spec.get("model", {}).get("type")
        if model_type != "BPE":
            raise TokenizerError(
                f"{source} holds a {model_type} tokenizer; only byte-level BPE (GPT-2 style) "
                "tokenizer files are supported"
            )
        # one past the largest id (not the count of tokens: a foreign file may skip ids)
        self._vocab_size = (
            max(hf_tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        )
        added = hf_tokenizer.get_added_tokens_decoder()  # id -> AddedToken
        self._token_bytes = self._byte_table(added, source)
        self._eos_id = hf_tokenizer.token_to_id(EOT_TOKEN)
        # Chunked (parallel) encoding is exact only for the plain GPT-2 pipeline, see _SAFE_CUT.
        pre = spec.get("pre_tokenizer") or {}
        self._chunkable = (
            spec.get("normalizer") is None
            and pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False)
            and all(
                not (tok.lstrip or tok.rstrip or tok.single_word)
                and not any(ch.isspace() for ch in tok.content)
                for tok in added.values()
            )
        )

    def _byte_table(self, added: dict[int, AddedToken], source: str) -> list[bytes]:
        """id -> the exact bytes the token stands for."""
        decoder = unicode_to_bytes()
        table: list[bytes] = []
        for i in range(self._vocab_size):
            if i in added:
                table.append(added[i].content.encode("utf-8"))
                continue
            token = self._hf.id_to_token(i)
            if token is None:  # a gap in the ids; never produced by encode
                table.append(b"")
                continue
            try:
                table.append(bytes(decoder[ch] for ch in token))
            except KeyError:
                raise TokenizerError(
                    f"{source} is not a byte-level BPE tokenizer (token {token!r} is not "
                    "written in GPT-2's byte alphabet); use a GPT-2 style tokenizer file"
                ) from None
        return table

    # ------------------------------------------------------------------ construction

    @classmethod
    def train(cls, text: str, *, vocab_size: int = 8000) -> BPETokenizer:
        """Learn ``vocab_size`` tokens (256 bytes, ``<|endoftext|>``, merges) from ``text``.

        Deterministic: the same text and size always give the same tokenizer.
        """
        if vocab_size < MIN_VOCAB_SIZE:
            raise TokenizerError(
                f"tokenizer.vocab_size must be at least {MIN_VOCAB_SIZE} for byte-level BPE "
                f"(got {vocab_size})"
            )
        if not text:
            raise TokenizerError(
                "cannot train a BPE tokenizer on empty text; give a non-empty corpus"
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT_TOKEN],  # id 0
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, always
            show_progress=False,
        )
        chunks = list(safe_chunks(text, size=1 << 20))
        try:
            hf.train_from_iterator(chunks, trainer, length=len(chunks))
        except TypeError:
            raise _surrogate_error(text) from None
        tokenizer = cls(hf, source="trained BPE")
        if tokenizer.vocab_size < vocab_size:
            logger.info(
                "BPE stopped at %d tokens (asked for %d): the text has no more pairs to merge",
                tokenizer.vocab_size,
                vocab_size,
            )
        return tokenizer

    @classmethod
    def from_files(cls, path: str | Path, merges: str | Path | None = None) -> BPETokenizer:
        """Load a ``tokenizer.json``, a directory holding one, or GPT-2's vocab + merges files.

        ``path`` may be a ``tokenizer.json`` file; a directory with ``tokenizer.json`` or with
        ``vocab.json`` + ``merges.txt``; a ``vocab.json`` next to its ``merges.txt``; or, with
        ``merges`` given, the vocabulary file of the pair.
        """
        path = Path(path)
        if merges is not None:
            return cls._from_vocab_merges(path, Path(merges))
        if path.is_dir():
            if (path / TOKENIZER_FILE).is_file():
                return cls._from_tokenizer_json(path / TOKENIZER_FILE)
            if (path / VOCAB_FILE).is_file() and (path / MERGES_FILE).is_file():
                return cls._from_vocab_merges(path / VOCAB_FILE, path / MERGES_FILE)
            raise TokenizerError(
                f"{path} holds neither {TOKENIZER_FILE} nor {VOCAB_FILE} + {MERGES_FILE}; "
                "point to a directory with the tokenizer files"
            )
        if path.name == VOCAB_FILE and (path.parent / MERGES_FILE).is_file():
            return cls._from_vocab_merges(path, path.parent / MERGES_FILE)
        if path.name == MERGES_FILE and (path.parent / VOCAB_FILE).is_file():
            return cls._from_vocab_merges(path.parent / VOCAB_FILE, path)
        return cls._from_tokenizer_json(resolve_tokenizer_file(path))

    @classmethod
    def _from_tokenizer_json(cls, path: Path) -> BPETokenizer:
        text, _ = read_json_file(path)  # clear errors for unreadable or non-JSON files
        return cls.from_json(text, source=str(path))

    @classmethod
    def from_json(cls, text: str, *, source: str = "tokenizer.json") -> BPETokenizer:
        """Build from the text of a Hugging Face ``tokenizer.json``."""
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as exc:  # the Rust side raises plain Exception
            raise TokenizerError(
                f"tokenizer file {source} is not a valid Hugging Face tokenizer ({exc}); "
                "the file is corrupt, save the tokenizer again"
            ) from None
        return cls(hf, source=source)

    @classmethod
    def _from_vocab_merges(cls, vocab: Path, merges: Path) -> BPETokenizer:
        for path in (vocab, merges):
            if not path.is_file():
                raise TokenizerError(
                    f"no such tokenizer file {path}; give GPT-2's {VOCAB_FILE} and {MERGES_FILE}"
                )
        read_json_file(vocab)  # a clear error naming vocab.json if it is not JSON
        try:
            model = models.BPE.from_file(str(vocab), str(merges))
        except Exception as exc:  # the Rust side raises plain Exception
            raise TokenizerError(
                f"cannot read GPT-2 tokenizer files {vocab} and {merges} ({exc}); "
                "check that they are a matching, uncorrupted pair"
            ) from None
        # The same pipeline as transformers' GPT-2 tokenizer builds from these files.
        hf = HFTokenizer(model)
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens([AddedToken(EOT_TOKEN, special=True, normalized=False)])
        return cls(hf, source=f"{vocab} + {merges}")

    @classmethod
    def load(cls, directory: str | Path) -> BPETokenizer:
        """Read ``directory/tokenizer.json`` (or the file itself)."""
        return cls._from_tokenizer_json(resolve_tokenizer_file(directory))

    # ------------------------------------------------------------------ special ids

    @property
    def hf_tokenizer(self) -> HFTokenizer:
        """The underlying ``tokenizers.Tokenizer`` (do not modify it)."""
        return self._hf

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def bos_id(self) -> int | None:
        return self._eos_id

    @property
    def pad_id(self) -> int | None:
        return self._eos_id

    @property
    def unk_id(self) -> int | None:
        return None  # every byte has a token

    # ------------------------------------------------------------------ encode / decode

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``. A literal ``<|endoftext|>`` in the text becomes the eos id."""
        if self._chunkable and len(text) > 2 * _CHUNK_CHARS:
            return self.encode_array(text).tolist()  # same ids, several times faster
        return self._encode_whole(text)

    def _encode_whole(self, text: str) -> list[int]:
        try:
            return self._hf.encode(text, add_special_tokens=False).ids
        except TypeError:
            raise _surrogate_error(text) from None

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of ``text`` as an int32 array of shape (n_tokens,), equal to :meth:`encode`.

        Big texts are cut at safe places and the pieces encoded in parallel; the ids are
        exactly those of encoding the whole text in one call.
        """
        if not self._chunkable or len(text) <= 2 * _CHUNK_CHARS:
            return np.asarray(self._encode_whole(text), dtype=np.int32)
        try:
            encodings = self._hf.encode_batch_fast(
                list(safe_chunks(text, _CHUNK_CHARS)), add_special_tokens=False
            )
        except TypeError:
            raise _surrogate_error(text) from None
        parts = [np.asarray(enc.ids, dtype=np.int32) for enc in encodings]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The exact bytes of ``ids``; a token may end inside a multi-byte character."""
        ids = list(ids)
        table = self._token_bytes
        if ids and (min(ids) < 0 or max(ids) >= len(table)):
            bad = next(i for i in ids if not 0 <= i < len(table))
            raise TokenizerError(
                f"token id {int(bad)} is outside the BPE vocabulary (0..{len(table) - 1}); "
                "decode ids produced with this tokenizer"
            )
        return b"".join([table[i] for i in ids])

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; incomplete UTF-8 at the ends decodes to U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> str:
        """The Hugging Face ``tokenizer.json`` text that :meth:`save` writes."""
        return self._hf.to_str(pretty=True)

    def save(self, directory: str | Path) -> None:
        """Write ``directory/tokenizer.json`` (the directory is created if needed)."""
        write_tokenizer_file(directory, self.to_json())

    def save_gpt2_files(self, directory: str | Path) -> tuple[Path, Path]:
        """Write GPT-2's ``vocab.json`` and ``merges.txt`` into ``directory``; returns both paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = self._hf.get_vocab(with_added_tokens=True)
        merges: list[Any] = json.loads(self._hf.to_str())["model"]["merges"]
        # tokenizers >= 0.20 stores merges as pairs, older versions as "a b" strings
        lines = [m if isinstance(m, str) else " ".join(m) for m in merges]
        vocab_path, merges_path = directory / VOCAB_FILE, directory / MERGES_FILE
        ordered = dict(sorted(vocab.items(), key=lambda item: item[1]))
        vocab_path.write_text(json.dumps(ordered, ensure_ascii=False), encoding="utf-8")
        merges_path.write_text(
            "#version: 0.2\n" + "".join(line + "\n" for line in lines), encoding="utf-8"
        )
        return vocab_path, merges_path

    def fingerprint(self) -> str:
        """sha256 hex of the saved JSON; equal fingerprints mean identical encodings."""
        return sha256_hex(self.to_json())

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def _surrogate_error(text: str) -> TokenizerError:
    """The error for text that is not encodable as UTF-8 (it holds a lone surrogate)."""
    index = next((i for i, ch in enumerate(text) if 0xD800 <= ord(ch) <= 0xDFFF), -1)
    return TokenizerError(
        f"text holds a lone surrogate (U+{ord(text[index]):04X} at character {index}) that has "
        "no UTF-8 form; read the text with strict UTF-8 decoding or remove that character"
        if index >= 0
        else "text could not be passed to the BPE tokenizer; give a str of valid Unicode"
    )
