"""The exact GELU and the causal attention in C (models/native_ops.py) give PyTorch's numbers and
gradients, and the GPT takes them only where they apply.

Where the C kernels cannot run (not x86 with AVX2 and FMA, or no compiler), the tests of their
results skip naming why; the fallback (PyTorch's kernels) is what every other test runs, and
what :func:`test_where_they_do_not_apply_pytorch_computes` checks is chosen.
"""

from __future__ import annotations

import ctypes

import pytest
import torch
import torch.nn.functional as F

from rnn2gpt.models import native, native_blocks, native_ops
from rnn2gpt.models.ops import SMALL_GELU_NUMEL


def pytorch_attention(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    batch, steps, width3 = qkv.shape
    width = width3 // 3
    q, k, v = qkv.view(batch, steps, 3, n_head, width // n_head).permute(2, 0, 3, 1, 4).unbind(0)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(batch, steps, width)


def forward_backward(function, x: torch.Tensor, grad: torch.Tensor, *args):
    x = x.detach().clone().requires_grad_()
    y = function(x, *args)
    y.backward(grad)
    return y.detach(), x.grad


# (batch, tokens, heads, head width): odd widths take every scalar tail, 1 token a single
# query, 33 and 40 tokens partial vectors of keys, widths 48 and 64 more than one 32-float pass.
ATTENTION_SHAPES = [
    (2, 5, 3, 7),
    (1, 1, 2, 8),
    (3, 17, 2, 20),
    (2, 33, 1, 48),
    (2, 64, 4, 32),
    (1, 40, 2, 64),
]


@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=[str(s) for s in ATTENTION_SHAPES])
def test_attention_and_its_gradient_equal_pytorch(c_kernels, shape):
    batch, steps, heads, dim = shape
    torch.manual_seed(0)
    qkv = torch.randn(batch, steps, 3 * heads * dim)
    grad = torch.randn(batch, steps, heads * dim)
    y, dqkv = forward_backward(native_ops.causal_attention, qkv, grad, heads)
    y_ref, dqkv_ref = forward_backward(pytorch_attention, qkv, grad, heads)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dqkv, dqkv_ref, rtol=1e-4, atol=1e-5)


def test_attention_with_peaked_scores_stays_exact(c_kernels):
    """Scores far apart (a trained model's sharp attention): probabilities near zero and near one."""
    torch.manual_seed(1)
    qkv = torch.randn(2, 24, 3 * 2 * 16) * 6.0
    grad = torch.randn(2, 24, 32)
    y, dqkv = forward_backward(native_ops.causal_attention, qkv, grad, 2)
    y_ref, dqkv_ref = forward_backward(pytorch_attention, qkv, grad, 2)
    assert torch.isfinite(dqkv).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dqkv, dqkv_ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 1000, 2 * SMALL_GELU_NUMEL + 3])
def test_gelu_and_its_gradient_equal_pytorch(c_kernels, numel):
    torch.manual_seed(0)
    x = torch.randn(numel) * 4.0
    x[: min(numel, 4)] = torch.tensor([-30.0, 30.0, 0.0, -6.0])[: min(numel, 4)]  # tails, zero
    grad = torch.randn(numel)
    y, dx = forward_backward(native_ops.gelu, x, grad)
    y_ref, dx_ref = forward_backward(F.gelu, x, grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["no_grad", "input without grad"])
def test_a_gelu_without_backward_keeps_no_slope(c_kernels, case):
    """The forward writes GELU'(x) for the backward only when one can follow."""
    torch.manual_seed(0)
    x = torch.randn(2 * SMALL_GELU_NUMEL + 5) * 3.0
    if case == "no_grad":
        with torch.no_grad():
            y = native_ops.gelu(x.requires_grad_())
    else:
        y = native_ops.gelu(x)
    assert y.grad_fn is None
    torch.testing.assert_close(y, F.gelu(x.detach()), rtol=1e-5, atol=1e-6)


def layer_norm_with_residual(x, weight, bias, grad, residual, eps=1e-5):
    """(y, dx + residual, d_weight, d_bias) from C, and the same from PyTorch's autograd."""
    x_ref = x.detach().clone().requires_grad_()
    w_ref = None if weight is None else weight.detach().clone().requires_grad_()
    b_ref = None if bias is None else bias.detach().clone().requires_grad_()
    y_ref = F.layer_norm(x_ref, x.shape[-1:], w_ref, b_ref, eps)
    y_ref.backward(grad)
    forward = native_ops.layer_norm(x, weight, bias, eps)
    d_x, d_w, d_b = native_ops.layer_norm_backward(
        grad, x, forward, weight, residual, (weight is not None, bias is not None)
    )
    ours = (forward[0], d_x, d_w, d_b)
    theirs = (
        y_ref,
        x_ref.grad + residual,
        getattr(w_ref, "grad", None),
        getattr(b_ref, "grad", None),
    )
    return ours, theirs


# (rows, width): odd widths take the scalar tails; 70 rows three chunks of the weight's sums.
@pytest.mark.parametrize("shape", [(5, 7), (70, 128), (33, 20), (1, 192)])
@pytest.mark.parametrize("affine", ["weight and bias", "weight", "neither"])
def test_layer_norm_and_its_gradients_equal_pytorch(c_kernels, shape, affine):
    torch.manual_seed(0)
    rows, width = shape
    x = torch.randn(rows, width) * 3.0 + 1.5  # off-centre: the mean matters
    weight = torch.randn(width) if affine != "neither" else None
    bias = torch.randn(width) if affine == "weight and bias" else None
    grad, residual = torch.randn(rows, width), torch.randn(rows, width)
    ours, theirs = layer_norm_with_residual(x, weight, bias, grad, residual)
    for a, b in zip(ours, theirs, strict=True):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_thread_count_does_not_change_a_bit(c_kernels):
    torch.manual_seed(0)
    qkv, grad = torch.randn(3, 40, 3 * 4 * 16), torch.randn(3, 40, 64)
    x, dy = torch.randn(3 * SMALL_GELU_NUMEL + 5), torch.randn(3 * SMALL_GELU_NUMEL + 5)
    rows = torch.randn(200, 24)  # LayerNorm: 200 rows, seven chunks of the weight's sums
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(
                forward_backward(native_ops.causal_attention, qkv, grad, 4)
                + forward_backward(native_ops.gelu, x, dy)
                + layer_norm_with_residual(rows, rows[0], rows[1], rows * 2, rows.flip(0))[0]
            )
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def matrices(m: int, k: int, n: int, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """a (m, k) and b (k, n), each row-major or the transpose of a row-major matrix."""
    a = torch.randn(k, m).t() if layout.startswith("a^T") else torch.randn(m, k)
    b = torch.randn(n, k).t() if layout.endswith("b^T") else torch.randn(k, n)
    return a, b


# (m, k, n): sizes off the 6 x 16 tiles take the edge tiles; k 600 two blocks of 256 rows and a
# rest; columns over rows splits the threads by columns.
@pytest.mark.parametrize(
    "m, k, n", [(1, 1, 1), (7, 5, 3), (13, 600, 17), (64, 128, 48), (5, 9, 70)]
)
@pytest.mark.parametrize("layout", ["a b", "a b^T", "a^T b", "a^T b^T"])
def test_our_matrix_product_equals_pytorchs(c_kernels, m, k, n, layout):
    torch.manual_seed(0)
    a, b = matrices(m, k, n, layout)
    start = torch.randn(m, n)
    written = native_ops.own_product(a, b, torch.full((m, n), float("nan")))
    added = native_ops.own_product(a, b, start.clone(), accumulate=True)
    torch.testing.assert_close(written, a @ b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(added, start + a @ b, rtol=1e-4, atol=1e-4)


def test_our_product_gives_the_same_bits_on_any_thread_count(c_kernels):
    torch.manual_seed(0)
    shapes = [(90, 40, 20, "a b^T"), (12, 300, 100, "a^T b")]  # split by rows; by columns
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            torch.manual_seed(0)
            results.append(
                [native_ops.own_product(*matrices(*s), torch.empty(s[0], s[2])) for s in shapes]
            )
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def _counting(monkeypatch, name):
    calls = []
    real = getattr(native_ops, name)

    def counted(*args):
        calls.append(tuple(args[0].shape))
        return real(*args)

    monkeypatch.setattr(native_ops, name, counted)
    return calls


def test_a_gpt_trains_through_them_with_pytorchs_losses_and_gradients(
    make_model, c_kernels, monkeypatch
):
    """A training forward and backward of a GPT whose MLP is wide enough for the C GELU, through
    its modules (the blocks function, tested in test_models_native_blocks.py, is kept out)."""
    monkeypatch.setattr(native_blocks, "plain_blocks", lambda *args: None)
    tokens = torch.randint(0, 13, (2, 40), generator=torch.Generator().manual_seed(0))

    def loss_and_grads():
        model = make_model(n_embd=64, n_head=4, block_size=64).train()
        logits, _ = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    attention = _counting(monkeypatch, "causal_attention")
    gelu = _counting(monkeypatch, "gelu")
    loss, grads = loss_and_grads()
    assert len(attention) == 2 and len(gelu) == 2, "both layers ran both kernels"
    monkeypatch.setenv("RNN2GPT_FASTPATHS", "off")
    loss_ref, grads_ref = loss_and_grads()
    assert len(attention) == 2 and len(gelu) == 2, "fast paths off: PyTorch's kernels"
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)


def test_decoding_continues_from_the_cache_of_a_fresh_forward(make_model, c_kernels, monkeypatch):
    """The cache of a forward through the C attention holds the keys and values (as views of
    the packed projection): the next tokens see them as they would PyTorch's."""
    model = make_model(n_head=2)
    prompt, more = torch.tensor([[1, 2, 3, 4, 5, 6]]), torch.tensor([[7], [8]])
    attention = _counting(monkeypatch, "causal_attention")

    def continued():
        with torch.no_grad():
            first, cache = model(prompt)
            second, cache = model(more[:1], cache)
            third, _ = model(more[1:], cache)
        return torch.cat([first[:, -1], second[:, -1], third[:, -1]])

    fast = continued()
    assert attention == [(1, 6, 48)] * 2, "the prompt ran in C, the steps did not"
    monkeypatch.setenv("RNN2GPT_FASTPATHS", "off")
    torch.testing.assert_close(fast, continued(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "case",
    ["bf16", "autocast", "fast paths off", "AVX-512", "a step over a cache", "a small GELU"],
)
def test_where_they_do_not_apply_pytorch_computes(make_model, monkeypatch, fastpaths_auto, case):
    attention = _counting(monkeypatch, "causal_attention")
    gelu = _counting(monkeypatch, "gelu")
    monkeypatch.setattr(native_ops, "cpu_capability", lambda: "AVX2")
    model = make_model(n_embd=64, n_head=4, block_size=64)
    tokens = torch.randint(0, 13, (2, 40), generator=torch.Generator().manual_seed(0))
    if case == "bf16":
        model = model.to(torch.bfloat16)
    elif case == "fast paths off":
        monkeypatch.setenv("RNN2GPT_FASTPATHS", "off")
    elif case == "AVX-512":
        monkeypatch.setattr(native_ops, "cpu_capability", lambda: "AVX512")
    elif case == "a small GELU":
        tokens = tokens[:1, :8]
    with torch.no_grad():
        if case == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model(tokens)
        elif case == "a step over a cache":
            _, cache = model(tokens[:, :1])
            model(tokens[:, 1:3], cache)
        else:
            model(tokens)
    assert attention == [] or case == "a small GELU"
    assert gelu == []


def test_doctor_names_the_path_and_why():
    path = native_ops.training_path()
    reason = native_ops.unavailable_reason()
    if reason is None:
        assert path.startswith("the exact GELU and causal attention in C")
    else:
        assert reason in path and path.startswith("PyTorch's")


def test_the_reason_names_the_capability(monkeypatch, fastpaths_auto):
    if native.load_built(native_ops.KERNEL)[1] is not None:
        pytest.skip("the C kernels cannot run here: the capability is not what rules them out")
    monkeypatch.setattr(native_ops, "cpu_capability", lambda: "AVX512")
    assert "AVX512" in native_ops.unavailable_reason()
    monkeypatch.setattr(native_ops, "cpu_capability", lambda: "AVX2")
    assert native_ops.unavailable_reason() is None


def test_a_compiler_without_openmp_still_builds_the_kernels(monkeypatch, tmp_path):
    """A failed build with OpenMP is retried without it (the kernels then run on one thread)."""
    if native.unsupported_here() is not None:
        pytest.skip(f"no C kernels on this machine: {native.unsupported_here()}")
    monkeypatch.setenv("RNN2GPT_CACHE", str(tmp_path))
    missing = (
        "-fno-such-openmp-flag"  # the compiler refuses it, as one without OpenMP does -fopenmp
    )
    monkeypatch.setattr(native, "OPENMP", missing)
    monkeypatch.setattr(native, "FLAGS", (*(f for f in native.FLAGS if f != "-fopenmp"), missing))
    source = tmp_path / "answer.c"
    source.write_text("int rnn2gpt_answer(void) { return 42; }\n")
    built = native.built_library(source)
    assert ctypes.CDLL(str(built)).rnn2gpt_answer() == 42
    assert built.parent == tmp_path / "kernels"
