"""Atomic file writes: a temporary file in the target's folder, flushed to disk, then renamed
over the target. A reader sees the old file or the whole new one, never a part, and an
interrupted write (Ctrl-C, a full disk) leaves the old file as it was."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: Path, write: Callable[[BinaryIO], object], *, prefix: str = ".tmp-") -> None:
    """Create ``path`` (and its folder) with what ``write(binary_file)`` writes, atomically.

    Raises OSError as the file system does; the temporary file is removed on any failure.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str, *, prefix: str = ".tmp-") -> None:
    """:func:`write_atomic` of ``text`` as UTF-8, newlines as given."""
    data = text.encode("utf-8")
    write_atomic(path, lambda fh: fh.write(data), prefix=prefix)
