"""A run says what it will do before it starts: model, budget, precision, expected time."""

from __future__ import annotations

import logging

import torch

from rnn2gpt.config import TrainConfig
from rnn2gpt.training import plan, train


def test_the_estimate_follows_the_budget(monkeypatch):
    monkeypatch.setattr(plan, "matmul_gflops", lambda dtype: 120.0)
    # 6 * 1M FLOPs per token at 50% of 120 GFLOP/s: 10,000 tokens/s.
    assert plan.expected_tokens_per_second(1_000_000, None) == 10_000
    timed = TrainConfig(max_steps=10**9, max_time=600.0, eval_interval=1000, eval_batches=10)
    text = plan.describe_plan(
        arch="gpt",
        parameters=1_000_000,
        tokens_per_step=2_000,
        train=timed,
        dtype=None,
        precision_reason="fp32 (as asked)",
    )
    # 600 s at 0.2 s a step: 3,000 steps, 4 evaluations of 10 forward-only batches.
    assert "10 min 00 s of training" in text and "1,000,000,000 steps" in text
    assert "about 3,000 steps" in text and "10,000 tokens/s" in text
    assert "fp32 (as asked)" in text and "10 min 03 s in all" in text
    stepped = TrainConfig(max_steps=50, eval_interval=1000, eval_batches=10)
    text = plan.describe_plan(
        arch="lstm",
        parameters=1_000_000,
        tokens_per_step=2_000,
        train=stepped,
        dtype=torch.bfloat16,
        precision_reason="bf16 autocast (as asked)",
    )
    assert "budget 50 steps" in text and "about 50 steps" in text and "11 s in all" in text


def test_the_run_logs_its_plan_before_the_first_step(tmp_path, make_run_config, caplog):
    with caplog.at_level(logging.INFO, logger="rnn2gpt"):
        train(make_run_config("gru", max_steps=3, log_interval=1), tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records]
    planned = next(i for i, line in enumerate(lines) if line.startswith("plan: gru of "))
    first_step = next(i for i, line in enumerate(lines) if line.startswith("step 1:"))
    assert planned < first_step
    assert "budget 3 steps" in lines[planned] and "precision fp32 (as asked)" in lines[planned]
    assert any(line.startswith("precision: fp32") for line in lines[:first_step])


def test_seconds_left_follow_the_budget_furthest_along():
    steps = TrainConfig(max_steps=100, max_time=0, warmup_steps=10)
    assert plan.seconds_left(25, 10.0, 0, steps) == 30.0  # a quarter done in 10 s
    assert plan.seconds_left(0, 0.0, 0, steps) is None
    both = TrainConfig(max_steps=100, max_time=20.0)
    assert plan.seconds_left(25, 10.0, 0, both) == 10.0  # half the time is the furthest
