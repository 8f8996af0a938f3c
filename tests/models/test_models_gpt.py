"""GPT specifics: layout, init, context limits, positions, the KV cache and the recorder."""

from __future__ import annotations

import math

import pytest
import torch

from rnn2gpt.errors import ContextLengthError
from rnn2gpt.models import KVCache, native_ops
from rnn2gpt.models.gpt import SINUSOID_SCALE, sinusoidal_table
from rnn2gpt.models.ops import SMALL_GELU_NUMEL, dropout, gelu


def _tokens(batch: int, steps: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 13, (batch, steps), generator=torch.Generator().manual_seed(seed))


def test_gpt2_module_names(make_model) -> None:
    model = make_model(n_layer=2)
    names = set(model.state_dict())
    for name in [
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.ln_1.bias",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_attn.bias",
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.1.ln_2.weight",
        "transformer.h.1.mlp.c_fc.weight",
        "transformer.h.1.mlp.c_proj.bias",
        "transformer.ln_f.weight",
        "lm_head.weight",
    ]:
        assert name in names, name
    assert model.transformer.h[0].attn.c_attn.weight.shape == (48, 16)


@torch.no_grad()
def test_init_follows_gpt2(make_model) -> None:
    model = make_model(n_layer=3, n_embd=64, n_head=4)
    for name, param in model.named_parameters():
        if name.endswith("bias") and "ln_" not in name:
            assert torch.count_nonzero(param) == 0, name
    expected_residual = 0.02 / math.sqrt(2 * 3)
    c_proj = model.transformer.h[0].mlp.c_proj.weight
    assert abs(float(c_proj.std()) - expected_residual) < 0.15 * expected_residual
    c_fc = model.transformer.h[0].mlp.c_fc.weight
    assert abs(float(c_fc.std()) - 0.02) < 0.1 * 0.02
    assert torch.equal(model.transformer.ln_f.weight, torch.ones(64))


def test_tied_and_untied_head(make_model) -> None:
    tied = make_model(tie_weights=True)
    assert tied.lm_head.weight is tied.transformer.wte.weight
    untied = make_model(tie_weights=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight


def test_no_bias_option(make_model) -> None:
    model = make_model(bias=False)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    logits, _ = model(_tokens(2, 5))
    assert torch.isfinite(logits).all()


def test_gelu_tanh_is_a_different_activation(make_model) -> None:
    tokens = _tokens(2, 6)
    exact = make_model(seed=1, activation="gelu")
    approx = make_model(seed=1, activation="gelu_tanh")
    approx.load_state_dict(exact.state_dict())
    a, b = exact(tokens)[0], approx(tokens)[0]
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, b, atol=1e-2, rtol=0)


@pytest.mark.parametrize("numel", [7, 768, SMALL_GELU_NUMEL + 1])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_helper_equals_pytorch_and_leaves_onednn_on(numel, approximate) -> None:
    x = torch.randn(numel, generator=torch.Generator().manual_seed(0)) * 3
    expected = torch.nn.functional.gelu(x, approximate=approximate)
    with torch.no_grad():
        torch.testing.assert_close(gelu(x, approximate), expected, atol=2e-6, rtol=1e-6)
    assert torch.backends.mkldnn.enabled  # the small path switches oneDNN off for one kernel only
    # Under autograd a small tensor takes PyTorch's own call, gradient included; a large one
    # the C kernel where it runs (models/native_ops.py), within float rounding.
    leaf = x.clone().requires_grad_()
    gelu(leaf, approximate).sum().backward()
    reference = x.clone().requires_grad_()
    torch.nn.functional.gelu(reference, approximate=approximate).sum().backward()
    if approximate == "none" and numel > SMALL_GELU_NUMEL and native_ops.usable(x):
        torch.testing.assert_close(leaf.grad, reference.grad, atol=1e-6, rtol=1e-5)
    else:
        assert torch.equal(leaf.grad, reference.grad)


def test_dropout_helper_is_skipped_only_where_it_is_the_identity() -> None:
    x = torch.ones(4, 256)
    layer = torch.nn.Dropout(0.5)
    assert dropout(layer, x) is not x and (dropout(layer, x) == 0).any()  # training: drops
    layer.eval()
    assert dropout(layer, x) is x
    assert dropout(torch.nn.Dropout(0.0), x) is x


@torch.no_grad()
def test_sequence_longer_than_context_raises(make_model) -> None:
    model = make_model(block_size=8)
    with pytest.raises(ContextLengthError, match=r"9 .*8"):
        model(_tokens(1, 9))
    _, state = model(_tokens(1, 6))
    with pytest.raises(ContextLengthError, match=r"9 .*8"):
        model(_tokens(1, 3), state)


@torch.no_grad()
def test_cache_capacity_is_enforced(make_model) -> None:
    model = make_model(block_size=16)
    state = model.new_state(2, capacity=5)
    _, state = model(_tokens(2, 4), state)
    with pytest.raises(ContextLengthError, match=r"6 .*5"):
        model(_tokens(2, 2), state)
    with pytest.raises(ContextLengthError, match=r"17 .*16"):
        model.new_state(1, capacity=17)


@torch.no_grad()
def test_sinusoidal_positions(make_model) -> None:
    model = make_model(pos_encoding="sinusoidal")
    assert not hasattr(model.transformer, "wpe")
    assert "pos_table" not in model.state_dict()  # rebuilt from the config, never saved
    table = model.pos_table / SINUSOID_SCALE  # stored at the embeddings' scale
    assert table.shape == (32, 16)
    assert torch.allclose(table, sinusoidal_table(32, 16))
    torch.testing.assert_close(table[0, 0::2], torch.zeros(8))
    torch.testing.assert_close(table[0, 1::2], torch.ones(8))
    torch.testing.assert_close(table[3, 0], torch.tensor(math.sin(3.0)))
    # Positions matter: the same token at two positions gives different logits.
    logits, _ = model(torch.full((1, 2), 4))
    assert not torch.allclose(logits[0, 0], logits[0, 1])


@torch.no_grad()
def test_light_cache_grows_once(make_model) -> None:
    model = make_model(block_size=32)
    _, cache = model(_tokens(2, 5))
    assert isinstance(cache, KVCache)
    assert cache.keys[0].shape == (2, 2, 5, 8)  # only what the forward computed
    _, cache = model(_tokens(2, 1, seed=1), cache)
    grown = cache.keys[0]
    assert grown.shape == (2, 2, 32, 8) and cache.length == 6
    _, cache = model(_tokens(2, 1, seed=2), cache)
    assert cache.keys[0].data_ptr() == grown.data_ptr()  # no reallocation afterwards


@torch.no_grad()
def test_decode_step_builds_no_mask(make_model) -> None:
    model = make_model()
    _, cache = model(_tokens(2, 4), model.new_state(2))
    assert cache.attention_mask(1) == (None, False)
    assert cache.positions(1) is None
    torch.testing.assert_close(cache.next_pos, torch.tensor([4, 4]))

    mask = torch.tensor([[False, True, True, True], [True, True, True, True]])
    _, padded = model(_tokens(2, 4), model.new_state(2, pad_mask=mask))
    step_mask, is_causal = padded.attention_mask(1)
    assert not is_causal and step_mask.shape == (2, 1, 1, 5)
    assert step_mask.data_ptr() == padded.valid.data_ptr()  # a view of the cache's own mask
    torch.testing.assert_close(padded.next_pos, torch.tensor([3, 4]))
    torch.testing.assert_close(padded.positions(2), torch.tensor([[3, 4], [4, 5]]))


@torch.no_grad()
def test_new_state_uses_model_dtype(make_model) -> None:
    model = make_model().double()
    state = model.new_state(2)
    assert state.keys[0].dtype == torch.float64
    logits, _ = model(_tokens(2, 3), state)
    assert logits.dtype == torch.float64


def test_gradients_flow_through_cached_continuation(make_model) -> None:
    model = make_model(seed=3)
    tokens = _tokens(2, 8, seed=4)
    model(tokens)[0].square().mean().backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    first, state = model(tokens[:, :5], model.new_state(2))
    second, _ = model(tokens[:, 5:], state)
    torch.cat([first, second], dim=1).square().mean().backward()
    for got, want in zip([p.grad for p in model.parameters()], reference):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


@torch.no_grad()
def test_recorder_reports_attention_without_changing_logits(make_model) -> None:
    model = make_model(n_layer=2, n_head=2)
    tokens = _tokens(3, 6)
    records: dict[str, torch.Tensor] = {}
    plain, _ = model(tokens)
    recorded, cache = model(tokens, recorder=lambda name, t: records.__setitem__(name, t))
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=1e-5)
    attention = records["layer1.attention"]
    assert set(records) >= {"layer0.attention", "layer1.attention", "layer0.hidden"}
    assert attention.shape == (3, 2, 6, 6)
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 2, 6))
    assert float(attention.triu(diagonal=1).abs().max()) == 0.0  # causal

    step, _ = model(_tokens(3, 1, seed=1), cache, recorder=lambda n, t: records.__setitem__(n, t))
    assert records["layer0.attention"].shape == (3, 2, 1, 7)


@torch.no_grad()
def test_recorder_with_padding_never_attends_to_pads(make_model) -> None:
    model = make_model()
    mask = torch.tensor([[False, False, True, True], [True, True, True, True]])
    records: dict[str, torch.Tensor] = {}
    plain, _ = model(_tokens(2, 4), model.new_state(2, pad_mask=mask))
    recorded, _ = model(
        _tokens(2, 4),
        model.new_state(2, pad_mask=mask),
        recorder=lambda n, t: records.__setitem__(n, t),
    )
    torch.testing.assert_close(recorded[mask], plain[mask], atol=1e-5, rtol=1e-5)
    attention = records["layer0.attention"]  # (B, H, T, S)
    assert float(attention[0, :, 2:, :2].abs().max()) == 0.0  # real queries ignore the pads
    assert torch.isfinite(attention).all()
