"""The whole training step without autograd (training/fused_step.py): the same bits as the
autograd step, taken only where nothing could see the difference.

Where the C kernels cannot run, the tests of the fused step skip naming why (the ``c_kernels``
fixture); every other trainer test runs the autograd step there.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import rnn2gpt.training.trainer as trainer_module
from rnn2gpt.config import ModelConfig
from rnn2gpt.models import build_model, native_model
from rnn2gpt.models.base import next_token_loss
from rnn2gpt.training import fused_step as fused_module
from rnn2gpt.training import train
from rnn2gpt.training.native_adamw import NativeAdamW

MODEL = {"n_layer": 2, "n_embd": 32, "n_head": 4}


def tiny_gpt(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    settings = {"vocab_size": 13, "block_size": 32, "dropout": 0.0, **MODEL, **overrides}
    return build_model(ModelConfig(arch="gpt", **settings)).train()


@pytest.fixture
def fused_calls(monkeypatch):
    """For each step the fused step was offered: whether it took it."""
    taken = []
    real = fused_module.FusedStep.__call__

    def counted(self, batch, compiler):
        loss = real(self, batch, compiler)
        taken.append(loss is not None)
        return loss

    monkeypatch.setattr(fused_module.FusedStep, "__call__", counted)
    return taken


def train_losses(run) -> list[float]:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in events if e["event"] == "train"]


def saved(run, name: str) -> dict[str, torch.Tensor]:
    return load_file(run / "last" / f"{name}.safetensors")


def assert_same_bits(run, reference) -> None:
    assert train_losses(run) == train_losses(reference)
    for name in ("model", "optimizer"):
        ours, theirs = saved(run, name), saved(reference, name)
        assert ours.keys() == theirs.keys()
        for key, tensor in ours.items():
            assert torch.equal(tensor, theirs[key]), f"{name}: {key}"


@pytest.mark.parametrize("model", [MODEL, {**MODEL, "bias": False, "tie_weights": False}])
def test_the_fused_step_trains_to_the_autograd_steps_bits(
    tmp_path, make_run_config, c_kernels, fused_calls, monkeypatch, model
):
    config = make_run_config("gpt", model=model, max_steps=20, eval_interval=10)
    train(config, tmp_path / "fused")
    assert fused_calls == [True] * 20
    monkeypatch.setattr(trainer_module, "fused_step", lambda *args: None)
    train(config, tmp_path / "autograd")
    assert len(fused_calls) == 20  # not offered again
    assert_same_bits(tmp_path / "fused", tmp_path / "autograd")


def test_a_run_resumed_on_the_fused_step_continues_exactly(
    tmp_path, make_run_config, c_kernels, fused_calls, stop_after
):
    config = make_run_config("gpt", model=MODEL, max_steps=20, eval_interval=5)
    train(config, tmp_path / "whole")
    assert train(config, tmp_path / "parts", interrupt=stop_after(8)).steps == 8
    train(config, tmp_path / "parts", resume=True)
    assert fused_calls == [True] * 40
    assert_same_bits(tmp_path / "parts", tmp_path / "whole")


@pytest.mark.parametrize(
    ("why", "settings"),
    [
        ("gradient accumulation", {"train": {"grad_accum": 2}}),
        ("a recurrent model (its state is carried)", {"arch": "lstm"}),
    ],
)
def test_runs_the_fused_step_cannot_serve_take_the_autograd_step(
    tmp_path, make_run_config, c_kernels, fused_calls, why, settings
):
    config = make_run_config(
        settings.get("arch", "gpt"), model=MODEL, max_steps=6, **settings.get("train", {})
    )
    train(config, tmp_path / "run")
    assert fused_calls == [], why
    assert len(train_losses(tmp_path / "run")) == 6


def test_a_parameter_hook_turns_the_fused_step_down(
    tmp_path, make_run_config, c_kernels, fused_calls, monkeypatch
):
    config = make_run_config("gpt", model=MODEL, max_steps=6)
    seen = []
    real = trainer_module.fused_step

    def with_hook(parts, module, distributed):
        parts.model.lm_head.weight.register_hook(lambda grad: seen.append(1))
        return real(parts, module, distributed)

    monkeypatch.setattr(trainer_module, "fused_step", with_hook)
    train(config, tmp_path / "run")
    assert fused_calls == [] and len(seen) == 6  # every step's gradient went through the hook


def test_an_optimizer_hook_another_batch_shape_or_a_compiled_module_falls_back(c_kernels):
    model = tiny_gpt()
    optimizer = NativeAdamW(model.parameters(), lr=1e-3)
    step = fused_module.FusedStep(model, optimizer, 1.0)
    compiler = type("Compiler", (), {"module": model})()
    tokens = torch.randint(0, 13, (3, 9))
    batch = (tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
    assert step(batch, compiler) is not None and step.tokens == 24
    shorter = (batch[0][:, :4], batch[1][:, :4])
    assert step(shorter, compiler) is None  # made for (3, 8)
    assert step(batch, type("Compiler", (), {"module": object()})()) is None  # compiled
    handle = optimizer.register_step_post_hook(lambda *args: None)
    assert step(batch, compiler) is None
    handle.remove()
    assert step(batch, compiler) is not None


def test_the_fixed_pass_gives_the_autograd_functions_loss_and_gradients(c_kernels):
    for overrides in ({}, {"bias": False, "tie_weights": False, "pos_encoding": "sinusoidal"}):
        model = tiny_gpt(**overrides)
        tokens = torch.randint(0, 13, (3, 11), generator=torch.Generator().manual_seed(1))
        x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        loss, _ = next_token_loss(model, x, y)
        loss.backward()
        fixed = native_model.fixed_loss_pass(model, 3, 10)
        assert fixed is not None
        with torch.no_grad():
            assert torch.equal(fixed.run(x, y), loss.detach())
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert set(fixed.grads) == set(trainable)
        for name, param in model.named_parameters():
            assert torch.equal(fixed.grads[param], param.grad), name


def test_a_replaced_forward_gets_no_fixed_pass(c_kernels):
    model = tiny_gpt()
    assert native_model.fixed_loss_pass(model, 2, 8) is not None
    model.forward = lambda *args, **kwargs: None
    assert native_model.fixed_loss_pass(model, 2, 8) is None
