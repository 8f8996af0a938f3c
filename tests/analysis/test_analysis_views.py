"""Attention maps, gate activations and the per-token view, checked against the model itself."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F
from analysis_helpers import tiny_model, tiny_text

from rnn2gpt.analysis.attention import attention_maps, plot_attention
from rnn2gpt.analysis.gates import gate_activations, gate_summary, plot_gates
from rnn2gpt.analysis.token_view import (
    TABLE_HEADERS,
    next_token_log_probs,
    score_text,
    summary,
    write_token_view,
)
from rnn2gpt.tokenizers import CharTokenizer

PNG = b"\x89PNG\r\n\x1a\n"


def test_attention_maps_are_causal_distributions(tmp_path, char_tokenizer):
    model = tiny_model("gpt", char_tokenizer.vocab_size)
    ids = char_tokenizer.encode("the cat sat")
    maps = attention_maps(model, torch.tensor([ids]))
    assert sorted(maps) == [0, 1]
    for weights in maps.values():
        assert weights.shape == (2, len(ids), len(ids))  # (n_head, T, S)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, len(ids)))
        assert torch.all(weights.triu(diagonal=1) == 0)  # nothing attends to the future
    files = plot_attention(maps, ["t", "h", "e"] + list(" cat sat"), tmp_path)
    assert [f.name for f in files] == ["attention_layer0.png", "attention_layer1.png"]
    assert all(f.read_bytes()[:8] == PNG for f in files)


def test_recurrent_models_record_no_attention(char_tokenizer):
    model = tiny_model("lstm", char_tokenizer.vocab_size)
    assert attention_maps(model, torch.tensor([[1, 2, 3]])) == {}


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("lstm", {"input_gate", "forget_gate", "output_gate"}),
        ("gru", {"reset_gate", "update_gate"}),
        ("rnn", set()),
        ("gpt", set()),
    ],
)
def test_gate_activations_per_architecture(tmp_path, char_tokenizer, arch, expected):
    model = tiny_model(arch, char_tokenizer.vocab_size)
    ids = char_tokenizer.encode("a dog ran")
    gates = gate_activations(model, torch.tensor([ids]))
    assert {name.split(".", 1)[1] for name in gates} == expected
    if not expected:
        assert plot_gates(gates, [], tmp_path / "gates.png") is None
        return
    assert {name.split(".", 1)[0] for name in gates} == {"layer0", "layer1"}
    for values in gates.values():
        assert values.shape == (len(ids), 16)  # (T, H)
        assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0  # sigmoids
    for _, mean, open_share, closed_share in gate_summary(gates):
        assert 0 < mean < 1 and 0 <= open_share <= 1 and 0 <= closed_share <= 1
    png = plot_gates(gates, list("a dog ran"), tmp_path / "gates.png")
    assert png is not None and png.read_bytes()[:8] == PNG


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_token_probabilities_and_entropy_match_the_models_softmax(char_tokenizer, arch):
    model = tiny_model(arch, char_tokenizer.vocab_size, seed=4)
    text = "the quick brown fox"
    ids = char_tokenizer.encode(text)
    scores = score_text(model, char_tokenizer, text, top_k=3)
    assert [s.token_id for s in scores] == ids
    assert "".join(s.piece for s in scores) == text
    assert scores[0].prob is None  # a char tokenizer has no start token: no context

    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    probs = logits[0].softmax(-1)  # (T, V)
    for t in range(1, len(ids)):
        dist = probs[t - 1]
        assert scores[t].prob == pytest.approx(float(dist[ids[t]]), rel=1e-5)
        entropy = float(-(dist * dist.log()).sum())
        assert scores[t].entropy == pytest.approx(entropy, rel=1e-5)
        assert scores[t].top[0][2] == pytest.approx(float(dist.max()), rel=1e-5)
        assert sum(q for _, _, q in scores[t].top) <= 1.0 + 1e-6
    # The mean surprisal is the model's cross-entropy on the text (in bits).
    loss = F.cross_entropy(logits[0, :-1], torch.tensor(ids[1:]))
    stats = summary(scores)
    assert stats["mean_surprisal_bits"] == pytest.approx(float(loss) / 0.6931471805599453, rel=1e-5)
    assert stats["scored"] == len(ids) - 1


def test_long_texts_use_overlapping_windows_of_the_context(char_tokenizer):
    model = tiny_model("gpt", char_tokenizer.vocab_size, block_size=16)
    ids = char_tokenizer.encode(tiny_text()[:50])
    log_probs = next_token_log_probs(model, ids)
    assert log_probs.shape == (49, char_tokenizer.vocab_size)
    with torch.no_grad():
        first, _ = model(torch.tensor([ids[:16]]))
        second, _ = model(torch.tensor([ids[8:24]]))  # the next window keeps 8 tokens
    torch.testing.assert_close(log_probs[:15], first[0, :15].log_softmax(-1))
    # Targets 16..23 come from the second window, each with at least 8 tokens of context.
    torch.testing.assert_close(log_probs[15:23], second[0, 7:15].log_softmax(-1))


def test_token_view_files(tmp_path):
    tokenizer = CharTokenizer.train(tiny_text() + "<>&")
    model = tiny_model("gru", tokenizer.vocab_size)
    scores = score_text(model, tokenizer, "she sells <sea> & shells\n")
    html_path, md_path, csv_path = write_token_view(scores, tmp_path)
    page = html_path.read_text(encoding="utf-8")
    assert page.count('class="tok"') >= len(scores)  # one coloured span per token
    # Text is escaped, in the spans and in the table.
    assert ">&lt;</span>" in page and ">&amp;</span>" in page and "<sea>" not in page
    assert all(h in page for h in TABLE_HEADERS)
    assert "| position | token |" in md_path.read_text(encoding="utf-8")
    with open(csv_path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == len(scores) + 1 and rows[0][3] == "probability"
