"""Parallel data (line-aligned, gzip, JSON Lines), bucketed batches, and BLEU / ROUGE."""

from __future__ import annotations

import gzip
import json

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from rnn2gpt.config import DataConfig
from rnn2gpt.data.parallel import (
    IGNORE_INDEX,
    PairBatches,
    collate_pairs,
    filter_pairs,
    load_parallel,
    read_jsonl_pairs,
)
from rnn2gpt.errors import DataError
from rnn2gpt.evaluation.bleu_rouge import bleu, rouge


def test_line_aligned_gzip_pairs_and_a_held_out_validation(tmp_path):
    with gzip.open(tmp_path / "train.de.gz", "wt", encoding="utf-8") as fh:
        fh.write("".join(f"eins {i}\n" for i in range(20)))
    (tmp_path / "train.en").write_text("".join(f"one {i}\n" for i in range(20)), encoding="utf-8")
    config = DataConfig(source_path="train.de.gz", target_path="train.en", data_dir=str(tmp_path))
    corpus = load_parallel(config)
    assert len(corpus.train) == 18 and len(corpus.val) == 2 and corpus.test is None
    assert corpus.train.sources[3] == "eins 3" and corpus.val.targets[-1] == "one 19"
    assert "eins 0" in corpus.train_text and "one 0" in corpus.train_text


def test_misaligned_files_are_a_clear_error(tmp_path):
    (tmp_path / "a").write_text("x\ny\n", encoding="utf-8")
    (tmp_path / "b").write_text("x\n", encoding="utf-8")
    with pytest.raises(DataError, match="line-aligned"):
        load_parallel(DataConfig(source_path=str(tmp_path / "a"), target_path=str(tmp_path / "b")))


def test_jsonl_joins_source_sentences_and_keeps_every_reference(tmp_path):
    records = [
        {"source": ["First sentence.", "Second one."], "target": ["tldr a", "tldr b"]},
        {"source": ["Only."], "target": ["just one"]},
    ]
    path = tmp_path / "dev.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(json.dumps(r) for r in records))  # no final newline, as SciTLDR
    split = read_jsonl_pairs(path, "source", "target")
    assert split.sources == ["First sentence. Second one.", "Only."]
    assert split.targets == ["tldr a", "just one"]
    assert split.references == [["tldr a", "tldr b"], ["just one"]]
    with pytest.raises(DataError, match="source_field"):
        read_jsonl_pairs(path, "abstract", "target")


def test_train_all_references_expands_training_pairs_only(tmp_path):
    records = [
        {"source": [f"paper {i}."], "target": [f"tldr {i} a", f"tldr {i} b"][: 1 + i % 2]}
        for i in range(10)
    ]
    (tmp_path / "train.jsonl").write_text(
        "\n".join(json.dumps(r) for r in records), encoding="utf-8"
    )
    base = DataConfig(path="train.jsonl", source_field="source", data_dir=str(tmp_path))
    first_only = load_parallel(base)
    assert len(first_only.train) == 9 and len(first_only.val) == 1

    corpus = load_parallel(DataConfig(**{**base.__dict__, "train_all_references": True}))
    # Papers 0-8 train (4 of them have two TL;DRs); paper 9 is held out before the expansion.
    assert len(corpus.train) == 9 + 4
    assert corpus.train.sources[:3] == ["paper 0.", "paper 1.", "paper 1."]
    assert corpus.train.targets[:3] == ["tldr 0 a", "tldr 1 a", "tldr 1 b"]
    assert "paper 9." not in corpus.train.sources
    assert corpus.val.sources == ["paper 9."] and corpus.val.references == [
        ["tldr 9 a", "tldr 9 b"]
    ]


def test_collate_pads_and_masks_and_the_loss_ignores_padding():
    batch = collate_pairs([[5, 6, 0], [7, 0]], [[8, 9], [4]], bos_id=0, eos_id=0, pad_id=1)
    assert batch.src.tolist() == [[5, 6, 0], [7, 0, 1]]
    assert batch.src_mask.tolist() == [[True, True, True], [True, True, False]]
    assert batch.tgt_in.tolist() == [[0, 8, 9], [0, 4, 1]]
    assert batch.tgt_out.tolist() == [[8, 9, 0], [4, 0, IGNORE_INDEX]]
    assert batch.num_tokens == 5


def test_filter_drops_empty_and_long_pairs():
    sources = [[1, 0], [0], [1, 2, 3, 0], [1, 0]]
    targets = [[2], [2], [2], []]
    assert filter_pairs(sources, targets) == [0, 2]
    assert filter_pairs(sources, targets, max_source_len=3) == [0]


def test_bucketed_batches_depend_only_on_seed_and_step():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 30, (200,), generator=gen).tolist()
    sources = [[3] * n + [0] for n in lengths]
    targets = [[4] * n for n in lengths]
    specials = dict(bos_id=0, eos_id=0, pad_id=1)
    a = PairBatches(sources, targets, 8, seed=5, pool=5, **specials)
    b = PairBatches(sources, targets, 8, seed=5, pool=5, **specials)
    for step in (0, 3, 24, 25, 60):  # 25 batches per pass: later steps are later passes
        assert torch.equal(a.get(step).src, b.get(step).src)
        assert torch.equal(a.get(step).tgt_in, b.get(step).tgt_in)
    first_pass = [a.get(step).src_mask.sum(1).tolist() for step in range(len(a))]
    second_pass = [a.get(step).src_mask.sum(1).tolist() for step in range(len(a), 2 * len(a))]
    assert first_pass != second_pass  # each pass reshuffles
    # Each pass covers every pair once, and buckets keep lengths close.
    seen, spread = [], []
    for step in range(len(a)):
        batch = a.get(step)
        rows = batch.src_mask.sum(1).tolist()
        seen.extend(rows)
        spread.append(max(rows) - min(rows))
    assert sorted(seen) == sorted(len(s) for s in sources)
    assert sum(spread) / len(spread) < 5


def test_bleu_equals_sacrebleu_with_its_signature():
    hyps = ["the cat sat on the mat", "a dog runs in the park", "hello there"]
    refs = ["the cat sat on a mat", "the dog runs in the park", "hello there friend"]
    ours = bleu(hyps, refs)
    theirs = sacrebleu.corpus_bleu(hyps, [refs])
    assert ours["bleu"] == pytest.approx(theirs.score)
    assert ours["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    two = bleu(hyps, [[r, h] for r, h in zip(refs, hyps)])
    assert two["bleu"] == pytest.approx(100.0)


def test_rouge_equals_rouge_score():
    hyps = ["the cats are sitting on the mat", "dogs run fast"]
    refs = [["the cat sat on the mat"], ["a dog runs quickly", "dogs run very fast"]]
    ours = rouge(hyps, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    first = scorer.score(refs[0][0], hyps[0])
    second = scorer.score_multi(refs[1], hyps[1])
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = 50.0 * (first[key].fmeasure + second[key].fmeasure)
        assert ours[key] == pytest.approx(expected)
