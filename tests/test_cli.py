"""The command line end to end: train -> generate -> eval -> info, and one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rnn2gpt.cli import EXIT_USER_ERROR, main

TEXT = (
    "the cat sat on the mat .\nthe dog sat on the log .\n"
    "a cat and a dog met on the mat .\nthe end of the tale .\n"
) * 30

TINY = {
    "gpt": ["model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.block_size=32"],
    "lstm": ["model.n_layer=1", "model.n_embd=16"],
    "gru": ["model.n_layer=1", "model.n_embd=16"],
    "rnn": ["model.n_layer=1", "model.n_embd=16"],
}


def train_args(corpus: Path, out: Path, arch: str, tokenizer: str, steps: int = 12) -> list[str]:
    args = [
        "train",
        "--data",
        str(corpus),
        "--model",
        arch,
        "--tokenizer",
        tokenizer,
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--seed",
        "3",
    ]
    settings = TINY[arch] + [
        "train.batch_size=4",
        "train.seq_len=16",
        "train.eval_interval=6",
        "train.eval_batches=2",
        "train.progress=false",
        "train.threads=1",
        "train.warmup_steps=2",
        "tokenizer.vocab_size=300",
        f"data.cache_dir={out}/cache",
    ]
    for s in settings:
        args += ["--set", s]
    return args


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


@pytest.mark.parametrize("tokenizer", ["char", "word", "bpe"])
@pytest.mark.parametrize("arch", ["gpt", "lstm", "gru", "rnn"])
def test_train_generate_eval(arch, tokenizer, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus, out, arch, tokenizer)) == 0
    assert (out / "best" / "model.safetensors").is_file()
    assert (out / "last" / "optimizer.safetensors").is_file()
    capsys.readouterr()

    assert (
        main(
            [
                "generate",
                str(out),
                "--prompt",
                "the cat",
                "--max-new-tokens",
                "8",
                "--seed",
                "1",
                "--json",
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert record["prompt"] == "the cat"
    assert 1 <= len(record["token_ids"]) <= 8

    assert main(["eval", str(out), "--data", str(corpus), "--json", "--max-batches", "3"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["loss"] > 0 and metrics["perplexity"] == pytest.approx(
        2.718281828 ** metrics["loss"], rel=1e-6
    )

    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == arch and info["config"]["tokenizer"]["kind"] == tokenizer


def test_generate_streams_text_and_samples_repeat_with_seed(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus, out, "gpt", "char")) == 0
    capsys.readouterr()
    runs = []
    for _ in range(2):
        assert (
            main(
                [
                    "generate",
                    str(out),
                    "--prompt",
                    "the",
                    "--max-new-tokens",
                    "20",
                    "--seed",
                    "7",
                    "--num-samples",
                    "2",
                ]
            )
            == 0
        )
        runs.append(capsys.readouterr().out)
    assert runs[0] == runs[1]
    assert runs[0].startswith("the") and runs[0].count("-" * 40) == 1


def test_resume_continues_with_saved_settings(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus, out, "lstm", "char", steps=6)) == 0
    # Resume with a longer budget only: the data, model and tokenizer come from the run itself.
    assert main(["train", "--resume", str(out), "--max-steps", "10"]) == 0
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert state["step"] == 10
    assert "corpus.txt" in json.loads((out / "last" / "config.json").read_text())["data"]["path"]


def test_new_run_refuses_to_replace_an_old_one(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus, out, "gru", "char", steps=4)) == 0
    capsys.readouterr()
    assert main(train_args(corpus, out, "gru", "char", steps=4)) == EXIT_USER_ERROR
    assert "--overwrite" in capsys.readouterr().err
    assert main(train_args(corpus, out, "gru", "char", steps=4) + ["--overwrite"]) == 0


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--data", "/no/such/file.txt"], "no such file"),
        (["train", "--set", "model.n_layers=3"], "n_layer"),
        (["train", "--set", "train.lr=fast"], "train.lr"),
        (["train", "--preset", "shakespeare-char-gtp"], "shakespeare-char-gpt"),
        (["train", "--max-time", "ten minutes"], "duration"),
        (["generate", "/no/such/checkpoint"], "checkpoint"),
        (["eval", "/no/such/checkpoint", "--data", "x.txt"], "checkpoint"),
        (["info", "/no/such/checkpoint"], "checkpoint"),
    ],
)
def test_user_errors_are_one_line(argv, expected, capsys):
    assert main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert expected in err


def test_bad_corpus_and_bad_prompt_are_one_line(corpus, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 20)
    for path, expected in ((empty, "empty"), (binary, "binary"), (latin1, "UTF-8")):
        assert main(["train", "--data", str(path), "--max-steps", "1"]) == EXIT_USER_ERROR
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and str(path.name) in err

    out = tmp_path / "run"
    assert main(train_args(corpus, out, "gpt", "char", steps=2)) == 0
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "Zebra 🦓"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Z" in err and "\n" not in err

    (out / "best" / "model.safetensors").write_bytes(b"not safetensors")
    assert main(["generate", str(out / "best")]) == EXIT_USER_ERROR
    assert "model.safetensors" in capsys.readouterr().err


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rnn2gpt", "train", "--data", str(tmp_path / "missing.txt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_USER_ERROR
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")


def test_help_on_every_command(capsys):
    for command in ("train", "generate", "eval", "info", "presets"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        assert "usage: rnn2gpt" in capsys.readouterr().out


def test_presets_lists_every_shipped_preset(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in (
        "shakespeare-char-gpt",
        "shakespeare-char-lstm",
        "shakespeare-char-gru",
        "shakespeare-char-rnn",
        "ptb-word-lstm",
        "ptb-word-gpt",
    ):
        assert name in out


def test_every_shipped_preset_loads_and_validates():
    from rnn2gpt.config import list_presets, load_preset

    names = list_presets()
    assert "ptb-word-lstm" in names
    for name in names:
        load_preset(name).validate()
    for name in ("ptb-word-lstm", "ptb-word-gpt"):
        assert load_preset(name).model.adaptive_cutoffs == (2000,)


def test_ctrl_c_saves_a_loadable_checkpoint(corpus, tmp_path):
    """A real SIGINT mid-run: the process saves last/, says how to resume and exits 130."""
    import os
    import signal
    import time

    from rnn2gpt.checkpoint import load_checkpoint

    out = tmp_path / "run"
    args = train_args(corpus, out, "gpt", "char", steps=10**6)
    args += ["--set", "train.log_interval=1", "--set", "train.eval_interval=100000"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnn2gpt", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") > 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "--resume" in stdout + stderr
    ckpt = load_checkpoint(out / "last")
    assert ckpt.trainer_state["step"] > 3
