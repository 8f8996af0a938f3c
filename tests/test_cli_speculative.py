"""`generate --draft` and `--prompt-lookup` end to end: same text as plain greedy decoding, the
drafting counts in --json, and one clear error for a drafter with another tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import TEXT, train_args

from rnn2gpt.cli import EXIT_USER_ERROR, main


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("speculative")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT)
    out = {}
    for name, arch, tokenizer in (
        ("target", "gpt", "char"),
        ("lstm", "lstm", "char"),
        ("words", "gru", "word"),
    ):
        out[name] = root / name
        assert main(train_args(corpus, out[name], arch, tokenizer, steps=30)) == 0
    return out


def _generate_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["generate", *argv, "--greedy", "--max-new-tokens", "40", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_draft_model_gives_the_plain_greedy_text_and_reports_counts(runs, capsys):
    target = str(runs["target"])
    plain = _generate_json(capsys, target, "--prompt", "the cat")
    spec = _generate_json(
        capsys, target, "--prompt", "the cat", "--draft", str(runs["lstm"]), "--draft-tokens", "3"
    )
    [sample] = spec["samples"]
    assert sample["token_ids"] == plain["token_ids"] and sample["text"] == plain["text"]
    assert spec["drafted"] > 0 and 0 <= spec["accepted"] <= spec["drafted"]
    assert spec["acceptance_rate"] == pytest.approx(spec["accepted"] / spec["drafted"], abs=1e-4)

    lookup = _generate_json(capsys, target, "--prompt", "the cat", "--prompt-lookup", "2")
    assert lookup["samples"][0]["token_ids"] == plain["token_ids"]
    assert lookup["drafted"] > 0  # a repetitive corpus: the last two characters recur


def test_a_drafter_with_another_tokenizer_is_one_clear_error(runs, capsys):
    capsys.readouterr()
    code = main(["generate", str(runs["target"]), "--draft", str(runs["words"]), "--greedy"])
    assert code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "different tokenizer" in err and "Traceback" not in err


def test_the_python_api_loads_a_drafter_and_reports_its_counts(runs):
    import rnn2gpt

    plain = rnn2gpt.load(runs["target"])
    drafted = rnn2gpt.load(runs["target"], draft=runs["lstm"])
    settings = {"temperature": 0.0, "max_new_tokens": 30}
    assert drafted.generate("the dog", **settings) == plain.generate("the dog", **settings)
    assert drafted.speculation.drafted > 0 and plain.speculation is None
    streamed = "".join(drafted.stream("the dog", **settings))
    assert streamed == plain.generate("the dog", **settings)
