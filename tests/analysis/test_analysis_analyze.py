"""`rnn2gpt analyze`: every requested figure and view is written, and only those that apply."""

from __future__ import annotations

import base64
import json

from rnn2gpt.cli import main

PNG = b"\x89PNG\r\n\x1a\n"
SMALL = [
    "--seq-len",
    "12",
    "--batches",
    "1",
    "--batch-size",
    "2",
    "--samples",
    "2",
    "--max-new-tokens",
    "16",
    "--max-tokens",
    "12",
]


def test_analyze_gpt_writes_every_view(tmp_path, make_checkpoint, corpus, capsys):
    ckpt = make_checkpoint("gpt")
    out = tmp_path / "analysis"
    code = main(
        [
            "analyze",
            str(ckpt),
            "--text",
            str(corpus),
            "--out",
            str(out),
            "--train-data",
            str(corpus),
            *SMALL,
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "diversity: distinct-1" in printed and "copied 4-grams" in printed
    assert "note: gates: the model recorded no gate activations" in printed

    for name in ("gradient_flow.png", "attention_layer0.png", "attention_layer1.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    assert not (out / "gates.png").exists()  # a GPT has no gates
    for name in ("tokens.html", "tokens.md", "tokens.csv", "analysis.md", "analysis.html"):
        assert (out / name).stat().st_size > 0, name
    page = (out / "analysis.html").read_text(encoding="utf-8")
    assert base64.b64encode((out / "gradient_flow.png").read_bytes()).decode() in page
    assert 'class="tok"' in page  # the coloured per-token view is embedded too

    numbers = json.loads((out / "analysis.json").read_text(encoding="utf-8"))
    assert len(numbers["gradient_flow"]["norms"]) == 12
    assert numbers["attention"]["layer1"] == {"heads": 2, "tokens": 12}
    diversity = numbers["diversity"]
    assert diversity["samples"] == 2 and 0 <= diversity["copied_fraction"] <= 1
    assert numbers["tokens"]["scored"] > 0


def test_analyze_lstm_gates_only(tmp_path, make_checkpoint, corpus):
    ckpt = make_checkpoint("lstm")
    out = tmp_path / "lstm"
    assert (
        main(
            [
                "analyze",
                str(ckpt),
                "--prompt",
                "the cat sat on the mat",
                "--gates",
                "--gradient-flow",
                "--out",
                str(out),
                *SMALL,
            ]
        )
        == 0
    )
    assert (out / "gates.png").read_bytes()[:8] == PNG
    assert (out / "gradient_flow.png").read_bytes()[:8] == PNG
    assert not list(out.glob("attention_*.png")) and not (out / "tokens.html").exists()
    numbers = json.loads((out / "analysis.json").read_text(encoding="utf-8"))
    assert set(numbers) == {"gates", "gradient_flow"}
    assert "layer0.forget_gate" in numbers["gates"]


def test_analyze_without_text_names_the_options(tmp_path, make_checkpoint, capsys):
    ckpt = make_checkpoint("rnn", data={"path": str(tmp_path / "gone.txt")})
    assert main(["analyze", str(ckpt), "--tokens", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no text to analyse") and "--text FILE or --prompt TEXT" in err
