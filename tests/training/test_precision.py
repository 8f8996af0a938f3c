"""Precision resolution: fp32 unless bf16 is asked for or the hardware runs it natively."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch

from rnn2gpt.errors import ConfigError
from rnn2gpt.training import precision
from rnn2gpt.training.precision import autocast, resolve_precision


def test_explicit_choices():
    assert resolve_precision("fp32", "cpu") is None
    assert resolve_precision("bf16", "cpu") is torch.bfloat16
    with pytest.raises(ConfigError, match="auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("fast", [True, False])
def test_auto_follows_the_cpu_features(monkeypatch, caplog, fast):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: fast, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    with caplog.at_level(logging.INFO, logger=precision.__name__):
        chosen = resolve_precision("auto", "cpu")
    assert chosen == (torch.bfloat16 if fast else None)
    assert ("bf16" if fast else "fp32") in caplog.text  # the choice is logged


def test_auto_without_the_private_probes(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert resolve_precision("auto", "cpu") is None


def test_autocast_context():
    assert isinstance(autocast("cpu", None), contextlib.nullcontext)
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast("cpu", torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("cpu", None):
        assert (a @ b).dtype == torch.float32
