"""Reading and writing ``tokenizer.json``: one place for atomic writes, hashing and clear errors.

Every tokenizer kind saves itself as one JSON text. The same text is what :func:`fingerprint`
hashes, so two tokenizers with equal fingerprints encode every string identically.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..errors import TokenizerError
from .base import TOKENIZER_FILE

# Our own (char, word) files carry this top-level key; anything else is a Hugging Face file.
KIND_KEY = "rnn2gpt_tokenizer"
FORMAT_VERSION = 1


def dump_own_json(kind: str, payload: dict[str, Any]) -> str:
    """The canonical JSON text of a char or word tokenizer (stable key order, ASCII only).

    ASCII escapes keep the file valid UTF-8 whatever the vocabulary holds (even lone
    surrogates), and make the text, hence the fingerprint, independent of the platform.
    """
    document = {KIND_KEY: kind, "version": FORMAT_VERSION, **payload}
    return json.dumps(document, ensure_ascii=True, indent=1, sort_keys=True) + "\n"


def sha256_hex(text: str) -> str:
    """sha256 of ``text`` encoded as UTF-8, as 64 hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_tokenizer_file(directory: str | Path, text: str) -> Path:
    """Write ``directory/tokenizer.json`` atomically (temporary file, then rename); returns it."""
    directory = Path(directory)
    target = directory / TOKENIZER_FILE
    try:
        write_text_atomic(target, text, prefix=".tokenizer-")
    except OSError as exc:
        raise TokenizerError(
            f"cannot write the tokenizer to {directory}: {exc.strerror or exc}; "
            "choose a writable directory"
        ) from None
    return target


def resolve_tokenizer_file(path: str | Path) -> Path:
    """``path`` itself when it is a file, else ``path/tokenizer.json``; must exist."""
    path = Path(path)
    candidate = path / TOKENIZER_FILE if path.is_dir() else path
    if not candidate.is_file():
        raise TokenizerError(
            f"no tokenizer file at {candidate}; point to a checkpoint or tokenizer directory "
            f"that holds {TOKENIZER_FILE}"
        )
    return candidate


def read_json_file(path: Path) -> tuple[str, Any]:
    """The text and parsed JSON of ``path``; a :class:`TokenizerError` naming it if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TokenizerError(
            f"cannot read tokenizer file {path}: {exc.strerror or exc}; check the path and permissions"
        ) from None
    except UnicodeDecodeError as exc:
        raise TokenizerError(
            f"tokenizer file {path} is not valid UTF-8 (byte {exc.start}); the file is corrupt, "
            "save the tokenizer again"
        ) from None
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokenizerError(
            f"tokenizer file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}); "
            "the file is corrupt, save the tokenizer again"
        ) from None


def corrupt(path: Path | str, what: str) -> TokenizerError:
    """The error for a JSON file with the wrong structure."""
    return TokenizerError(
        f"tokenizer file {path} is malformed ({what}); the file is corrupt, save the tokenizer again"
    )
