"""read_text, load_corpus and the bundled corpus."""

from __future__ import annotations

import gzip

import pytest

from rnn2gpt.config import DataConfig
from rnn2gpt.data import bundled_corpus_path, load_corpus, read_text
from rnn2gpt.errors import DataError

# ------------------------------------------------------------------ reading files


def test_reads_plain_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("héllo wörld\n", encoding="utf-8")
    assert read_text(path) == "héllo wörld\n"
    assert read_text(str(path)) == "héllo wörld\n"


def test_strips_bom_and_normalises_crlf(tmp_path):
    path = tmp_path / "win.txt"
    path.write_bytes(b"\xef\xbb\xbfline one\r\nline two\r\nlone\rcr")
    assert read_text(path) == "line one\nline two\nlone\rcr"


def test_reads_gzip(tmp_path):
    path = tmp_path / "corpus.txt.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"to be or not to be\r\n")
    assert read_text(path) == "to be or not to be\n"


def test_reads_directory_sorted_recursive_skipping_hidden(tmp_path):
    (tmp_path / "b.txt").write_text("second")  # no trailing newline: one is added
    (tmp_path / "a.txt").write_text("first\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third")
    with gzip.open(tmp_path / "sub" / "d.gz", "wb") as fh:
        fh.write(b"fourth\n")
    (tmp_path / "sub" / "empty.txt").write_text("")
    (tmp_path / ".hidden.txt").write_text("SECRET")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("SECRET")
    assert read_text(tmp_path) == "first\nsecond\nthird\nfourth\n"


# ------------------------------------------------------------------ every user mistake


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="no such file or directory") as info:
        read_text(missing)
    assert "nope.txt" in str(info.value)


def test_empty_path_is_not_the_working_directory():
    with pytest.raises(DataError, match="no corpus path given"):
        read_text("")


@pytest.mark.parametrize("content, word", [(b"", "empty"), (b" \n\t\r\n  ", "whitespace")])
def test_empty_or_whitespace_file(tmp_path, content, word):
    path = tmp_path / "blank.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=word) as info:
        read_text(path)
    assert "blank.txt" in str(info.value)


def test_binary_file_with_nul_names_offset(tmp_path):
    path = tmp_path / "image.bin"
    path.write_bytes(b"GIF89a header" + b"\x00\x01\x02" + b"rest")
    with pytest.raises(DataError, match="binary") as info:
        read_text(path)
    message = str(info.value)
    assert "image.bin" in message and "byte offset 13" in message


def test_binary_file_of_control_bytes(tmp_path):
    path = tmp_path / "noise.dat"
    path.write_bytes(b"ab" + bytes([1, 2, 3, 4, 5, 6, 7, 8] * 10))
    with pytest.raises(DataError, match="control characters") as info:
        read_text(path)
    assert "noise.dat" in str(info.value) and "byte offset 2" in str(info.value)


def test_a_few_control_bytes_are_fine(tmp_path):
    path = tmp_path / "log.txt"
    path.write_bytes(b"\x1b[31mred\x1b[0m and a bell \x07 in plenty of ordinary text\n")
    assert "red" in read_text(path)


def test_invalid_utf8_names_offset_bytes_and_iconv(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf" + "é au lait".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8") as info:
        read_text(path)
    message = str(info.value)
    assert "latin1.txt" in message
    assert "byte offset 3" in message
    assert "e9" in message
    assert "iconv" in message


def test_invalid_utf8_offset_counts_the_bom(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfab\xff")
    with pytest.raises(DataError, match="byte offset 5"):
        read_text(path)


def test_utf16_is_recognised(tmp_path):
    path = tmp_path / "utf16.txt"
    path.write_bytes("hello".encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16") as info:
        read_text(path)
    assert "utf16.txt" in str(info.value)


def test_empty_directory(tmp_path):
    with pytest.raises(DataError, match="no text files") as info:
        read_text(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_directory_of_hidden_or_empty_files(tmp_path):
    (tmp_path / ".only_hidden").write_text("x")
    with pytest.raises(DataError, match="no text files"):
        read_text(tmp_path)
    (tmp_path / "blank.txt").write_text("   \n")
    with pytest.raises(DataError, match="no text"):
        read_text(tmp_path)


def test_directory_with_a_binary_file_names_it(tmp_path):
    (tmp_path / "a.txt").write_text("fine\n")
    (tmp_path / "z.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(DataError, match="z.png"):
        read_text(tmp_path)


@pytest.mark.parametrize(
    "payload",
    [b"this is not gzip at all", gzip.compress(b"truncated text " * 50)[:-12]],
    ids=["garbage", "truncated"],
)
def test_corrupt_gzip(tmp_path, payload):
    path = tmp_path / "broken.txt.gz"
    path.write_bytes(payload)
    with pytest.raises(DataError, match="not a valid gzip file") as info:
        read_text(path)
    assert "broken.txt.gz" in str(info.value)


def test_gzip_without_suffix_gets_a_hint(tmp_path):
    path = tmp_path / "archive"
    path.write_bytes(gzip.compress(b"hello"))
    with pytest.raises(DataError, match="rename it to end in .gz"):
        read_text(path)


def test_permission_error_is_a_data_error(tmp_path, monkeypatch):
    path = tmp_path / "locked.txt"
    path.write_text("secret")

    def deny(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "read_bytes", deny)
    with pytest.raises(DataError, match="permission denied reading .*locked.txt"):
        read_text(path)


def test_errors_are_one_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xff\xfe\xfd" * 3 + b"x" * 10)
    with pytest.raises(DataError) as info:
        read_text(path)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ corpus and splits


def test_bundled_corpus_exists():
    path = bundled_corpus_path()
    assert path.is_file()
    assert path.read_text(encoding="utf-8").startswith("First Citizen")


def test_default_corpus_split_matches_nanogpt():
    corpus = load_corpus(DataConfig())
    text = read_text(bundled_corpus_path())
    n = len(text)
    assert len(corpus.train_text) == int(n * 0.9)
    assert corpus.train_text + corpus.val_text == text
    assert corpus.train_text.startswith("First Citizen")
    assert "tinyshakespeare" in corpus.description


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_split_sizes(tmp_path, fraction):
    text = "".join(chr(ord("a") + i % 26) for i in range(997))
    path = tmp_path / "t.txt"
    path.write_text(text)
    corpus = load_corpus(DataConfig(path=str(path), val_fraction=fraction))
    cut = int(len(text) * (1 - fraction))
    assert corpus.train_text == text[:cut]
    assert corpus.val_text == text[cut:]


def test_separate_validation_file(tmp_path):
    (tmp_path / "train.txt").write_text("training text\n")
    (tmp_path / "val.txt").write_text("held out\n")
    corpus = load_corpus(
        DataConfig(path=str(tmp_path / "train.txt"), val_path=str(tmp_path / "val.txt"))
    )
    assert corpus.train_text == "training text\n"
    assert corpus.val_text == "held out\n"
    assert "val.txt" in corpus.description


def test_empty_splits(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("abcdefgh")
    # 1 - 1e-20 rounds to 1.0, so the cut falls at the very end.
    with pytest.raises(DataError, match="validation split .* is empty"):
        load_corpus(DataConfig(path=str(path), val_fraction=1e-20))
    path.write_text("a")
    with pytest.raises(DataError, match="training split .* is empty"):
        load_corpus(DataConfig(path=str(path), val_fraction=0.1))


def test_missing_validation_file(tmp_path):
    (tmp_path / "train.txt").write_text("text\n")
    with pytest.raises(DataError, match="nope.txt"):
        load_corpus(
            DataConfig(path=str(tmp_path / "train.txt"), val_path=str(tmp_path / "nope.txt"))
        )
