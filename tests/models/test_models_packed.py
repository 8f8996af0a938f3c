"""PackedLinear: the same layer and results as nn.Linear, with a packed weight for decoding.

The packed path is tested where this CPU and build can pack (the probe says so); the plain
nn.Linear fallback, and the probe agreeing with the path taken, are tested everywhere.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnn2gpt.config import GenerationConfig, ModelConfig
from rnn2gpt.generation import generate
from rnn2gpt.models import build_model, packed
from rnn2gpt.models.base import use_inference_layout
from rnn2gpt.models.packed import PackedLinear, pack_linear_layers, packed_linear_supported


@pytest.fixture(autouse=True)
def pack_small_layers(monkeypatch, fastpaths_auto, request):
    """These tests use tiny layers; pack them all (the default spares layers this small), and
    take the packed path wherever it is valid (the timed choice has tests of its own)."""
    monkeypatch.setattr(packed, "MIN_PACKED_WEIGHTS", 1)
    if "measured_choice" not in request.keywords:
        monkeypatch.setattr(packed, "packed_is_faster", lambda layer, x: True)


def _count_packed_calls(monkeypatch) -> list[int]:
    for dtype in (torch.float32, torch.bfloat16):
        packed_linear_supported(dtype)  # the probe's own example call is not counted
    calls = [0]
    original = packed._packed_linear

    def spy(*args):
        calls[0] += 1
        return original(*args)

    monkeypatch.setattr(packed, "_packed_linear", spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_probe_and_the_path_taken_agree(monkeypatch, dtype):
    torch.manual_seed(0)
    layer = nn.Linear(64, 96).to(dtype)
    x = torch.randn(4, 64).to(dtype)
    expected = F.linear(x.float(), layer.weight.float(), layer.bias.float())
    calls = _count_packed_calls(monkeypatch)
    pack_linear_layers(layer)
    with torch.no_grad():
        got = layer(x)
    supported = packed_linear_supported(dtype)
    assert (type(layer) is PackedLinear) == supported
    assert calls[0] == int(supported)
    tolerance = 1e-5 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(got.float(), expected, atol=tolerance, rtol=tolerance)


def test_the_probe_answers_for_dtypes_it_cannot_pack():
    assert not packed_linear_supported(torch.float16)
    assert not packed_linear_supported(torch.int64)


def test_fastpaths_off_packs_nothing_and_keeps_the_layout(monkeypatch):
    monkeypatch.setenv("RNN2GPT_FASTPATHS", "off")
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(arch="gpt", vocab_size=40, n_layer=1, n_head=2, n_embd=16, block_size=16)
    ).eval()
    tokens = torch.randint(0, 40, (2, 6))
    with torch.no_grad():
        before, _ = model(tokens)
    use_inference_layout(model)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert all(p.is_contiguous() for p in model.parameters())  # no column-major layout either
    with torch.no_grad():
        after, _ = model(tokens)
    assert torch.equal(after, before)


def test_small_layers_stay_plain_by_default(monkeypatch, require_packing):
    require_packing(torch.float32)
    monkeypatch.setattr(packed, "MIN_PACKED_WEIGHTS", 1 << 18)  # the module's own threshold
    small = nn.Linear(128, 512)  # nanoGPT's MLP: per-call overhead would outweigh the gain
    large = nn.Linear(768, 768)
    pack_linear_layers(nn.Sequential(small, large))
    assert type(small) is nn.Linear
    assert type(large) is PackedLinear


@pytest.mark.parametrize("shape", [(1, 48), (8, 48), (2, 5, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_linear_in_fp32(monkeypatch, require_packing, shape, bias):
    require_packing(torch.float32)
    torch.manual_seed(0)
    layer = nn.Linear(48, 80, bias=bias)
    x = torch.randn(*shape)
    expected = layer(x).detach()
    calls = _count_packed_calls(monkeypatch)

    pack_linear_layers(layer)

    assert type(layer) is PackedLinear
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert calls[0] == 1


@pytest.mark.measured_choice
def test_the_packed_path_runs_where_it_measured_faster(monkeypatch, require_packing):
    require_packing(torch.float32)
    monkeypatch.setattr(packed, "_CHOICES", {})
    torch.manual_seed(0)
    layer = nn.Linear(48, 80)
    pack_linear_layers(layer)
    calls = _count_packed_calls(monkeypatch)
    with torch.no_grad():
        for rows in (1, 4, 20):
            x = torch.randn(rows, 48)
            layer(x)  # the first call of a row-count class times both paths
            before = calls[0]
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
            key = ((80, 48), torch.float32, (48, 1), packed._row_class(rows), False)
            choice = packed._CHOICES[key]
            assert calls[0] - before == int(choice)
    assert len(packed._CHOICES) == 3  # one timing per row-count class: 1, 2-8, more


@pytest.mark.measured_choice
def test_a_slower_packed_path_is_never_taken(monkeypatch, require_packing):
    require_packing(torch.float32)
    monkeypatch.setattr(packed, "_CHOICES", {})
    timings = iter([1.0, 2.0])  # nn.Linear 1 s, packed 2 s
    monkeypatch.setattr(packed, "_best_seconds", lambda fn, **_: next(timings))
    layer = nn.Linear(48, 80)
    pack_linear_layers(layer)
    calls = _count_packed_calls(monkeypatch)
    x = torch.randn(1, 48)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    assert calls[0] == 0 and type(layer) is PackedLinear


@pytest.mark.measured_choice
def test_layers_of_a_large_model_are_timed_streaming_from_memory(monkeypatch, require_packing):
    # A decode step reads every weight of the model once, so a layer is timed over a ring of
    # copies of its weight as large as the model: here 6 layers -> 6 weights per timed pass.
    require_packing(torch.float32)
    monkeypatch.setattr(packed, "_CHOICES", {})
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(48, 48) for _ in range(6)])
    pack_linear_layers(model)
    layer = model[0]
    weight_bytes = 48 * 48 * 4
    assert layer._working_set == 6 * (weight_bytes + 48 * 4)  # weights and biases
    assert packed._ring_length(layer) == 6
    timed_weights = []
    original = F.linear

    def spy(x, weight, bias=None):
        timed_weights.append(weight.data_ptr())
        return original(x, weight, bias)

    monkeypatch.setattr(packed.F, "linear", spy)
    x = torch.randn(1, 48)
    with torch.no_grad():
        packed.packed_is_faster(layer, x)
    assert len(set(timed_weights)) == 6  # its own weight and 5 copies
    key = ((48, 48), torch.float32, (48, 1), 1, True)
    assert key in packed._CHOICES


def test_a_layer_alone_is_timed_hot(require_packing):
    layer = pack_linear_layers(nn.Linear(48, 48))
    assert packed._ring_length(layer) == 1


def test_the_route_is_chosen_once_per_layer_and_row_class(monkeypatch, require_packing):
    require_packing(torch.float32)
    asked = []
    monkeypatch.setattr(packed, "packed_is_faster", lambda layer, x: asked.append(x.shape) or True)
    layer = pack_linear_layers(nn.Linear(48, 80))
    with torch.no_grad():
        for rows in (1, 1, 3, 5, 1, 40):
            torch.testing.assert_close(
                layer(torch.ones(rows, 48)),
                F.linear(torch.ones(rows, 48), layer.weight, layer.bias),
            )
    assert [shape[0] for shape in asked] == [1, 3, 40]  # classes 1, 2-8 and more
    with torch.no_grad():
        layer.to(torch.float64)  # another dtype: not packed, and never asked
        layer(torch.ones(1, 48, dtype=torch.float64))
    assert len(asked) == 3


@pytest.mark.parametrize("rows", [1, 8])
def test_equals_linear_in_bf16(monkeypatch, require_packing, rows):
    require_packing(torch.bfloat16)
    torch.manual_seed(0)
    layer = nn.Linear(64, 96).to(torch.bfloat16)
    x = torch.randn(rows, 64).to(torch.bfloat16)
    expected = F.linear(x.float(), layer.weight.float(), layer.bias.float())
    calls = _count_packed_calls(monkeypatch)
    pack_linear_layers(layer)
    with torch.no_grad():
        got = layer(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=0.1, rtol=0.02)
    assert calls[0] == 1


@pytest.mark.parametrize("rows", [1, 8])
def test_bf16_layers_the_probe_refuses_stay_plain_and_agree(monkeypatch, rows):
    # The fallback of the bf16 path, tested on every CPU: a probe that says no leaves nn.Linear.
    monkeypatch.setattr(packed, "packed_linear_supported", lambda dtype: False)
    torch.manual_seed(0)
    layer = nn.Linear(64, 96).to(torch.bfloat16)
    x = torch.randn(rows, 64).to(torch.bfloat16)
    pack_linear_layers(layer)
    assert type(layer) is nn.Linear
    with torch.no_grad():
        got = layer(x)
    expected = F.linear(x.float(), layer.weight.float(), layer.bias.float())
    torch.testing.assert_close(got.float(), expected, atol=0.1, rtol=0.02)


def test_autograd_takes_the_plain_path_and_trains(monkeypatch, require_packing):
    require_packing(torch.float32)
    torch.manual_seed(0)
    layer = pack_linear_layers(nn.Linear(8, 4))
    calls = _count_packed_calls(monkeypatch)
    x = torch.randn(5, 8)
    layer(x).pow(2).sum().backward()
    assert calls[0] == 0
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_repacks_after_in_place_edit_and_cast(require_packing):
    require_packing(torch.float32)
    require_packing(torch.bfloat16)
    torch.manual_seed(0)
    layer = pack_linear_layers(nn.Linear(16, 24))
    x = torch.randn(4, 16)
    with torch.no_grad():
        layer.weight.mul_(-2.0)  # an in-place edit bumps the weight's version
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        layer.to(torch.bfloat16)  # a cast replaces the weight
        got = layer(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(
        got.float(), F.linear(x, layer.weight.float(), layer.bias.float()), atol=0.1, rtol=0.02
    )


def test_copies_and_state_dict_are_those_of_linear(require_packing):
    require_packing(torch.float32)
    layer = pack_linear_layers(nn.Linear(6, 3))
    clone = copy.deepcopy(layer)
    assert clone._packed is None  # rebuilt on first use
    x = torch.randn(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), layer(x))
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_packed_gpt_generates_the_same_greedy_tokens(require_packing):
    require_packing(torch.float32)
    torch.manual_seed(0)
    config = ModelConfig(arch="gpt", vocab_size=50, n_layer=2, n_head=2, n_embd=32, block_size=64)
    reference = build_model(config).eval()
    fast = build_model(config).eval()
    fast.load_state_dict(reference.state_dict())
    use_inference_layout(fast)
    assert isinstance(fast.lm_head, PackedLinear)
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8]]
    settings = GenerationConfig(max_new_tokens=20, temperature=0.0)
    want = [r[0].token_ids for r in generate(reference, prompts, settings)]
    got = [r[0].token_ids for r in generate(fast, prompts, settings)]
    assert got == want


def test_layers_made_under_inference_mode_pack_and_run(require_packing):
    require_packing(torch.float32)
    with torch.inference_mode():  # e.g. a checkpoint loaded inside inference_mode
        layer = nn.Linear(16, 24)
        x = torch.randn(4, 16)
        pack_linear_layers(layer)
        assert type(layer) is PackedLinear
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
