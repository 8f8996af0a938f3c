"""Separate source and target tokenizers (tokenizer.separate=true) for encoder-decoders.

The synthetic task translates English colour words word by word into Greek-script words, so the
two sides share no token: a source encoded with the target tokenizer (or the reverse) would be
all ``<unk>``, and a model that translates correctly proves each side used its own tokenizer.
Two English words share one Greek word, so the vocabularies differ in size (10 vs 9 tokens).
"""

from __future__ import annotations

import random
import shutil

import pytest
import torch
from seq2seq_helpers import write_parallel_files

from rnn2gpt.api import TrainRequest
from rnn2gpt.checkpoint import SOURCE_TOKENIZER_DIR, load_checkpoint, save_checkpoint
from rnn2gpt.cli import build_parser, main
from rnn2gpt.config import ModelConfig, RunConfig
from rnn2gpt.errors import CheckpointError, ConfigError
from rnn2gpt.models import build_model
from rnn2gpt.tasks import evaluate_seq2seq, load_seq2seq, translate
from rnn2gpt.tokenizers import WordTokenizer
from rnn2gpt.training import train

GREEK = {
    "red": "κόκκινο",
    "green": "πράσινο",
    "blue": "μπλε",
    "black": "μαύρο",
    "white": "λευκό",
    "pink": "ροζ",
    "gray": "γκρι",
    "grey": "γκρι",  # two source words, one target word: the vocabularies differ in size
}
SOURCE_VOCAB = len(GREEK) + 2  # the words + <unk>, <eos>
TARGET_VOCAB = len(set(GREEK.values())) + 2


def _pairs(count: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    sources, targets = [], []
    for _ in range(count):
        words = [rng.choice(sorted(GREEK)) for _ in range(rng.randint(2, 4))]
        sources.append(" ".join(words))
        targets.append(" ".join(GREEK[w] for w in words))
    return sources, targets


def _config(folder, **train) -> RunConfig:
    files = {
        key: str(path)
        for key, path in write_parallel_files(
            folder, _pairs, (("train", 240, 0), ("val", 16, 1))
        ).items()
    }
    values = dict(
        task="translation",
        batch_size=16,
        max_steps=150,
        lr=1e-2,
        warmup_steps=5,
        eval_interval=150,
        eval_batches=0,
        log_interval=50,
        progress=False,
        precision="fp32",
        threads=1,
        seed=0,
        early_stop_metric="bleu",
        metric_samples=8,
    )
    values.update(train)
    return RunConfig.from_dict(
        {
            "model": dict(arch="seq2seq-rnn", attention="luong", n_layer=1, n_embd=32),
            "tokenizer": {"kind": "word", "separate": True},
            "data": dict(
                source_path=files["train.src"],
                target_path=files["train.tgt"],
                val_source_path=files["val.src"],
                val_target_path=files["val.tgt"],
                cache_dir=str(folder / "cache"),
            ),
            "train": values,
        }
    ).validate()


@pytest.fixture(scope="module")
def separate_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("separate_tokenizers")
    result = train(_config(folder), folder / "run")
    return folder, result


# --------------------------------------------------------------------------- settings


def test_separate_tokenizers_are_for_seq2seq_tasks_only():
    with pytest.raises(ConfigError, match="tokenizer.separate"):
        RunConfig.from_dict({"tokenizer": {"separate": True}}).validate()
    with pytest.raises(ConfigError, match="src_vocab_size"):
        ModelConfig(arch="gpt", vocab_size=10, src_vocab_size=5).validate()
    with pytest.raises(ConfigError, match="tokenizer.path"):
        RunConfig.from_dict(
            {"tokenizer": {"kind": "bpe", "path": "t.json", "separate": True}}
        ).validate()
    config = RunConfig().with_overrides(["tokenizer.separate=true"])
    assert config.tokenizer.separate and not RunConfig().tokenizer.separate
    args = build_parser().parse_args(["train", "--task", "translation", "--separate-tokenizers"])
    request = TrainRequest(task=args.task, separate_tokenizers=args.separate_tokenizers)
    assert request.run_config().tokenizer.separate
    args = build_parser().parse_args(["train", "--task", "translation"])
    request = TrainRequest(task=args.task, separate_tokenizers=args.separate_tokenizers)
    assert not request.run_config().tokenizer.separate


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("arch", ["seq2seq-rnn", "transformer"])
def test_the_encoder_gets_its_own_embedding_only_with_a_source_vocabulary(arch):
    shape = dict(arch=arch, n_layer=1, n_embd=16, n_head=2, block_size=16, vocab_size=12)
    joint = build_model(ModelConfig(**shape))
    torch.manual_seed(0)
    model = build_model(ModelConfig(**shape, src_vocab_size=5))
    assert not any("src_" in name for name in joint.state_dict())  # joint weights unchanged
    src_embed = model.src_embedding if arch == "seq2seq-rnn" else model.src_wte
    tgt_embed = model.embedding if arch == "seq2seq-rnn" else model.wte
    head = model.out if arch == "seq2seq-rnn" else model.lm_head
    assert src_embed.weight.shape == (5, 16) and tgt_embed.weight.shape == (12, 16)
    assert head.weight is tgt_embed.weight  # output tied to the target side only
    assert src_embed.weight.data_ptr() != tgt_embed.weight.data_ptr()

    src = torch.tensor([[4, 3, 1], [2, 1, 0]])  # ids of the 5-token source vocabulary
    mask = torch.tensor([[True, True, True], [True, True, False]])
    tgt = torch.tensor([[1, 11, 7], [1, 9, 0]])  # ids of the 12-token target vocabulary
    logits, _ = model(tgt, source=src, source_mask=mask)
    assert logits.shape == (2, 3, 12)
    logits.sum().backward()
    assert src_embed.weight.grad is not None and src_embed.weight.grad[:5].abs().sum() > 0
    with pytest.raises(IndexError):  # a target-vocabulary id is not a source id
        model(tgt, source=torch.tensor([[11, 1]]))


# --------------------------------------------------------------------------- training


def test_training_builds_two_tokenizers_and_the_model_translates(separate_run):
    folder, result = separate_run
    assert result.final_metrics["val_bleu"] > 50  # validation decoding used both tokenizers
    ckpt = load_checkpoint(folder / "run" / "best")
    source, target = ckpt.source_tokenizer, ckpt.tokenizer
    assert ckpt.separate_tokenizers
    assert (source.vocab_size, target.vocab_size) == (SOURCE_VOCAB, TARGET_VOCAB)
    model_cfg = ckpt.config.model
    assert (model_cfg.src_vocab_size, model_cfg.vocab_size) == (SOURCE_VOCAB, TARGET_VOCAB)
    assert ckpt.model.src_embedding.weight.shape[0] == SOURCE_VOCAB
    assert ckpt.model.embedding.weight.shape[0] == TARGET_VOCAB
    # Each tokenizer learned one side only.
    assert source.encode("πράσινο") == [source.unk_id]
    assert target.encode("green") == [target.unk_id]
    assert source.unk_id not in source.encode("gray grey pink")

    sources, targets = _pairs(8, 7)
    out = translate(folder / "run", sources, num_beams=2)
    assert sum(o == t for o, t in zip(out, targets)) >= 7, list(zip(out, targets))
    scores = evaluate_seq2seq(folder / "run", sources, targets)
    assert scores["bleu"] > 50


def test_checkpoint_round_trips_both_tokenizers(separate_run, tmp_path):
    folder, _ = separate_run
    best = folder / "run" / "best"
    assert (best / SOURCE_TOKENIZER_DIR / "tokenizer.json").is_file()
    first = load_checkpoint(best)
    saved = save_checkpoint(
        tmp_path / "copy",
        model=first.model,
        tokenizer=first.tokenizer,
        source_tokenizer=first.source_tokenizer,
        config=first.config,
    )
    again = load_checkpoint(saved)
    text_src, text_tgt = "grey red white", "γκρι κόκκινο λευκό"
    for a, b in ((first, again), (first, load_checkpoint(best))):
        assert a.source_tokenizer.encode(text_src) == b.source_tokenizer.encode(text_src)
        assert a.tokenizer.encode(text_tgt) == b.tokenizer.encode(text_tgt)
        assert a.source_tokenizer.fingerprint() == b.source_tokenizer.fingerprint()
        assert a.tokenizer.fingerprint() == b.tokenizer.fingerprint()
    assert first.source_tokenizer.encode(text_src) != first.tokenizer.encode(text_tgt)
    runner = load_seq2seq(saved)
    assert runner.source_tokenizer.fingerprint() == first.source_tokenizer.fingerprint()
    assert runner.run(["grey red white"], num_beams=1) == [text_tgt]

    # The source tokenizer is required by a separate checkpoint ...
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    shutil.rmtree(broken / SOURCE_TOKENIZER_DIR)
    with pytest.raises(CheckpointError, match=SOURCE_TOKENIZER_DIR):
        load_checkpoint(broken)
    # ... and by saving one.
    with pytest.raises(CheckpointError, match="source_tokenizer"):
        save_checkpoint(
            tmp_path / "bad", model=first.model, tokenizer=first.tokenizer, config=first.config
        )


def test_fine_tuning_keeps_both_tokenizers(separate_run):
    folder, _ = separate_run
    best = load_checkpoint(folder / "run" / "best")
    config = _config(folder, max_steps=2, eval_interval=2, early_stop_metric="val_loss")
    result = train(config, folder / "tuned", init_from=str(folder / "run" / "best"))
    assert result.steps == 2
    tuned = load_checkpoint(folder / "tuned" / "last")
    assert tuned.source_tokenizer.fingerprint() == best.source_tokenizer.fingerprint()
    assert tuned.tokenizer.fingerprint() == best.tokenizer.fingerprint()
    assert tuned.config.model.src_vocab_size == SOURCE_VOCAB


def test_cli_translates_plots_attention_and_shows_both_tokenizers(separate_run, capsys):
    folder, _ = separate_run
    (folder / "in.txt").write_text("pink black\n", encoding="utf-8")
    png = folder / "attention.png"
    args = ["translate", str(folder / "run"), "--input", str(folder / "in.txt")]
    assert main([*args, "--num-beams", "1", "--plot-attention", str(png)]) == 0
    assert capsys.readouterr().out.splitlines() == ["ροζ μαύρο"]
    assert png.is_file() and png.stat().st_size > 0
    assert main(["info", str(folder / "run" / "best")]) == 0
    info = capsys.readouterr().out
    assert f"word ({SOURCE_VOCAB} tokens)" in info and f"word ({TARGET_VOCAB} tokens)" in info


def test_joint_checkpoints_have_one_tokenizer_for_both_sides(tmp_path):
    text = "red green blue\nκόκκινο πράσινο μπλε\n"
    tokenizer = WordTokenizer.train(text)
    config = RunConfig.from_dict(
        {
            "model": dict(arch="transformer", n_layer=1, n_embd=16, n_head=2, block_size=16),
            "tokenizer": {"kind": "word"},
            "train": {"task": "translation"},
        }
    )
    config = config.with_values("model", vocab_size=tokenizer.vocab_size)
    model = build_model(config.model)
    path = save_checkpoint(tmp_path / "joint", model=model, tokenizer=tokenizer, config=config)
    assert not (path / SOURCE_TOKENIZER_DIR).exists()
    ckpt = load_checkpoint(path)
    assert ckpt.source_tokenizer is ckpt.tokenizer and not ckpt.separate_tokenizers
    assert load_seq2seq(path).source_tokenizer is not None
    assert ckpt.config.model.src_vocab_size == 0
