"""Precision resolution: fp32 unless bf16 is asked for, or the CPU both has native bf16 and runs
bf16 autocast measurably faster (and fast paths are on)."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch

from rnn2gpt import hardware
from rnn2gpt.errors import ConfigError
from rnn2gpt.training import precision
from rnn2gpt.training.precision import autocast, precision_choice, resolve_precision


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU with native bf16 as PyTorch runs it; the test sets the measured speed-up."""
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(precision, "fast_bf16_reason", lambda: "this CPU has AVX512-BF16")

    def measured(speedup: float) -> None:
        monkeypatch.setattr(precision, "bf16_autocast_speedup", lambda: speedup)

    return measured


def test_explicit_choices():
    assert resolve_precision("fp32", "cpu") is None
    assert resolve_precision("bf16", "cpu") is torch.bfloat16
    with pytest.raises(ConfigError, match="auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("speedup, expected", [(2.3, torch.bfloat16), (0.5, None)])
def test_auto_picks_bf16_only_where_it_measures_faster(
    bf16_cpu, fastpaths_auto, caplog, speedup, expected
):
    bf16_cpu(speedup)
    with caplog.at_level(logging.INFO, logger=precision.__name__):
        chosen = resolve_precision("auto", "cpu")
    assert chosen == expected
    assert ("bf16" if expected else "fp32") in caplog.text  # the choice is logged, with why
    assert f"{speedup:.2f}x" in caplog.text


def test_auto_stays_fp32_without_native_bf16(monkeypatch, fastpaths_auto):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(precision, "bf16_autocast_speedup", lambda: pytest.fail("not measured"))
    assert resolve_precision("auto", "cpu") is None


def test_fastpaths_off_keeps_auto_in_fp32_but_an_explicit_bf16(bf16_cpu, fastpaths_off):
    bf16_cpu(3.0)
    assert precision_choice("auto", "cpu").dtype is None
    assert "RNN2GPT_FASTPATHS=off" in precision_choice("auto", "cpu").reason
    assert precision_choice("bf16", "cpu").dtype is torch.bfloat16


def test_bf16_where_it_is_slow_is_kept_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(precision, "fast_bf16_reason", lambda: "this CPU has no native bf16")
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        assert resolve_precision("bf16", "cpu") is torch.bfloat16
    assert "may be slow" in caplog.text


def test_the_real_probe_agrees_with_the_choice(fastpaths_auto):
    choice = precision_choice("auto", "cpu")
    fast = hardware.cpu_has_fast_bf16()
    if not fast:
        assert choice.dtype is None
    else:
        speedup = hardware.bf16_autocast_speedup()
        assert speedup > 0
        assert (choice.dtype is torch.bfloat16) == (speedup >= hardware.BF16_MIN_SPEEDUP)


def test_autocast_context():
    assert isinstance(autocast("cpu", None), contextlib.nullcontext)
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast("cpu", torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("cpu", None):
        assert (a @ b).dtype == torch.float32
