"""The trainer: every architecture and tokenizer learns, resume is exact, failures are safe."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from xml.etree import ElementTree

import numpy as np
import pytest
import torch

import rnn2gpt
import rnn2gpt.evaluation
import rnn2gpt.models
from rnn2gpt.checkpoint import load_checkpoint
from rnn2gpt.errors import CheckpointError, DataError, TrainingError
from rnn2gpt.training import train
from rnn2gpt.training.signals import sigint_flag


def events(run_dir, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def losses(run_dir) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events(run_dir, "train")}


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru", "gpt"])
def test_every_architecture_learns(tmp_path, make_run_config, arch, learning_seed):
    config = make_run_config(arch, max_steps=30, lr=3e-2, seed=7 + learning_seed)
    result = train(config, tmp_path / "run")
    vals = [e["val_loss"] for e in events(tmp_path / "run", "eval")]
    assert [e["step"] for e in events(tmp_path / "run", "eval")] == [10, 20, 30]
    assert vals[-1] < vals[0]
    vocab = load_checkpoint(tmp_path / "run" / "best").tokenizer.vocab_size
    # Clearly below a uniform guess: 30 steps reach 2.65-2.92 nats here (5 seeds), about the
    # characters' unigram entropy, against log(V) = 3.37.
    assert result.best_val_loss < math.log(vocab) - 0.3
    assert result.steps == 30 and result.tokens == 30 * 4 * 16
    assert not result.interrupted and result.stop_reason == "max_steps"
    assert set(result.final_metrics) >= {
        "train_loss",
        "val_loss",
        "val_perplexity",
        "val_bits_per_char",
    }
    assert result.tokens_per_sec > 0


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_word_and_bpe_tokenizers(tmp_path, make_run_config, kind, learning_seed):
    config = make_run_config(
        "gpt", kind, max_steps=20, lr=2e-2, seq_len=8, eval_interval=5, seed=7 + learning_seed
    )
    result = train(config, tmp_path / "run")
    vals = [e["val_loss"] for e in events(tmp_path / "run", "eval")]
    assert vals[-1] < vals[0]
    best = load_checkpoint(tmp_path / "run" / "best")
    assert best.tokenizer.kind == kind
    assert best.config.model.vocab_size == best.tokenizer.vocab_size
    # Bits per character are per character, so they are below bits per token for multi-char tokens.
    assert result.final_metrics["val_bits_per_char"] < result.final_metrics["val_bits_per_token"]


def test_an_adaptive_softmax_word_model_trains_loads_and_generates(
    tmp_path, make_run_config, corpus, learning_seed
):
    config = make_run_config(
        "lstm",
        "word",
        model={"adaptive_cutoffs": (8, 20)},
        max_steps=20,
        lr=2e-2,
        seq_len=8,
        eval_interval=5,
        seed=7 + learning_seed,
    )
    train(config, tmp_path / "run")
    vals = [e["val_loss"] for e in events(tmp_path / "run", "eval")]
    assert vals[-1] < vals[0]
    best = load_checkpoint(tmp_path / "run" / "best")
    assert best.config.model.adaptive_cutoffs == (8, 20)
    assert best.model.computes_nll

    # Evaluation (the targets path) equals the cross-entropy of the full log-probabilities.
    ids = np.array(best.tokenizer.encode(corpus.read_text()[:600]), dtype=np.int64)
    scored = rnn2gpt.evaluation.evaluate_lm(best.model, ids, batch_size=1, seq_len=8, stream=True)
    n = scored["tokens"]  # one stream, state carried: one forward over the same tokens
    x, y = torch.from_numpy(ids[:n]), torch.from_numpy(ids[1 : n + 1])
    with torch.inference_mode():
        log_probs, _ = best.model(x[None])
    by_hand = torch.nn.functional.cross_entropy(log_probs[0], y).item()
    assert scored["loss"] == pytest.approx(by_hand, rel=1e-4)

    text = rnn2gpt.load(tmp_path / "run" / "best").generate("the cat", max_new_tokens=5, seed=1)
    new_ids = best.tokenizer.encode(text)  # five words it knows
    assert len(new_ids) == 5 and best.tokenizer.unk_id not in new_ids


def test_outputs_of_a_run(tmp_path, make_run_config, capfd):
    from rnn2gpt import api

    config = make_run_config("gpt", max_steps=12, eval_interval=6, log_interval=4, progress=True)
    result = api.train(config=config, out=tmp_path / "run")  # the API also draws the loss curve
    bar = capfd.readouterr().err
    assert "12/12" in bar and "loss=" in bar and "tok/s=" in bar  # the progress bar, on stderr
    run = tmp_path / "run"
    curve = ElementTree.parse(run / "loss_curve.svg").getroot()
    assert curve.tag == "{http://www.w3.org/2000/svg}svg"
    assert len(curve.findall(".//{*}circle")) == 2, "a point per evaluation (steps 6 and 12)"
    assert [e["step"] for e in events(run, "train")] == [4, 8, 12]
    first = events(run, "train")[0]
    assert set(first) >= {"step", "tokens", "elapsed", "lr", "loss", "tokens_per_sec"}
    assert events(run, "end")[0]["reason"] == "max_steps"
    last = load_checkpoint(run / "last")
    assert last.trainer_state["step"] == 12 and last.has_optimizer_state
    assert last.trainer_state["best_val_loss"] == result.best_val_loss


def _resume_matches_uninterrupted(tmp_path, make_run_config, stop_after, arch: str) -> None:
    # Dropout on (the RNG must be restored); the LSTM stream wraps around within the run.
    config = make_run_config(
        arch, model={"dropout": 0.1}, max_steps=24, eval_interval=8, batch_size=8, seq_len=16
    )
    full = train(config, tmp_path / "full")

    stopped = train(config, tmp_path / "split", interrupt=stop_after(10))
    assert stopped.interrupted and stopped.steps == 10
    assert load_checkpoint(tmp_path / "split" / "last").trainer_state["step"] == 10
    assert events(tmp_path / "split", "interrupt")
    resumed = train(config, tmp_path / "split", resume=True)
    assert resumed.steps == 24 and not resumed.interrupted

    a, b = losses(tmp_path / "full"), losses(tmp_path / "split")
    assert sorted(a) == sorted(b) == list(range(1, 25))
    for step in range(11, 25):
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    val_a = [e["val_loss"] for e in events(tmp_path / "full", "eval")]
    val_b = [e["val_loss"] for e in events(tmp_path / "split", "eval")]
    assert val_b == pytest.approx(val_a, abs=1e-6)
    assert resumed.best_val_loss == pytest.approx(full.best_val_loss, abs=1e-6)


def test_resume_equals_uninterrupted_gpt(tmp_path, make_run_config, stop_after):
    _resume_matches_uninterrupted(tmp_path, make_run_config, stop_after, "gpt")


def test_resume_equals_uninterrupted_lstm(tmp_path, make_run_config, stop_after):
    _resume_matches_uninterrupted(tmp_path, make_run_config, stop_after, "lstm")


def test_resume_without_a_checkpoint(tmp_path, make_run_config):
    with pytest.raises(CheckpointError, match="without --resume"):
        train(make_run_config(), tmp_path / "nothing", resume=True)


def test_nan_loss_stops_and_keeps_best(tmp_path, make_run_config, monkeypatch):
    import rnn2gpt.training.setup as setup_module

    real_build = rnn2gpt.models.build_model
    calls = {"n": 0}

    def poisoned_build(config):
        model = real_build(config)
        forward = model.forward

        def forward_with_nan(tokens, state=None, **kwargs):
            logits, state = forward(tokens, state, **kwargs)
            if model.training:
                calls["n"] += 1
                if calls["n"] >= 7:  # from training step 7 on
                    logits = logits * float("nan")
            return logits, state

        model.forward = forward_with_nan
        return model

    monkeypatch.setattr(setup_module, "build_model", poisoned_build)
    config = make_run_config("gpt", max_steps=30, eval_interval=5, log_interval=4)
    with pytest.raises(TrainingError, match="at step 7.*Lower the learning rate"):
        train(config, tmp_path / "run")
    for name in ("best", "last"):
        kept = load_checkpoint(tmp_path / "run" / name)
        assert kept.trainer_state["step"] == 5  # nothing after the NaN was saved
        assert all(torch.isfinite(p).all() for p in kept.model.parameters())


def test_early_stopping(tmp_path, make_run_config, monkeypatch):
    scores = iter([2.0, 2.5, 2.6, 2.7, 2.8])

    def fake_evaluate(model, ids, **kwargs):
        return rnn2gpt.evaluation.lm_metrics(next(scores), 10, kwargs.get("chars_per_token"))

    import rnn2gpt.tasks.language_modeling as lm_task

    monkeypatch.setattr(lm_task, "evaluate_lm", fake_evaluate)
    config = make_run_config("gpt", max_steps=50, eval_interval=2, patience=2)
    result = train(config, tmp_path / "run")
    assert result.stop_reason == "early_stopping" and result.steps == 6
    assert result.best_val_loss == 2.0
    assert load_checkpoint(tmp_path / "run" / "best").trainer_state["step"] == 2


def test_evaluations_every_n_seconds_of_training(tmp_path, make_run_config, monkeypatch):
    import types

    import rnn2gpt.training.trainer as trainer_module

    clock = [0.0]

    def fake_perf_counter() -> float:  # every reading of the clock is 1 s later
        clock[0] += 1.0
        return clock[0]

    monkeypatch.setattr(
        trainer_module, "time", types.SimpleNamespace(perf_counter=fake_perf_counter)
    )
    config = make_run_config("gpt", max_steps=40, eval_interval=10**6, eval_interval_seconds=9.5)
    train(config, tmp_path / "run")
    evals = events(tmp_path / "run", "eval")
    steps = [e["step"] for e in evals]
    assert len(steps) >= 3 and steps == sorted(set(steps))
    gaps = [b["elapsed"] - a["elapsed"] for a, b in zip(evals, evals[1:])]
    # Each gap holds at least 9.5 s of training and less than two intervals: evenly spaced.
    assert all(9.5 <= gap < 19.0 for gap in gaps[:-1]), gaps
    assert len({b - a for a, b in zip(steps[:-2], steps[1:-1])}) == 1, steps
    assert steps[-1] == 40  # and the run's final evaluation


def test_token_budget_accumulation_and_test_set(tmp_path, make_run_config, corpus):
    test_file = tmp_path / "test.txt"
    test_file.write_text("the cat sat on the mat.\nthe dog ran after the cat.\n" * 3)
    config = make_run_config(
        "lstm", max_steps=0, max_tokens=500, grad_accum=2, data={"test_path": str(test_file)}
    )
    result = train(config, tmp_path / "run")
    assert result.steps == 4  # 128 tokens per step (2 x 4 x 16): 4 steps reach 500
    assert result.stop_reason == "max_tokens"
    assert result.final_metrics["test_loss"] > 0
    (test,) = events(tmp_path / "run", "test")
    # Written after the test evaluation, not stamped with the time before the final one.
    assert test["elapsed"] >= events(tmp_path / "run", "eval")[-1]["elapsed"]
    assert test["elapsed"] == pytest.approx(result.elapsed, abs=1e-3)


def test_fine_tune_from_a_checkpoint(tmp_path, make_run_config, learning_seed):
    base = make_run_config("gpt", max_steps=100, warmup_steps=10, seed=7 + learning_seed)
    train(base, tmp_path / "base")
    tuned = make_run_config("gpt", model={"n_embd": 32}, max_steps=3, lr=1e-3)
    train(tuned, tmp_path / "tuned", init_from=str(tmp_path / "base" / "best"))
    # Same shape as the source (its n_embd, not the 32 asked), starting from its weights.
    assert load_checkpoint(tmp_path / "tuned" / "last").config.model.n_embd == 16
    # It starts where the base ended (100 steps take this model 0.6-1.2 nats below its start).
    assert losses(tmp_path / "tuned")[1] < losses(tmp_path / "base")[1] - 0.3


def test_first_ctrl_c_sets_the_flag_second_aborts():
    previous = signal.getsignal(signal.SIGINT)
    with sigint_flag() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.is_set()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous


def test_short_validation_text_fails_before_training(tmp_path, make_run_config):
    val = tmp_path / "val.txt"
    val.write_text("the cat")  # 7 characters: not one window of seq_len + 1 = 17
    config = make_run_config(data={"val_path": str(val)})
    with pytest.raises(DataError, match="validation text"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_bf16_autocast_run_and_threads_restored(tmp_path, make_run_config):
    threads = torch.get_num_threads()
    result = train(
        make_run_config("gru", precision="bf16", max_steps=6, eval_interval=3), tmp_path / "r"
    )
    assert math.isfinite(result.final_metrics["val_loss"])
    assert torch.get_num_threads() == threads  # train.threads=1 was undone


def test_loss_curve_is_skipped_without_matplotlib(tmp_path, monkeypatch):
    from rnn2gpt.analysis import plot_loss_curve

    run_events = [
        {"event": "train", "step": 1, "loss": 2.0},
        {"event": "eval", "step": 1, "val_loss": 2.1},
    ]
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now fails
    assert plot_loss_curve(run_events, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_an_error_in_the_middle_of_a_run_saves_last_first(tmp_path, make_run_config, monkeypatch):
    import rnn2gpt.tasks.language_modeling as lm_task

    real_loss = lm_task.LanguageModelTask.loss
    calls = {"n": 0}

    def loss_then_fail(self, model, batch, state):
        calls["n"] += 1
        if calls["n"] == 4:  # during step 4
            raise RuntimeError("out of memory")
        return real_loss(self, model, batch, state)

    monkeypatch.setattr(lm_task.LanguageModelTask, "loss", loss_then_fail)
    config = make_run_config("lstm", max_steps=10, eval_interval=100)
    with pytest.raises(RuntimeError, match="out of memory"):
        train(config, tmp_path / "run")
    last = load_checkpoint(tmp_path / "run" / "last")
    assert last.trainer_state["step"] == 3  # the three steps done before the error are kept
    assert last.has_optimizer_state
    monkeypatch.setattr(lm_task.LanguageModelTask, "loss", real_loss)
    resumed = train(make_run_config("lstm", max_steps=5), tmp_path / "run", resume=True)
    assert resumed.steps == 5
