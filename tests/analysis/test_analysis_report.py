"""Report rendering (Markdown + self-contained HTML) and the no-matplotlib path."""

from __future__ import annotations

import base64
import sys

from rnn2gpt.analysis import plots
from rnn2gpt.analysis.report import Report
from rnn2gpt.experiments.compare import Comparison, ModelRun
from rnn2gpt.experiments.compare.report import comparison_report

PNG = b"\x89PNG\r\n\x1a\n"


def _run(name: str, **values) -> ModelRun:
    base = dict(
        name=name,
        arch=name,
        preset=f"shakespeare-char-{name}",
        parameters=1234,
        n_layer=1,
        n_embd=16,
        n_hidden=0,
        steps=10,
        train_tokens=640,
        train_seconds=1.5,
        tokens_per_sec=5000.0,
        best_val_loss=2.5,
        val_perplexity=12.18,
        val_bits_per_char=3.6,
        gen_tokens=20,
        gen_seconds=0.01,
        gen_tokens_per_sec=2000.0,
        sample="the cat",
        run_dir="runs/x",
    )
    base.update(values)
    return ModelRun(**base)


def test_markdown_and_self_contained_html(tmp_path):
    png = plots.plot_gradient_flow({"m": ([0, 1, 2], [1.0, 0.5, 0.25])}, tmp_path / "img" / "g.png")
    assert png is not None and png.read_bytes()[:8] == PNG
    report = (
        Report("Title <1>")
        .paragraph("a < b & c")
        .table(["name", "value"], [["x|y", 1.5], ["z", None]])
        .image(png, "a caption")
        .image(None, "skipped")
        .code("```inner```")
        .html("<b>bold</b>", markdown="plain stand-in")
    )
    md_path, html_path = report.write(tmp_path / "out", "doc")
    md = md_path.read_text(encoding="utf-8")
    assert md.startswith("# Title <1>")
    assert "| x\\|y | 1.5 |" in md and "| z | n/a |" in md  # pipes escaped, None shown as n/a
    assert "](../img/g.png)" in md  # relative to the report's folder
    assert "plain stand-in" in md and "````text" in md  # fence longer than the code's own

    page = html_path.read_text(encoding="utf-8")
    assert "<title>Title &lt;1&gt;</title>" in page and "a &lt; b &amp; c" in page
    # The image travels inside the page: no reference to the file, its bytes in base64.
    assert "g.png" not in page
    assert base64.b64encode(png.read_bytes()).decode("ascii") in page
    assert '<td class="num">1.5</td>' in page and "<b>bold</b>" in page
    assert page.count("<figure>") == 1


def test_without_matplotlib_plots_are_skipped_and_reports_say_why(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # the import now fails
    assert not plots.matplotlib_available()
    assert plots.plot_gradient_flow({"m": ([0, 1], [1.0, 0.5])}, tmp_path / "g.png") is None
    events = [{"event": "eval", "step": 1, "tokens": 64, "elapsed": 0.5, "val_loss": 2.0}]
    assert plots.plot_validation_curves({"m": events}, tmp_path / "v.png") is None
    assert not list(tmp_path.iterdir())

    comparison = Comparison(
        runs=[_run("rnn"), _run("gpt", peak_rss_mib=400.0, base_rss_mib=300.0)],
        data="corpus.txt",
        tokenizer="char",
        vocab_size=29,
        budget="640 training tokens per model",
        target_params=1200,
        prompt="",
        seed=0,
    )
    md_path, html_path = comparison_report(comparison, None).write(tmp_path, "report")
    md = md_path.read_text(encoding="utf-8")
    assert "matplotlib is not installed" in md and "pip install" in md
    assert "| gpt | 1,234 | 5,000 | 2.5000 | 12.18 | 3.600 | 2,000 | 400 (+100) |" in md
    assert "| rnn |" in md and "n/a |" in md  # memory not measured in-process


def test_validation_curves_from_events(tmp_path):
    events = [
        {"event": "train", "step": 1, "loss": 3.0},
        {"event": "eval", "step": 2, "tokens": 128, "elapsed": 1.0, "val_loss": 2.5},
        {"event": "eval", "step": 1, "tokens": 64, "elapsed": 0.5, "val_loss": 2.9},
    ]
    assert plots.validation_series(events) == [(64, 0.5, 2.9), (128, 1.0, 2.5)]
    png = plots.plot_validation_curves({"a": events, "b": events[1:]}, tmp_path / "v.png")
    assert png is not None and png.read_bytes()[:8] == PNG
    assert plots.plot_validation_curves({"a": events[:1]}, tmp_path / "none.png") is None
