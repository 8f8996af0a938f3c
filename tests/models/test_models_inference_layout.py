"""use_inference_layout: a different memory layout, the same model (a fast path: these tests run
with RNN2GPT_FASTPATHS=auto; the switched-off case is in test_models_packed.py)."""

from __future__ import annotations

import torch

from rnn2gpt.config import ModelConfig
from rnn2gpt.models import base, build_model
from rnn2gpt.models.base import use_inference_layout


def test_layout_changes_storage_not_values_or_results(fastpaths_auto, monkeypatch):
    # A GPT decoding in PyTorch (where it runs in C it keeps its rows: test_models_native_step.py)
    monkeypatch.setattr(base, "keeps_row_layout", lambda model: False)
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(arch="gpt", vocab_size=40, n_layer=2, n_head=2, n_embd=16, block_size=16)
    ).eval()
    tokens = torch.randint(0, 40, (3, 10))
    with torch.no_grad():
        before, _ = model(tokens)
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    use_inference_layout(model)

    head = model.lm_head.weight
    assert not head.is_contiguous() and head.t().is_contiguous()
    assert head is model.transformer.wte.weight  # still tied
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    with torch.no_grad():
        after, _ = model(tokens)
    assert torch.allclose(after, before, atol=1e-6)


def test_bf16_and_recurrent_weights_keep_their_layout(fastpaths_auto):
    model = build_model(ModelConfig(arch="lstm", vocab_size=30, n_layer=1, n_embd=8))
    use_inference_layout(model)
    assert model.decoder.weight.is_contiguous() is False  # nn.Linear decoder, fp32: re-laid
    assert all(p.is_contiguous() for n, p in model.rnn.named_parameters())  # fused kernel's own

    gpt = build_model(
        ModelConfig(arch="gpt", vocab_size=30, n_layer=1, n_head=2, n_embd=8, block_size=8)
    ).to(torch.bfloat16)
    use_inference_layout(gpt)
    assert all(p.is_contiguous() for p in gpt.parameters())
