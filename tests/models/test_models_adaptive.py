"""The adaptive softmax output: a proper distribution, an exact loss, and the same gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnn2gpt.config import ModelConfig, RunConfig
from rnn2gpt.errors import ConfigError
from rnn2gpt.models import build_model, next_token_loss
from rnn2gpt.models.adaptive import adaptive_log_probs, adaptive_nll, check_cutoffs, cluster_layer

VOCAB = 50


def tiny(arch: str, cutoffs=(10, 30)) -> nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(
        arch=arch,
        vocab_size=VOCAB,
        n_layer=2,
        n_embd=16,
        n_head=2,
        block_size=32,
        adaptive_cutoffs=cutoffs,
    )
    model = build_model(config)
    # The cluster layer starts at zero; random values make every cluster's share differ.
    nn.init.normal_(model.clusters.weight)
    nn.init.normal_(model.clusters.bias)
    return model


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru", "gpt"])
@pytest.mark.parametrize("cutoffs", [(10,), (10, 30)])
def test_the_output_is_a_distribution_and_the_loss_reads_it(arch, cutoffs):
    model = tiny(arch, cutoffs).eval()
    tokens = torch.randint(0, VOCAB, (3, 7))
    targets = torch.randint(0, VOCAB, (3, 7))
    targets[0, :3] = VOCAB - 1  # the last cluster is always used
    log_probs, _ = model(tokens)  # (B, T, V)
    assert log_probs.shape == (3, 7, VOCAB)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 7))

    nll, _ = model(tokens, None, targets=targets)  # (B, T)
    expected = -log_probs.gather(2, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(nll, expected, rtol=1e-5, atol=1e-5)
    loss, _ = next_token_loss(model, tokens, targets)
    torch.testing.assert_close(loss, expected.mean(), rtol=1e-5, atol=1e-5)


def test_carried_state_and_pieces_agree():
    """The contract: one call or pieces with the state carried give the same log-probs."""
    model = tiny("lstm").eval()
    tokens = torch.randint(0, VOCAB, (2, 9))
    whole, _ = model(tokens)
    first, state = model(tokens[:, :4])
    second, _ = model(tokens[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-5, atol=1e-5)


def _grads(params):
    return [p.grad.clone() for p in params]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("all_in_head", [False, True])
def test_the_hand_written_backward_equals_autograd(bias, all_in_head):
    torch.manual_seed(1)
    cutoffs = (10, 30)
    output = nn.Linear(8, VOCAB, bias=bias)
    clusters = cluster_layer(8, cutoffs)
    nn.init.normal_(clusters.weight)
    nn.init.normal_(clusters.bias)
    hidden = torch.randn(40, 8, requires_grad=True)
    targets = torch.randint(0, 10 if all_in_head else VOCAB, (40,))
    weights = torch.rand(40)  # a weighted sum exercises the incoming gradient
    params = [hidden, *output.parameters(), *clusters.parameters()]

    log_probs = adaptive_log_probs(output(hidden), clusters(hidden), cutoffs)
    reference = -log_probs.gather(1, targets[:, None]).squeeze(1)
    (reference * weights).sum().backward()
    expected = _grads(params)
    for p in params:
        p.grad = None

    nll = adaptive_nll(hidden, targets, output, clusters, cutoffs)
    (nll * weights).sum().backward()
    torch.testing.assert_close(nll, reference, rtol=1e-5, atol=1e-5)
    for got, want in zip(_grads(params), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_under_bf16_autocast_the_loss_is_close_and_gradients_stay_fp32():
    torch.manual_seed(2)
    cutoffs = (10,)
    output = nn.Linear(16, VOCAB)
    clusters = cluster_layer(16, cutoffs)
    hidden = torch.randn(64, 16, requires_grad=True)
    targets = torch.randint(0, VOCAB, (64,))
    reference = adaptive_nll(hidden, targets, output, clusters, cutoffs).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll = adaptive_nll(hidden, targets, output, clusters, cutoffs)
    assert nll.dtype == torch.float32
    torch.testing.assert_close(nll, reference, rtol=0.05, atol=0.05)
    nll.sum().backward()
    assert hidden.grad.dtype == torch.float32 and output.weight.grad.dtype == torch.float32
    assert torch.isfinite(output.weight.grad).all()


def test_a_wrapped_output_layer_is_scored_whole():
    """An output layer that is not a plain Linear (a LoRA adapter) goes through its own forward,
    so its extra weights get their gradient."""

    class Shifted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(8, VOCAB)
            self.shift = nn.Parameter(torch.zeros(VOCAB))

        def forward(self, x):
            return self.inner(x) + self.shift

    output, clusters = Shifted(), cluster_layer(8, (10,))
    hidden, targets = torch.randn(12, 8), torch.randint(0, VOCAB, (12,))
    nll = adaptive_nll(hidden, targets, output, clusters, (10,))
    nll.sum().backward()
    assert output.shift.grad is not None and output.shift.grad.abs().sum() > 0
    expected = -adaptive_log_probs(output(hidden), clusters(hidden), (10,))
    torch.testing.assert_close(nll, expected.gather(1, targets[:, None]).squeeze(1))


def test_a_plain_output_scores_targets_from_its_logits():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="lstm", vocab_size=VOCAB, n_layer=1, n_embd=8))
    assert not model.computes_nll  # next_token_loss scores its logits itself
    tokens = torch.randint(0, VOCAB, (2, 3))
    targets = torch.randint(0, VOCAB, (2, 3))
    nll, _ = model(tokens, None, targets=targets)
    logits, _ = model(tokens, None)
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), reduction="none")
    assert nll.shape == (2, 3)
    torch.testing.assert_close(nll.reshape(-1), expected)


@pytest.mark.parametrize("cutoffs", [(0,), (20, 10), (10, 10), (VOCAB,)])
def test_bad_cutoffs_say_what_is_allowed(cutoffs):
    with pytest.raises(ConfigError, match="adaptive_cutoffs"):
        check_cutoffs(cutoffs, VOCAB)


def test_cutoffs_from_the_command_line_and_from_toml():
    base = RunConfig.from_dict({"model": {"arch": "lstm", "adaptive_cutoffs": [2000, 6000]}})
    assert base.model.adaptive_cutoffs == (2000, 6000)
    changed = base.with_overrides(["model.adaptive_cutoffs=3000"])
    assert changed.model.adaptive_cutoffs == (3000,)
    with pytest.raises(ConfigError):
        base.with_overrides(["model.adaptive_cutoffs=many"])
    with pytest.raises(ConfigError, match="language models"):
        RunConfig.from_dict({"model": {"arch": "transformer", "adaptive_cutoffs": [10]}}).validate()


def test_int8_weights_keep_the_distribution(fastpaths_off):
    """Quantizing swaps the output and cluster layers for int8 ones; the full scores still go
    through them, so the log-probabilities stay a distribution close to the fp32 model's."""
    from rnn2gpt.models.quantized import quantize_model

    model = tiny("gpt").eval()
    tokens = torch.randint(0, VOCAB, (2, 6))
    with torch.inference_mode():
        reference, _ = model(tokens)
        quantized, _ = quantize_model(model)(tokens)
    torch.testing.assert_close(quantized.exp().sum(-1), torch.ones(2, 6))
    assert (quantized - reference).abs().max() < 0.1
