"""Reading a corpus safely and splitting it into training and validation text.

:func:`read_text` accepts a text file, a gzip-compressed file (``.gz``) or a directory of text
files. Everything a user can get wrong (a missing path, an empty or binary file, text that is not
UTF-8, a corrupt archive, a file we may not read) ends in a :class:`~rnn2gpt.errors.DataError`
whose message names the file and says what to do.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import stat
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..config import DataConfig
from ..errors import DataError

logger = logging.getLogger(__name__)

BUNDLED_CORPUS = "tinyshakespeare.txt"

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_GZIP_MAGIC = b"\x1f\x8b"
# Control bytes that never appear in ordinary text (tab, newlines, form feed and ESC are allowed:
# ESC shows up in logs with colour codes).
_CONTROL = re.compile(rb"[\x01-\x08\x0e-\x1a\x1c-\x1f\x7f]")
_CONTROL_BYTES = bytes(range(0x01, 0x09)) + bytes(range(0x0E, 0x1B)) + bytes(range(0x1C, 0x20))
_CONTROL_BYTES += b"\x7f"
# A file is "binary" when more than this share of its bytes are control bytes.
_MAX_CONTROL_FRACTION = 0.3


@dataclass(frozen=True)
class Corpus:
    """The text of one run, split for training and validation."""

    train_text: str
    val_text: str
    description: str  # one line for logs, e.g. "tinyshakespeare.txt (bundled): 1,003,854 train ..."


def bundled_corpus_path() -> Path:
    """Path of Tiny Shakespeare, shipped inside the package (works from an installed wheel)."""
    try:
        resource = resources.files(__package__).joinpath("corpora", BUNDLED_CORPUS)
        if isinstance(resource, Path) and resource.is_file():
            return resource
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - unusual import machinery
        pass
    # A zipped install has no real path; the package data then sits next to this file only when
    # unpacked, which is what every supported install does.
    return Path(__file__).resolve().parent / "corpora" / BUNDLED_CORPUS


def read_text(path: str | os.PathLike[str]) -> str:
    """All the text at ``path``: a file, a ``.gz`` file, or a directory of such files.

    A directory is read recursively: every regular file whose name (and folders) do not start
    with a dot, sorted by path, each ending with a newline. A leading UTF-8 byte-order mark is
    dropped and Windows line ends (CRLF) become LF.

    Raises:
        DataError: missing path, no text, binary content, invalid UTF-8, corrupt gzip, or a file
            that cannot be read; the message names the file.
    """
    if not os.fspath(path):
        # Path("") means the working directory; reading that by accident would be a surprise.
        raise DataError("no corpus path given; give a file, a .gz file or a directory")
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"no such file or directory: {root}")
    if root.is_dir():
        return _read_directory(root)
    text = _read_file(root)
    if not text.strip():
        what = "is empty" if not text else "contains only whitespace"
        raise DataError(f"{root} {what}; give a file with some text to train on")
    return text


def load_corpus(config: DataConfig) -> Corpus:
    """Read the corpus that ``config`` names and split off the validation text.

    Without ``config.val_path`` the validation text is the last ``val_fraction`` of the
    characters, cut at ``int(len(text) * (1 - val_fraction))`` as in nanoGPT's character-level
    Shakespeare benchmark, so losses are comparable with published figures.
    """
    config.validate()
    if config.path:
        source = resolve_data_path(config.path, config.data_dir)
        name = str(source)
    else:
        source = bundled_corpus_path()
        name = f"{BUNDLED_CORPUS} (bundled)"
    text = read_text(source)

    if config.val_path:
        val_source = resolve_data_path(config.val_path, config.data_dir)
        train_text, val_text = text, read_text(val_source)
        how = f"validation from {val_source}"
    else:
        cut = int(len(text) * (1.0 - config.val_fraction))
        train_text, val_text = text[:cut], text[cut:]
        how = f"validation = last {config.val_fraction:g} of the characters"
        if not val_text:
            raise DataError(
                f"the validation split of {name} is empty ({len(text):,} characters); raise "
                "data.val_fraction, add text, or give a validation file with data.val_path"
            )
        if not train_text:
            raise DataError(
                f"the training split of {name} is empty ({len(text):,} characters); lower "
                "data.val_fraction or add text"
            )
    description = (
        f"{name}: {len(train_text):,} training / {len(val_text):,} validation characters ({how})"
    )
    logger.info("corpus %s", description)
    return Corpus(train_text=train_text, val_text=val_text, description=description)


def resolve_data_path(path: str, data_dir: str = "") -> Path:
    """``path`` itself, or read from ``data_dir`` when relative and a folder is given.

    Presets name their files relative to ``data.data_dir`` (``--data-dir``) so they never
    hard-code where a data set lives; a missing folder is reported plainly.
    """
    source = Path(path).expanduser()
    if data_dir and not source.is_absolute():
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise DataError(f"data folder not found: {folder} (check --data-dir / data.data_dir)")
        return folder / source
    if not source.exists() and not source.is_absolute() and not data_dir:
        raise DataError(
            f"no such file or directory: {source}. If this comes from a preset, give the folder "
            "that holds it with --data-dir DIR (data.data_dir)"
        )
    return source


# --------------------------------------------------------------------------- helpers


def _read_directory(root: Path) -> str:
    files = _text_files(root)
    if not files:
        raise DataError(
            f"directory {root} contains no text files (hidden files are skipped); "
            "put .txt or .gz files in it or give the path of a file"
        )
    parts = []
    for file in files:
        text = _read_file(file)
        if not text:
            logger.debug("skipping empty file %s", file)
            continue
        parts.append(text if text.endswith("\n") else text + "\n")
    joined = "".join(parts)
    if not joined.strip():
        raise DataError(
            f"directory {root} holds {len(files)} file(s) but no text (all empty or whitespace); "
            "add some text to train on"
        )
    logger.info("read %d file(s) from %s (%d characters)", len(files), root, len(joined))
    return joined


def _text_files(root: Path) -> list[Path]:
    """Non-hidden regular files under ``root``, recursively, sorted by path."""

    def on_error(exc: OSError) -> None:
        raise DataError(
            f"cannot list directory {exc.filename}: {exc.strerror}; check its permissions"
        )

    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        # Pruning in place keeps os.walk out of .git, .cache and the like.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            file = Path(dirpath) / name
            try:
                if stat.S_ISREG(file.stat().st_mode):  # follows links; skips FIFOs and sockets
                    found.append(file)
            except OSError:
                logger.warning("skipping %s: it cannot be inspected (a broken link?)", file)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _read_file(file: Path) -> str:
    """Decode one file (gzip when it ends in ``.gz``); checks everything but emptiness."""
    compressed = file.suffix.lower() == ".gz"
    try:
        if not stat.S_ISREG(file.stat().st_mode):
            raise DataError(f"{file} is not a regular file or a directory; give a text file")
        if compressed:
            with gzip.open(file, "rb") as fh:
                data = fh.read()
        else:
            data = file.read_bytes()
    except PermissionError:
        raise DataError(f"permission denied reading {file}; check the file's permissions") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(
            f"{file} is not a valid gzip file ({exc}); re-download or re-compress it, or remove "
            "the .gz suffix if it is plain text"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read {file}: {exc.strerror or exc}") from None
    return _decode(data, file, compressed)


def _decode(data: bytes, file: Path, compressed: bool) -> str:
    where = "byte offset {} of the decompressed text" if compressed else "byte offset {}"
    if data.startswith(_UTF16_BOMS) and not data.startswith(_UTF8_BOM):
        raise DataError(
            f"{file} is encoded as UTF-16, not UTF-8; convert it first, e.g. "
            f"iconv -f UTF-16 -t UTF-8 {file} > converted.txt"
        )
    _check_not_binary(data, file, where)
    offset = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    try:
        text = data[offset:].decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start + offset
        bad = exc.object[exc.start : exc.end].hex(" ")
        raise DataError(
            f"{file} is not valid UTF-8: bytes {bad} at {where.format(start)} ({exc.reason})"
            f"{_gzip_hint(data, file)}; convert it first, e.g. iconv -f LATIN1 -t UTF-8 {file} > converted.txt"
        ) from None
    return text.replace("\r\n", "\n")


def _check_not_binary(data: bytes, file: Path, where: str) -> None:
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(
            f"{file} looks binary: a NUL byte at {where.format(nul)}{_gzip_hint(data, file)}; "
            "give a UTF-8 text file"
        )
    if not data:
        return
    # bytes.translate runs in C, so counting control bytes costs little even for large files.
    n_control = len(data) - len(data.translate(None, _CONTROL_BYTES))
    if n_control > _MAX_CONTROL_FRACTION * len(data):
        first = _CONTROL.search(data)
        assert first is not None
        raise DataError(
            f"{file} looks binary: {n_control / len(data):.0%} of its bytes are control characters, "
            f"the first at {where.format(first.start())}{_gzip_hint(data, file)}; "
            "give a UTF-8 text file"
        )


def _gzip_hint(data: bytes, file: Path) -> str:
    if data.startswith(_GZIP_MAGIC) and file.suffix.lower() != ".gz":
        return " (it looks gzip-compressed: rename it to end in .gz)"
    return ""


__all__ = ["BUNDLED_CORPUS", "Corpus", "bundled_corpus_path", "load_corpus", "read_text"]
