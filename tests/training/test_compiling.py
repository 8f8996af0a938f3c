"""``train.compile`` = auto | true | false: the setting, auto's decision and its message, the
in-run trial, and a real compiled run that computes the reference losses."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from rnn2gpt.config import RunConfig, TrainConfig
from rnn2gpt.errors import ConfigError
from rnn2gpt.training import compiling, train
from rnn2gpt.training.compiling import (
    AUTO_MIN_SECONDS,
    SETTLE_STEPS,
    TRIAL_STEPS,
    WARMUP_STEPS,
    StepCompiler,
    compile_choice,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
_spec = importlib.util.spec_from_file_location("refs", FIXTURES / "make_reference_losses.py")
refs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(refs)

# ----------------------------------------------------------------------------- the setting


def test_auto_is_the_default_and_old_bools_still_read():
    assert TrainConfig().compile == "auto"
    old = RunConfig.from_dict({"train": {"compile": False}}).train.compile
    assert old == "false"  # a checkpoint written when the setting was a bool
    assert RunConfig.from_dict({"train": {"compile": True}}).train.compile == "true"


@pytest.mark.parametrize(("given", "read"), [("yes", "true"), ("off", "false"), ("auto", "auto")])
def test_overrides_read_bool_words(given, read):
    assert RunConfig().with_overrides([f"train.compile={given}"]).train.compile == read


def test_an_unknown_value_is_one_clear_error():
    config = RunConfig().with_overrides(["train.compile=sometimes"])
    with pytest.raises(ConfigError, match=r"train.compile.*auto.*true.*false"):
        config.validate()


def test_old_release_checkpoints_still_load():
    from rnn2gpt.checkpoint import load_checkpoint

    fixture = FIXTURES / "release-0.1.0" / "gpt" / "best"
    assert json.loads((fixture / "config.json").read_text())["train"]["compile"] is False
    assert load_checkpoint(fixture).config.train.compile == "false"


# ----------------------------------------------------------------------------- the decision


def model(arch: str, **extra) -> nn.Module:
    from rnn2gpt.config import ModelConfig
    from rnn2gpt.models import build_model

    config = dict(arch=arch, n_layer=1, n_embd=16, n_head=2, block_size=8, vocab_size=11)
    return build_model(ModelConfig(**{**config, **extra}))


def test_explicit_choices_are_kept():
    assert compile_choice("true", model("lstm"), 1.0).mode == "compiled"
    assert compile_choice("false", model("gpt"), 1e6).mode == "eager"


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("cell", ["fused", "explicit"])
def test_auto_leaves_recurrent_models_eager(arch, cell):
    choice = compile_choice("auto", model(arch, cell=cell), 1e6)
    assert choice.mode == "eager" and "recurrent kernels" in choice.reason


def test_auto_leaves_short_runs_eager():
    short = compile_choice("auto", model("gpt"), AUTO_MIN_SECONDS / 2)
    assert short.mode == "eager" and "10 min 00 s of training planned" in short.reason


def test_auto_needs_a_cpp_compiler(monkeypatch):
    monkeypatch.setattr(compiling, "cpp_compiler", lambda: None)
    choice = compile_choice("auto", model("gpt"), AUTO_MIN_SECONDS)
    assert choice.mode == "eager" and "no C++ compiler" in choice.reason


def test_auto_tries_long_runs_of_models_without_recurrent_layers(monkeypatch):
    monkeypatch.setattr(compiling, "cpp_compiler", lambda: "/usr/bin/g++")
    assert compile_choice("auto", model("gpt"), AUTO_MIN_SECONDS).mode == "trial"
    transformer = model("transformer")
    assert compile_choice("auto", transformer, AUTO_MIN_SECONDS).mode == "trial"
    assert compile_choice("auto", model("seq2seq-rnn"), AUTO_MIN_SECONDS).mode == "eager"


# ----------------------------------------------------------------------------- the trial


class Compiled(nn.Module):
    """What the patched ``torch.compile`` returns: the model, marked as compiled."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner


def run_trial(monkeypatch, eager_ms: float, compiled_ms: float, agree=lambda flag: flag):
    monkeypatch.setattr(compiling.torch, "compile", Compiled)
    events = []
    model = nn.Linear(2, 2)
    compiler = StepCompiler(
        model,
        compiling.CompileChoice("trial", "auto"),
        agree=agree,
        event=lambda kind, **values: events.append((kind, values)),
    )
    modules = []
    while compiler.trial_steps_left > 0:
        modules.append(compiler.module)
        compiled = isinstance(compiler.module, Compiled)
        first_compiled = compiled and not isinstance(modules[-2], Compiled)
        seconds = (compiled_ms if compiled else eager_ms) / 1e3 + (3.0 if first_compiled else 0.0)
        compiler.after_step(seconds)
    return compiler, modules, events


def test_the_trial_keeps_a_faster_compiled_model(monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="rnn2gpt.training.compiling"):
        compiler, modules, events = run_trial(monkeypatch, eager_ms=10.0, compiled_ms=5.0)
    eager_steps = WARMUP_STEPS + TRIAL_STEPS
    assert all(not isinstance(m, Compiled) for m in modules[:eager_steps])
    assert all(isinstance(m, Compiled) for m in modules[eager_steps:])
    assert len(modules) == eager_steps + 1 + SETTLE_STEPS + TRIAL_STEPS
    assert isinstance(compiler.module, Compiled) and compiler.phase == "compiled"
    [(kind, values)] = events
    assert kind == "compile" and values["kept"] is True
    assert values["speedup"] == pytest.approx(2.0)
    assert values["seconds"] == pytest.approx(
        3.005 - 0.010
    )  # first compiled step less an eager one
    assert "compile: on (auto: compiled steps measured 2.00x" in caplog.text
    assert "compiled the model in 3.0 s (Inductor cache" in caplog.text


def test_the_trial_goes_back_to_eager_when_compiling_does_not_pay(monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="rnn2gpt.training.compiling"):
        compiler, _, events = run_trial(monkeypatch, eager_ms=10.0, compiled_ms=9.9)
    assert not isinstance(compiler.module, Compiled) and compiler.phase == "eager"
    assert events[0][1]["kept"] is False
    assert "compile: off (auto: compiled steps measured 1.01x" in caplog.text


def test_every_rank_must_measure_the_gain(monkeypatch):
    compiler, _, events = run_trial(monkeypatch, 10.0, 5.0, agree=lambda flag: False)
    assert compiler.phase == "eager" and events[0][1]["kept"] is False


def test_an_explicit_compile_reports_its_time(monkeypatch):
    monkeypatch.setattr(compiling.torch, "compile", Compiled)
    events = []
    compiler = StepCompiler(
        nn.Linear(2, 2),
        compiling.CompileChoice("compiled", "on (as asked)"),
        event=lambda kind, **values: events.append((kind, values)),
    )
    assert isinstance(compiler.module, Compiled) and compiler.trial_steps_left == 0
    compiler.after_step(4.0)
    compiler.after_step(0.01)
    assert events == [("compile", {"seconds": 4.0, "kept": True})]


def test_the_trainer_runs_the_trial_and_logs_it(make_run_config, tmp_path, monkeypatch, caplog):
    """The trial inside a real run (the compile patched to a marker: a real one is tested
    below); the losses are those of an eager run, and the decision is in the log and metrics."""
    calls = []

    def fake_compile(module):
        calls.append(module)
        return module  # the same module: the run's numbers cannot change

    monkeypatch.setattr(compiling.torch, "compile", fake_compile)
    monkeypatch.setattr(compiling, "AUTO_MIN_SECONDS", 0.0)
    monkeypatch.setattr(compiling, "cpp_compiler", lambda: "/usr/bin/g++")
    steps = WARMUP_STEPS + 2 * TRIAL_STEPS + 1 + SETTLE_STEPS + 2
    config = make_run_config("gpt", max_steps=steps, compile="auto", eval_interval=1000)
    with caplog.at_level(logging.INFO):
        train(config, tmp_path / "trial")
    assert len(calls) == 1
    assert "compile: auto: will time" in caplog.text
    assert "compile trial: compiling the model" in caplog.text
    assert "compile: o" in caplog.text.split("compile trial:")[1]  # the decision, either way
    events = [json.loads(line) for line in (tmp_path / "trial" / "metrics.jsonl").open()]
    [event] = [e for e in events if e["event"] == "compile"]
    assert event["speedup"] > 0 and isinstance(event["kept"], bool)
    eager = make_run_config("gpt", max_steps=steps, compile="false", eval_interval=1000)
    train(eager, tmp_path / "eager")
    losses = [
        [
            e["loss"]
            for e in map(json.loads, (tmp_path / run / "metrics.jsonl").open())
            if e["event"] == "train"
        ]
        for run in ("trial", "eager")
    ]
    assert losses[0] == losses[1]


# ----------------------------------------------------------------------------- a real compile


def test_a_compiled_run_computes_the_reference_losses(tmp_path):
    """torch.compile is a speed change: the first 20 losses of the reference GPT run must stay
    within rtol 1e-4 (the reference test checks the eager run against the same numbers)."""
    expected = json.loads((FIXTURES / "reference_losses.json").read_text())["gpt"]
    corpus = tmp_path / "text.txt"
    corpus.write_text(refs.TEXT)
    config = refs.config_for("gpt", corpus, tmp_path / "cache").with_overrides(
        ["train.compile=true"]
    )
    torch._dynamo.reset()
    train(config, tmp_path / "run")
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [e["event"] for e in events].count("compile") == 1
    assert refs.losses(tmp_path / "run") == pytest.approx(expected, rel=1e-4)
