"""The command line: train --task translation, translate (stdin and file), eval --task."""

from __future__ import annotations

import io
import json
import random

import pytest

from rnn2gpt.cli import main

WORDS = "red green blue black white pink".split()


def _write_pairs(folder, name: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 3))]
        src.append(" ".join(words))
        tgt.append(" ".join(reversed(words)))
    (folder / f"{name}.src").write_text("\n".join(src) + "\n", encoding="utf-8")
    (folder / f"{name}.tgt").write_text("\n".join(tgt) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_seq2seq")
    _write_pairs(folder, "train", 200, 0)
    _write_pairs(folder, "val", 16, 1)
    args = [
        "-q",
        "train",
        "--task",
        "translation",
        "--model",
        "seq2seq-rnn",
        "--tokenizer",
        "word",
        "--source",
        str(folder / "train.src"),
        "--target",
        str(folder / "train.tgt"),
        "--val-source",
        str(folder / "val.src"),
        "--val-target",
        str(folder / "val.tgt"),
        "--out",
        str(folder / "run"),
        "--max-steps",
        "300",
    ]
    settings = [
        "model.n_layer=1",
        "model.n_embd=32",
        "model.dropout=0",
        "train.batch_size=16",
        "train.lr=5e-3",
        "train.warmup_steps=10",
        "train.eval_interval=300",
        "train.progress=false",
        "train.threads=1",
        "train.precision=fp32",
        f"data.cache_dir={folder / 'cache'}",
    ]
    for setting in settings:
        args += ["--set", setting]
    assert main(args) == 0
    return folder


def test_translate_reads_stdin_line_by_line(cli_run, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("red blue\ngreen white pink\n"))
    assert main(["translate", str(cli_run / "run"), "--num-beams", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == ["blue red", "pink white green"]


def test_translate_a_file_and_plot_attention(cli_run, capsys):
    (cli_run / "in.txt").write_text("black red\n", encoding="utf-8")
    png = cli_run / "attention.png"
    args = ["translate", str(cli_run / "run"), "--input", str(cli_run / "in.txt")]
    assert main(args + ["--plot-attention", str(png)]) == 0
    assert capsys.readouterr().out.splitlines() == ["red black"]
    assert png.is_file() and png.stat().st_size > 1000


def test_eval_task_reports_bleu_as_json(cli_run, capsys):
    import sacrebleu

    out = cli_run / "hyp.txt"
    args = ["eval", str(cli_run / "run"), "--task", "translation", "--json", "--output", str(out)]
    args += ["--source", str(cli_run / "val.src"), "--target", str(cli_run / "val.tgt")]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    hyps = out.read_text(encoding="utf-8").splitlines()
    refs = (cli_run / "val.tgt").read_text(encoding="utf-8").splitlines()
    assert result["count"] == 16 and "tok:13a" in result["signature"]
    # Sentences of 2-3 words have no 4-grams, so check the score against sacrebleu itself.
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert sum(h == r for h, r in zip(hyps, refs)) >= 14


def test_translate_refuses_a_missing_checkpoint(tmp_path, capsys):
    assert main(["translate", str(tmp_path / "nothing"), "--input", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_draft_corpus_refuses_an_encoder_decoder(cli_run, tmp_path, capsys):
    out = tmp_path / "corpus.txt"
    argv = ["draft-corpus", str(cli_run / "run"), "--out", str(out)]
    assert main([*argv, "--data", str(cli_run / "train.tgt")]) == 2
    err = capsys.readouterr().err
    assert "encoder-decoder" in err and "--prompt-lookup" in err and "Traceback" not in err
    assert not out.exists()
