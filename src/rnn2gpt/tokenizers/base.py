"""The tokenizer contract and the functions that build, save and load any kind of tokenizer.

Every tokenizer has::

    kind: str                       # "char" | "word" | "bpe"
    vocab_size: int
    bos_id, eos_id, pad_id, unk_id  # int or None where the kind has no such token
    encode(text: str) -> list[int]
    decode(ids: list[int]) -> str
    decode_bytes(ids) -> bytes      # exact bytes, for streaming without splitting characters
    encode_array(text) -> np.ndarray  # int32 ids of a large text, fast
    save(directory) / load(directory)
    fingerprint() -> str            # sha256 hex of the saved tokenizer.json text

A tokenizer always travels inside a checkpoint directory as ``tokenizer.json`` (BPE: the Hugging
Face `tokenizers` format; char and word: a small JSON file of our own whose top-level
"rnn2gpt_tokenizer" key names the kind).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

TOKENIZER_FILE = "tokenizer.json"


@runtime_checkable
class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def pad_id(self) -> int | None: ...

    @property
    def unk_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def decode_bytes(self, ids: list[int]) -> bytes: ...

    def encode_array(self, text: str) -> np.ndarray: ...

    def save(self, directory: str | Path) -> None: ...

    def fingerprint(self) -> str: ...


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Token ids of ``prompt``; an empty prompt starts from the tokenizer's start token.

    Tokenizers without one (char) start from a newline when the vocabulary has it, as a fresh
    paragraph, else from id 0. Used by the Python API and the analysis tools alike.
    """
    from ..errors import TokenizerError

    if prompt:
        return tokenizer.encode(prompt)
    for special in (tokenizer.bos_id, tokenizer.eos_id):
        if special is not None:
            return [special]
    try:
        return tokenizer.encode("\n")[-1:] or [0]
    except TokenizerError:
        return [0]


def pick_source_tokenizer(tokenizer: Any, source_tokenizer: Any = None) -> Any:
    """The tokenizer that encodes sources: the run's own source tokenizer when it has one
    (``tokenizer.separate = true``), else the joint ``tokenizer``. Targets and outputs always use
    ``tokenizer``. Every place that encodes sources asks this function."""
    return tokenizer if source_tokenizer is None else source_tokenizer
