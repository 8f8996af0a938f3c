"""int8 weight-only quantization: layers, models of every architecture, checkpoints, kernels."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnn2gpt.cli import main
from rnn2gpt.config import ModelConfig, RunConfig, TrainConfig
from rnn2gpt.models import avx2_int8, build_model
from rnn2gpt.models.quantized import (
    KERNELS,
    Int8Linear,
    choose_int8_kernel,
    int8pack_available,
    is_quantized,
    kernel_agrees,
    quantize_model,
    quantize_weight,
)

SHAPES = {
    "gpt": dict(arch="gpt", n_layer=2, n_head=2, n_embd=64, block_size=64),
    "lstm": dict(arch="lstm", n_layer=1, n_embd=48, tie_weights=False),
    "gru": dict(arch="gru", n_layer=1, n_embd=48),
    "rnn": dict(arch="rnn", n_layer=1, n_embd=48),
}


def test_quantize_weight_rounds_each_row_to_its_own_scale():
    torch.manual_seed(0)
    weight = torch.randn(16, 40) * torch.linspace(0.01, 10, 16)[:, None]
    q, scale = quantize_weight(weight)
    assert q.dtype == torch.int8 and scale.shape == (16,)
    assert q.abs().amax(dim=1).eq(127).all()  # each row uses its full range
    error = (q.float() * scale[:, None] - weight).abs()
    assert (error <= scale[:, None] / 2 + 1e-6).all()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [15, 1])  # one row: the GEMV compiled per shape, without Dynamo
def test_int8_layers_equal_the_dequantized_fp32_layer(kernel, dtype, bias, rows, monkeypatch):
    if kernel == "int8pack" and not int8pack_available():
        pytest.skip("this PyTorch build has no torch._weight_int8pack_mm (int8 weight-only kernel)")
    if kernel == "avx2" and avx2_int8._kernel()[1] is not None:  # the machine's answer
        pytest.skip(f"the AVX2 int8 kernel cannot run here: {avx2_int8._kernel()[1]}")
    from rnn2gpt.models import quantized

    torch.manual_seed(0)
    linear = nn.Linear(96, 80, bias=bias)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(3, 5, 96) if rows == 15 else torch.randn(1, 1, 96)
    probe = x.reshape(-1, 96).to(dtype)
    if kernel == "gemv" and not kernel_agrees(kernel, probe, layer.qweight, layer.scale):
        # A wrong compiled kernel is refused by the choice (tested below); the others remain.
        pytest.skip(
            "torch.compile's int8 GEMV gives wrong results at this CPU capability "
            f"({torch.backends.cpu.get_cpu_capability()}); the kernel choice refuses it"
        )
    monkeypatch.setattr(quantized, "choose_int8_kernel", lambda *a: kernel)
    want = F.linear(x, layer.dequantized(), layer.bias)
    with torch.inference_mode():
        got = layer(x.to(dtype))
    assert got.shape == (*x.shape[:-1], 80) and got.dtype == dtype
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.float(), want, rtol=tolerance, atol=tolerance)


def test_the_kernel_choice_is_a_measured_one_and_plain_without_fast_paths(fastpaths_off):
    assert choose_int8_kernel.__wrapped__(1, 64, 64, torch.float32) == "dequant"


def test_the_kernel_choice_with_fast_paths(fastpaths_auto):
    choice = choose_int8_kernel.__wrapped__(1, 256, 256, torch.float32)
    assert choice in KERNELS
    assert choose_int8_kernel.__wrapped__(8, 256, 256, torch.float32) in KERNELS
    assert choose_int8_kernel.__wrapped__(16, 256, 256, torch.float32) != "gemv"  # 8 rows at most


def test_a_kernel_that_gives_wrong_results_is_never_chosen(fastpaths_auto, monkeypatch):
    from rnn2gpt.models import quantized

    def wrong(x, q, scale, bias):
        return torch.zeros(x.shape[0], q.shape[0], dtype=x.dtype)  # instantly fast, and wrong

    kernels = dict(quantized._KERNEL_FUNCTIONS, int8pack=wrong, gemv=wrong, avx2=wrong)
    monkeypatch.setattr(quantized, "_KERNEL_FUNCTIONS", kernels)
    monkeypatch.setattr(quantized, "int8pack_available", lambda: True)
    assert choose_int8_kernel.__wrapped__(1, 64, 32, torch.float32) == "dequant"


def _model(arch, vocab=40):
    torch.manual_seed(0)
    return build_model(ModelConfig(vocab_size=vocab, **SHAPES[arch])).eval()


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_every_architecture_quantizes_and_keeps_its_predictions(arch):
    model = _model(arch)
    tokens = torch.randint(0, 40, (2, 12))
    with torch.inference_mode():
        want, _ = model(tokens)
        quantized = quantize_model(model)
        got, _ = quantized(tokens)
    assert is_quantized(quantized)
    linears = [m for m in quantized.modules() if isinstance(m, nn.Linear)]
    assert linears == []  # every linear layer is int8 now
    # int8 rounding moves logits a little, never the picture: same top choice almost everywhere
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9
    torch.testing.assert_close(got, want, rtol=0.1, atol=0.1)


def test_a_quantized_checkpoint_round_trips_and_is_smaller(tmp_path, capsys):
    from rnn2gpt import load
    from rnn2gpt.checkpoint import save_checkpoint
    from rnn2gpt.tokenizers import CharTokenizer

    tokenizer = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz .,\n")
    shape = ModelConfig(
        arch="gpt", vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_embd=128, block_size=64
    )
    torch.manual_seed(0)
    config = RunConfig(model=shape, train=TrainConfig(threads=1, progress=False))
    save_checkpoint(
        tmp_path / "run" / "best", model=build_model(shape), tokenizer=tokenizer, config=config
    )
    assert main(["quantize", str(tmp_path / "run"), str(tmp_path / "q")]) == 0
    assert "int8 checkpoint written" in capsys.readouterr().out

    full = (tmp_path / "run" / "best" / "model.safetensors").stat().st_size
    small = (tmp_path / "q" / "model.safetensors").stat().st_size
    assert small < 0.4 * full  # linear weights at a quarter; embeddings and norms stay fp32

    from_disk = load(str(tmp_path / "q"))
    in_memory = load(str(tmp_path / "run"), quantize="int8")
    assert is_quantized(from_disk.model)
    tokens = torch.tensor([tokenizer.encode("hello world")])
    with torch.inference_mode():
        torch.testing.assert_close(from_disk.model(tokens)[0], in_memory.model(tokens)[0])
    assert from_disk.generate("he", max_new_tokens=20, temperature=0.0) == in_memory.generate(
        "he", max_new_tokens=20, temperature=0.0
    )
    # generate --quantize int8 on the original, and plain generate on the int8 checkpoint
    for args in (["--quantize", "int8"], []):
        source = tmp_path / ("run" if args else "q")
        code = main(
            ["generate", str(source), "--prompt", "he", "--max-new-tokens", "8", "--json", *args]
        )
        assert code == 0
        assert len(json.loads(capsys.readouterr().out)["token_ids"]) == 8
    assert main(["quantize", str(tmp_path / "run"), str(tmp_path / "q")]) == 2  # no overwrite
    assert "--overwrite" in capsys.readouterr().err
