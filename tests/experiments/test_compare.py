"""The architecture comparison: sizing, configurations, the report for all four architectures."""

from __future__ import annotations

import base64
import json
import re

import pytest

from rnn2gpt.cli import main
from rnn2gpt.config import ARCHITECTURES, ModelConfig
from rnn2gpt.errors import ConfigError
from rnn2gpt.experiments.compare import (
    TABLE_COLUMNS,
    CompareSettings,
    ModelRun,
    build_configs,
    count_model_parameters,
    run_comparison,
    size_to_target,
    split_overrides,
)
from rnn2gpt.models import build_model

TINY = (
    "model.n_layer=1",
    "model.n_head=2",
    "model.block_size=32",
    "model.dropout=0.0",
    "train.batch_size=4",
    "train.seq_len=16",
    "train.threads=1",
    "train.progress=false",
    "train.warmup_steps=2",
    "train.eval_batches=2",
)


@pytest.fixture
def tiny_overrides(tmp_path):
    return (*TINY, f"data.cache_dir={tmp_path / 'cache'}")


def test_parameter_count_on_meta_equals_the_real_model():
    config = ModelConfig(arch="lstm", vocab_size=30, n_layer=2, n_embd=24)
    assert count_model_parameters(config) == build_model(config).num_parameters()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sizing_lands_near_the_target(arch):
    base = ModelConfig(arch=arch, vocab_size=30, n_layer=1, n_head=2, block_size=32)
    sized = size_to_target(base, 20_000)
    params = count_model_parameters(sized)
    assert abs(params - 20_000) / 20_000 < 0.1
    assert sized.n_embd % 2 == 0 and sized.n_layer == 1  # width moves, depth stays
    # No other width of the same step is closer.
    for width in (sized.n_embd - 2, sized.n_embd + 2):
        other = count_model_parameters(ModelConfig(**{**sized.__dict__, "n_embd": width}))
        assert abs(other - 20_000) >= abs(params - 20_000)


def test_overrides_for_all_models_and_for_one():
    shared, per_model = split_overrides(
        ["train.lr=1e-3", "gpt:model.n_head=4", "generate.logit_bias=5:1.0"], ["rnn", "gpt"]
    )
    assert shared == ["train.lr=1e-3", "generate.logit_bias=5:1.0"]
    assert per_model == {"rnn": [], "gpt": ["model.n_head=4"]}
    with pytest.raises(ConfigError, match="not compared"):
        split_overrides(["lstm:model.n_layer=1"], ["rnn", "gpt"])


def test_configs_share_the_budget_and_match_sizes(corpus, tiny_overrides):
    settings = CompareSettings(
        data=str(corpus),
        budget_tokens=2000,
        overrides=(*tiny_overrides, "lstm:model.n_embd=12", "gru:n_embd=14"),
        target_params=5000,
        seed=3,
    )
    configs, target, vocab = build_configs(settings)
    assert list(configs) == list(ARCHITECTURES) and target == 5000 and vocab > 20
    for name, config in configs.items():
        assert config.model.arch == name and config.model.vocab_size == vocab
        assert config.train.max_tokens == 2000 and config.train.max_time == 0.0
        assert config.train.seed == 3 and config.data.path == str(corpus)
        assert config.train.eval_interval == 3  # ~10 evaluations of the 31 steps
    # Sizes given by the user are kept (a bare key works too).
    assert configs["lstm"].model.n_embd == 12 and configs["gru"].model.n_embd == 14
    for name in ("rnn", "gpt"):
        assert abs(count_model_parameters(configs[name].model) - 5000) < 1000
    # The presets still differ where the user said nothing (learning rates).
    assert configs["rnn"].train.lr != configs["gru"].train.lr


def test_time_budgets_evaluate_every_tenth_of_the_budget(corpus, tiny_overrides):
    settings = CompareSettings(data=str(corpus), budget_seconds=300, overrides=tiny_overrides)
    configs, _, _ = build_configs(settings)
    for config in configs.values():
        assert config.train.max_time == 300 and config.train.eval_interval_seconds == 30
        assert config.train.eval_interval >= 10**9  # evenly spaced in time, not in steps
    own = CompareSettings(
        data=str(corpus), budget_seconds=300, overrides=(*tiny_overrides, "train.eval_interval=7")
    )
    for config in build_configs(own)[0].values():
        assert config.train.eval_interval == 7 and config.train.eval_interval_seconds == 0


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="unknown model"):
        CompareSettings(models=("rnn", "transformer")).validate()
    with pytest.raises(ConfigError, match="one budget"):
        CompareSettings(budget_seconds=10, budget_tokens=10).validate()


def test_compare_command_reports_all_four_architectures(tmp_path, corpus, tiny_overrides, capsys):
    out = tmp_path / "cmp"
    args = [
        "-q",
        "compare",
        "--data",
        str(corpus),
        "--budget-tokens",
        "640",
        "--out",
        str(out),
        "--target-params",
        "3000",
        "--in-process",
        "--gen-tokens",
        "12",
        "--prompt",
        "the ",
        "--seed",
        "1",
    ]
    for item in tiny_overrides:
        args += ["--set", item]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert all(column in printed for column in TABLE_COLUMNS)

    md = (out / "report.md").read_text(encoding="utf-8")
    header = "| " + " | ".join(TABLE_COLUMNS) + " |"
    assert header in md
    for arch in ARCHITECTURES:
        row = re.search(rf"^\| {arch} \|(.*)\|$", md, re.MULTILINE)
        assert row is not None, arch
        cells = [c.strip() for c in row.group(1).split("|")]
        assert len(cells) == len(TABLE_COLUMNS) - 1
        assert cells[-1] == "n/a"  # memory is only measured in worker processes
        assert all(c and c != "n/a" for c in cells[:-1])
        assert (out / "runs" / arch / "metrics.jsonl").is_file()
        assert f"### {arch}\n\n```text\nthe " in md  # a sample from the same prompt

    page = (out / "report.html").read_text(encoding="utf-8")
    png = (out / "val_loss.png").read_bytes()
    assert base64.b64encode(png).decode("ascii") in page
    data = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    runs = [ModelRun.from_dict(r) for r in data["runs"]]
    assert [r.name for r in runs] == list(ARCHITECTURES)
    assert all(r.train_tokens >= 640 and r.gen_tokens == 12 for r in runs)
    assert all(r.best_val_loss is not None and r.val_bits_per_char > 0 for r in runs)

    # Gradient flow of every model on the validation text, on one plot and in a table.
    for run in runs:
        flow = run.gradient_flow
        assert flow is not None and flow["windows"] == 32
        assert flow["distances"] == list(range(len(flow["norms"]))) and len(flow["norms"]) > 8
        assert all(n >= 0 for n in flow["norms"]) and flow["norms"][0] > 0
        assert re.search(rf"^\| {run.name} \| \d\.\d\de[-+]\d+ \|", md, re.MULTILINE)
    assert "## Gradient flow through time" in md
    flow_png = (out / "gradient_flow.png").read_bytes()
    assert base64.b64encode(flow_png).decode("ascii") in page

    # --report-only rebuilds the report (measuring what comparison.json lacks) without training.
    for item in data["runs"]:
        item.pop("gradient_flow")
    (out / "comparison.json").write_text(json.dumps(data), encoding="utf-8")
    (out / "report.md").unlink()
    (out / "gradient_flow.png").unlink()
    mtimes = {
        arch: (out / "runs" / arch / "metrics.jsonl").stat().st_mtime for arch in runs_of(data)
    }
    capsys.readouterr()
    assert main(["-q", "compare", "--out", str(out), "--report-only", "--retime"]) == 0
    printed = capsys.readouterr().out
    assert all(column in printed for column in TABLE_COLUMNS), printed
    again = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    for before, after in zip(runs, again["runs"]):
        assert after["gradient_flow"] == before.gradient_flow  # same windows, same numbers
        assert after["sample"] == before.sample  # same seed, same text
        assert after["gen_seconds"] != before.gen_seconds and after["gen_tokens"] == 12
        assert after["gen_tokens_per_sec"] == pytest.approx(12 / after["gen_seconds"])
    assert "## Gradient flow through time" in (out / "report.md").read_text(encoding="utf-8")
    assert (out / "gradient_flow.png").is_file()
    for arch, mtime in mtimes.items():  # nothing was trained again
        assert (out / "runs" / arch / "metrics.jsonl").stat().st_mtime == mtime


def runs_of(data: dict) -> list[str]:
    return [r["name"] for r in data["runs"]]


def test_report_only_needs_a_finished_comparison(tmp_path, capsys):
    assert main(["compare", "--out", str(tmp_path / "none"), "--report-only"]) == 2
    err = capsys.readouterr().err
    assert "comparison.json does not exist" in err and "Traceback" not in err
    assert main(["compare", "--out", str(tmp_path / "none"), "--retime"]) == 2
    assert "add --report-only" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "comparison.json").write_text("{not json", encoding="utf-8")
    assert main(["compare", "--out", str(broken), "--report-only"]) == 2
    err = capsys.readouterr().err
    assert "is not a comparison written by" in err and "Traceback" not in err


def test_worker_process_measures_peak_memory(tmp_path, corpus, tiny_overrides):
    settings = CompareSettings(
        data=str(corpus),
        models=("rnn",),
        budget_tokens=320,
        overrides=tiny_overrides,
        target_params=2000,
        gen_tokens=8,
    )
    comparison = run_comparison(settings, tmp_path / "cmp")
    (run,) = comparison.runs
    assert run.peak_rss_mib is not None and run.base_rss_mib is not None
    assert run.peak_rss_mib >= run.base_rss_mib > 10  # a real process: tens of MiB at least
    assert run.gen_tokens == 8 and run.sample
    assert re.search(
        r"\| rnn \|.*\| \d[\d,]* \(\+\d[\d,]*\) \|",
        (tmp_path / "cmp" / "report.md").read_text(encoding="utf-8"),
    )


def test_user_errors_are_one_line(tmp_path, corpus, capsys):
    assert (
        main(["compare", "--data", str(corpus), "--models", "rnn,foo", "--out", str(tmp_path)]) == 2
    )
    assert "unknown model(s) foo" in capsys.readouterr().err
