"""Atomic writes: the whole new file or the old one, never a part, and no temporary left."""

from __future__ import annotations

import pytest

from rnn2gpt.atomic import write_atomic, write_text_atomic


def test_a_text_is_written_whole_into_a_new_folder(tmp_path):
    path = tmp_path / "new" / "folder" / "file.txt"
    write_text_atomic(path, "héllo\nworld\n")
    assert path.read_bytes() == "héllo\nworld\n".encode()
    assert [p.name for p in path.parent.iterdir()] == ["file.txt"]


def test_a_write_that_fails_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def half_then_fail(fh):
        fh.write(b"new and partial")
        raise KeyboardInterrupt  # Ctrl-C in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]
