"""Optimizer construction and the warmup + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rnn2gpt.config import TrainConfig
from rnn2gpt.errors import ConfigError
from rnn2gpt.training.optim import (
    _supports_fused,
    build_optimizer,
    lr_at,
    param_groups,
    progress_fraction,
    set_lr,
)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.out = nn.Linear(4, 10)
        self.out.weight = self.emb.weight  # tied: must be counted once


def test_weight_decay_goes_to_matrices_only():
    groups = param_groups(Tiny(), 0.1)
    decayed, plain = groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert [tuple(p.shape) for p in decayed["params"]] == [(10, 4)]  # the tied embedding, once
    assert sorted(tuple(p.shape) for p in plain["params"]) == [(4,), (4,), (10,)]


def test_adamw_and_sgd():
    config = TrainConfig(lr=3e-3, beta1=0.8, beta2=0.95, weight_decay=0.05)
    adamw = build_optimizer(Tiny(), config)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["betas"] == (0.8, 0.95)
    assert adamw.param_groups[0]["weight_decay"] == 0.05
    # Fused where this PyTorch supports it on the device (CPU: since PyTorch 2.4).
    assert bool(adamw.defaults.get("fused")) == _supports_fused(torch.device("cpu"))
    sgd = build_optimizer(Tiny(), TrainConfig(optimizer="sgd", lr=20.0, weight_decay=0.0))
    assert isinstance(sgd, torch.optim.SGD)
    set_lr(sgd, 5.0)
    assert all(group["lr"] == 5.0 for group in sgd.param_groups)


def test_sgd_refuses_a_decay_that_would_flip_weights():
    with pytest.raises(ConfigError, match="train.weight_decay=0"):
        build_optimizer(Tiny(), TrainConfig(optimizer="sgd", lr=20.0, weight_decay=0.1))


def test_schedule_warmup_middle_end():
    config = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, max_steps=110)
    lr = lambda step: lr_at(step, progress_fraction(step, 0.0, 0, config), config)  # noqa: E731
    assert lr(0) == pytest.approx(0.1)
    assert lr(4) == pytest.approx(0.5)
    assert lr(9) == pytest.approx(1.0)
    assert lr(10) == pytest.approx(1.0)  # the cosine starts where warmup ends
    assert lr(60) == pytest.approx(0.55)  # halfway: (lr + min_lr) / 2
    assert lr(110) == pytest.approx(0.1)
    assert lr(500) == pytest.approx(0.1)  # never below the floor
    assert all(lr(s) >= lr(s + 1) for s in range(10, 110))


def test_constant_schedule():
    config = TrainConfig(lr=2.0, warmup_steps=4, schedule="constant", max_steps=100)
    assert lr_at(1, 0.0, config) == pytest.approx(1.0)
    assert lr_at(50, 0.5, config) == lr_at(99, 1.0, config) == 2.0


def test_progress_is_the_furthest_budget():
    config = TrainConfig(max_steps=1000, max_time=100.0, max_tokens=10_000, warmup_steps=0)
    assert progress_fraction(100, 50.0, 2_000, config) == pytest.approx(0.5)  # time leads
    assert progress_fraction(100, 5.0, 9_000, config) == pytest.approx(0.9)  # tokens lead
    assert progress_fraction(10_000, 0.0, 0, config) == 1.0
    time_only = TrainConfig(max_steps=0, max_time=60.0, warmup_steps=5)
    assert progress_fraction(3, 15.0, 0, time_only) == pytest.approx(0.25)
    min_lr = time_only.lr * time_only.min_lr_ratio
    assert lr_at(50, 1.0, time_only) == pytest.approx(min_lr)
    assert lr_at(50, 0.5, time_only) == pytest.approx((time_only.lr + min_lr) / 2)
    assert math.isclose(lr_at(0, 0.9, time_only), time_only.lr / 5)  # warmup still rules
