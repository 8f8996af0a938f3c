"""The one trainer trains an encoder-decoder; resume is exact; the task helpers decode."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from seq2seq_helpers import write_parallel_files

from rnn2gpt.checkpoint import load_checkpoint
from rnn2gpt.config import RunConfig
from rnn2gpt.errors import ConfigError
from rnn2gpt.tasks import evaluate_seq2seq, load_seq2seq, translate
from rnn2gpt.training import train

WORDS = "red green blue black white pink gray gold".split()


def _pairs(count: int, seed: int) -> tuple[list[str], list[str]]:
    """Sources of 2-4 colour words; targets: the same words reversed (a learnable mapping)."""
    import random

    rng = random.Random(seed)
    sources, targets = [], []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 4))]
        sources.append(" ".join(words))
        targets.append(" ".join(reversed(words)))
    return sources, targets


@pytest.fixture
def parallel_files(tmp_path):
    return write_parallel_files(tmp_path, _pairs, (("train", 300, 0), ("val", 24, 1)))


def _config(tmp_path, files, arch: str = "transformer", **train) -> RunConfig:
    model = dict(arch=arch, n_layer=1, n_embd=32, n_head=2, block_size=16, dropout=0.1)
    train_values = dict(
        task="translation",
        batch_size=16,
        max_steps=16,
        lr=5e-3,
        warmup_steps=2,
        eval_interval=8,
        eval_batches=0,
        log_interval=1,
        progress=False,
        precision="fp32",
        threads=1,
        seed=3,
        label_smoothing=0.1,
    )
    train_values.update(train)
    data = dict(
        source_path=str(files["train.src"]),
        target_path=str(files["train.tgt"]),
        val_source_path=str(files["val.src"]),
        val_target_path=str(files["val.tgt"]),
        cache_dir=str(tmp_path / "cache"),
    )
    return RunConfig.from_dict(
        {"model": model, "tokenizer": {"kind": "word"}, "data": data, "train": train_values}
    ).validate()


class _StopAfter(threading.Event):
    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps, self.checks = steps, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks > self.steps or super().is_set()


def _events(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def test_trainer_resume_is_exact_for_a_seq2seq_run(tmp_path, parallel_files):
    config = _config(tmp_path, parallel_files)
    full = train(config, tmp_path / "full")
    assert full.steps == 16 and full.best_val_loss is not None
    stopped = train(config, tmp_path / "split", interrupt=_StopAfter(5))
    assert stopped.interrupted and stopped.steps == 5
    resumed = train(config, tmp_path / "split", resume=True)
    assert resumed.steps == 16
    a = {e["step"]: e["loss"] for e in _events(tmp_path / "full", "train")}
    b = {e["step"]: e["loss"] for e in _events(tmp_path / "split", "train")}
    assert sorted(a) == sorted(b) == list(range(1, 17))
    for step in range(6, 17):
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    val_a = [e["val_loss"] for e in _events(tmp_path / "full", "eval")]
    val_b = [e["val_loss"] for e in _events(tmp_path / "split", "eval")]
    assert val_b == pytest.approx(val_a, abs=1e-6)
    ckpt = load_checkpoint(tmp_path / "full" / "best")
    assert ckpt.config.train.task == "translation" and ckpt.config.model.arch == "transformer"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A GRU+attention model trained long enough to reverse colour words (shared below)."""
    tmp_path = tmp_path_factory.mktemp("seq2seq_run")
    files = write_parallel_files(tmp_path, _pairs, (("train", 300, 0), ("val", 24, 1)))
    config = _config(
        tmp_path,
        files,
        arch="seq2seq-rnn",
        max_steps=400,
        eval_interval=200,
        log_interval=50,
        warmup_steps=10,
        label_smoothing=0.0,
        early_stop_metric="bleu",
        metric_samples=8,
    ).with_values("model", dropout=0.0)
    result = train(config, tmp_path / "run")
    return tmp_path / "run", result


def test_trainer_early_stop_metric_reports_bleu_and_the_model_translates(trained_run):
    run_dir, result = trained_run
    evals = _events(run_dir, "eval")
    assert evals and all("val_bleu" in e for e in evals)
    assert result.final_metrics["val_bleu"] > 50
    sources, targets = _pairs(6, 5)
    out = translate(run_dir, sources, num_beams=3)
    assert sum(o == t for o, t in zip(out, targets)) >= 5
    scores = evaluate_seq2seq(run_dir, sources, targets, num_beams=1)
    assert scores["task"] == "translation" and scores["bleu"] > 50
    assert scores["signature"].startswith("nrefs:1")


def test_packed_runner_decodes_as_the_plain_model_and_the_top_level_api_agrees(
    trained_run, monkeypatch, fastpaths_auto, require_packing
):
    import rnn2gpt
    from rnn2gpt.config import GenerationConfig
    from rnn2gpt.models import packed
    from rnn2gpt.models.packed import PackedLinear

    require_packing(torch.float32)
    monkeypatch.setattr(packed, "MIN_PACKED_WEIGHTS", 1)  # pack even this tiny model
    from rnn2gpt.checkpoint import load_checkpoint
    from rnn2gpt.tasks.decoding import decode_texts

    run_dir, _ = trained_run
    runner = load_seq2seq(run_dir)
    assert any(isinstance(m, PackedLinear) for m in runner.model.modules())
    plain = load_checkpoint(run_dir / "best")
    sources, _ = _pairs(6, 7)
    settings = GenerationConfig(temperature=0.0, num_beams=3, max_new_tokens=20)
    want = decode_texts(plain.model.eval(), plain.tokenizer, sources, settings)
    assert runner.run(sources, num_beams=3, max_new_tokens=20) == want
    assert rnn2gpt.translate(str(run_dir), sources, num_beams=3, max_new_tokens=20) == want


def test_language_model_checkpoints_are_refused(tmp_path):
    from rnn2gpt.errors import CheckpointError

    with pytest.raises(CheckpointError):
        load_seq2seq(tmp_path / "missing")


def test_task_and_architecture_must_agree():
    with pytest.raises(ConfigError, match="encoder-decoder"):
        RunConfig.from_dict({"model": {"arch": "gpt"}, "train": {"task": "translation"}}).validate()


# --------------------------------------------------------------------------- checks at start-up


def test_a_missing_metric_package_fails_before_the_first_step(
    tmp_path, parallel_files, monkeypatch
):
    import rnn2gpt.tasks.seq2seq as seq2seq_task

    real = seq2seq_task.importlib.util.find_spec
    monkeypatch.setattr(
        seq2seq_task.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "sacrebleu" else real(name, *a),
    )
    config = _config(tmp_path, parallel_files, early_stop_metric="bleu")
    with pytest.raises(ConfigError, match=r"needs the sacrebleu package.*rnn2gpt\[eval\]"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "last").exists()  # nothing was trained
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_metric_of_the_other_task_fails_before_the_first_step(tmp_path, parallel_files):
    config = _config(tmp_path, parallel_files, early_stop_metric="rouge1")  # a translation run
    with pytest.raises(ConfigError, match="does not fit train.task=translation.*bleu"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_both_tasks_follow_the_task_protocol(tmp_path, parallel_files):
    from rnn2gpt.tasks import LanguageModelTask, Seq2SeqTask, task_kind

    assert task_kind("translation").build is task_kind("summarization").build
    for cls in (LanguageModelTask, Seq2SeqTask):
        for name in ("check", "has_split", "batch", "loss", "evaluate", "score", "decode_metrics"):
            assert callable(getattr(cls, name)), (cls, name)
    with pytest.raises(ConfigError, match="unknown train.task"):
        task_kind("poetry")
