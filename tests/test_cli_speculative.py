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


def _draft_corpus(capsys, target: Path, out: Path, *extra: str) -> str:
    capsys.readouterr()
    argv = ["draft-corpus", str(target), "--out", str(out), "--prompt-length", "12"]
    assert main([*argv, "--new-tokens", "20", *extra]) == 0
    return capsys.readouterr().out


def test_draft_corpus_holds_each_prompt_and_the_targets_own_greedy_continuation(
    runs, tmp_path, capsys
):
    import rnn2gpt
    from rnn2gpt.generation.draft_corpus import spread_prompts

    out = tmp_path / "corpus.txt"
    data = runs["target"].parent / "corpus.txt"
    printed = _draft_corpus(
        capsys, runs["target"], out, "--data", str(data), "--prompts", "5", "--batch-size", "1"
    )
    target = rnn2gpt.load(runs["target"])
    prompts = spread_prompts(data.read_text(), 5, 12)
    expected = [p + target.generate(p, temperature=0.0, max_new_tokens=20) for p in prompts]
    assert out.read_text() == "\n\n".join(expected) + "\n"
    assert "5 documents" in printed and "100 tokens generated" in printed


def test_draft_corpus_takes_its_default_prompts_from_the_training_part_only(runs, tmp_path):
    from rnn2gpt.api import training_part
    from rnn2gpt.checkpoint import read_config

    text = (runs["target"].parent / "corpus.txt").read_text()
    config = read_config(runs["target"] / "best")
    assert training_part(config) == text[: int(len(text) * 0.9)]  # the trainer's own cut
    separate = config.with_values("data", val_path=str(runs["target"].parent / "corpus.txt"))
    assert training_part(separate) == text  # a separate validation file: all of it trained


def test_a_drafter_fine_tuned_on_the_draft_corpus_agrees_more_with_its_target(
    runs, tmp_path, capsys
):
    corpus = tmp_path / "distill.txt"
    _draft_corpus(capsys, runs["target"], corpus, "--prompts", "200", "--new-tokens", "40")
    distilled = tmp_path / "distilled"
    argv = ["finetune", str(runs["lstm"]), "--data", str(corpus), "--out", str(distilled)]
    assert main([*argv, "--max-steps", "60", "--set", "train.progress=false"]) == 0
    rates = {}
    for name, drafter in (("before", runs["lstm"]), ("after", distilled)):
        for prompt in ("the cat", "a dog", "the end"):
            plain = _generate_json(capsys, str(runs["target"]), "--prompt", prompt)
            spec = _generate_json(
                capsys, str(runs["target"]), "--prompt", prompt, "--draft", str(drafter)
            )
            assert spec["samples"][0]["token_ids"] == plain["token_ids"]
            rates.setdefault(name, []).append(spec["acceptance_rate"])
    # Measured: 0% before on each prompt, 71-100% after.
    assert min(rates["after"]) > max(rates["before"]), rates


def test_draft_corpus_mistakes_are_one_clear_error(runs, tmp_path, capsys):
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    target = str(runs["target"])
    for argv, words in (
        (["--out", str(taken)], "already exists"),
        (["--out", str(tmp_path / "x.txt"), "--data", str(empty)], "empty"),
        (["--out", str(tmp_path / "x.txt"), "--prompts", "0"], "at least 1"),
        (["--out", str(tmp_path)], "is a directory"),
        (["--out", str(tmp_path / "x.txt"), "--data", str(tmp_path / "missing.txt")], "no such"),
    ):
        capsys.readouterr()
        assert main(["draft-corpus", target, *argv]) == EXIT_USER_ERROR
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
    assert taken.read_text() == "keep me"
