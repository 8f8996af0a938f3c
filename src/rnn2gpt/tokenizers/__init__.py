"""Tokenizers: character, word (Penn Treebank style) and byte-level BPE, one contract for all.

Build one for a new run with :func:`train_tokenizer`, read one back from a checkpoint with
:func:`load_tokenizer`. Every kind saves itself as ``tokenizer.json``: char and word files are
our own small JSON (a top-level ``"rnn2gpt_tokenizer"`` key names the kind); anything else is
read as a Hugging Face ``tokenizers`` file, i.e. byte-level BPE.

May import: ``errors``, ``config``.
"""

from __future__ import annotations

from pathlib import Path

from ..config import TokenizerConfig
from ..errors import TokenizerError
from ._files import KIND_KEY, corrupt, read_json_file, resolve_tokenizer_file
from .base import TOKENIZER_FILE, Tokenizer
from .bpe import BPETokenizer
from .char import CharTokenizer
from .word import WordTokenizer

_OWN_KINDS = {"char": CharTokenizer, "word": WordTokenizer}


def train_tokenizer(text: str, config: TokenizerConfig) -> Tokenizer:
    """Build the tokenizer ``config`` describes from ``text``.

    BPE with ``config.path`` set loads those files instead of training.
    """
    config.validate()
    if config.kind == "char":
        return CharTokenizer.train(text, unk=config.unk)
    if config.kind == "word":
        return WordTokenizer.train(
            text,
            max_vocab=config.max_vocab,
            min_freq=config.min_freq,
            lowercase=config.lowercase,
            split_punct=config.split_punct,
        )
    if config.path:
        return BPETokenizer.from_files(config.path)
    return BPETokenizer.train(text, vocab_size=config.vocab_size)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Read the tokenizer saved in ``directory`` (or the ``tokenizer.json`` file itself)."""
    path = resolve_tokenizer_file(directory)
    text, data = read_json_file(path)
    if not isinstance(data, dict):
        raise corrupt(path, "expected a JSON object")
    if KIND_KEY not in data:
        return BPETokenizer.from_json(text, source=str(path))
    kind = data[KIND_KEY]
    if kind not in _OWN_KINDS:
        raise TokenizerError(
            f"tokenizer file {path} is of unknown kind {kind!r} (expected char or word); "
            "it was written by another version of rnn2gpt or is corrupt"
        )
    return _OWN_KINDS[kind].from_dict(data, source=str(path))


__all__ = [
    "TOKENIZER_FILE",
    "BPETokenizer",
    "CharTokenizer",
    "Tokenizer",
    "WordTokenizer",
    "load_tokenizer",
    "train_tokenizer",
]
