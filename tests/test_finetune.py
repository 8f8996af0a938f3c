"""Fine-tuning (full and LoRA), LoRA checkpoints, merging, and GPT-2 import/export from the CLI."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rnn2gpt import api
from rnn2gpt.checkpoint import load_checkpoint
from rnn2gpt.cli import EXIT_USER_ERROR, main
from rnn2gpt.config import RunConfig
from rnn2gpt.errors import ConfigError, TokenizerError
from rnn2gpt.evaluation import evaluate_lm
from rnn2gpt.models.hf import gpt2_state_dict
from rnn2gpt.models.lora import has_lora, load_lora_adapter
from rnn2gpt.training import train as run_training

BASE_TEXT = (
    "the cat sat on the mat .\nthe dog sat on the log .\n"
    "a cat and a dog met on the mat .\nthe end of the tale .\n"
) * 30
# Only characters the base vocabulary knows, in a new arrangement the base never saw.
NEW_TEXT = "a dog and a cat sat on a log .\nthe mat met the log .\n" * 40

TINY = {
    "gpt": ["model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.block_size=32"],
    "lstm": ["model.n_layer=1", "model.n_embd=16", "model.tie_weights=false"],
}


def _train_base(tmp: Path, arch: str, steps: int = 12) -> Path:
    """A tiny char model trained on BASE_TEXT; returns its run folder."""
    corpus = tmp / f"base-{arch}.txt"
    corpus.write_text(BASE_TEXT)
    out = tmp / f"base-{arch}"
    args = [
        "train",
        "--data",
        str(corpus),
        "--model",
        arch,
        "--tokenizer",
        "char",
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--seed",
        str(3 + int(os.environ.get("RNN2GPT_TEST_SEED", "0"))),  # see the learning_seed fixture
    ]
    settings = TINY[arch] + [
        "train.batch_size=4",
        "train.seq_len=16",
        "train.eval_interval=6",
        "train.eval_batches=2",
        "train.progress=false",
        "train.threads=1",
        "train.warmup_steps=2",
        f"data.cache_dir={tmp}/cache",
    ]
    for s in settings:
        args += ["--set", s]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def base_gpt(tmp_path_factory) -> Path:
    return _train_base(tmp_path_factory.mktemp("base"), "gpt")


@pytest.fixture
def new_text(tmp_path: Path) -> Path:
    path = tmp_path / "new.txt"
    path.write_text(NEW_TEXT)
    return path


def _loss_on(checkpoint: Path, text: str) -> float:
    ckpt = load_checkpoint(checkpoint)
    ids = np.asarray(ckpt.tokenizer.encode(text), dtype=np.int64)
    metrics = evaluate_lm(ckpt.model, ids, batch_size=4, seq_len=16, stream=False, max_batches=8)
    return metrics["loss"]


def _logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens)[0]


def _tokens(checkpoint: Path) -> torch.Tensor:
    tokenizer = load_checkpoint(checkpoint).tokenizer
    return torch.tensor([tokenizer.encode("the dog sat on a mat .")])


def test_full_finetune_from_cli_lowers_loss_on_new_text(
    base_gpt, new_text, tmp_path, capsys, monkeypatch, learning_seed
):
    monkeypatch.chdir(tmp_path)  # the default output folder is relative: runs/<name>-finetuned
    before = _loss_on(base_gpt / "best", NEW_TEXT)
    argv = [
        "finetune",
        str(base_gpt / "best"),
        "--data",
        str(new_text),
        "--max-steps",
        "24",
        "--seed",
        str(learning_seed),
        "--set",
        "train.lr=3e-3",
    ]
    assert main(argv) == 0
    out = tmp_path / "runs" / f"{base_gpt.name}-finetuned"
    assert f"{out.name}" in capsys.readouterr().out
    after = _loss_on(out / "best", NEW_TEXT)
    assert after < before - 0.05

    # A fresh optimizer and schedule: the step count starts at 0, not at the source's.
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert state["step"] == 24
    config = json.loads((out / "last" / "config.json").read_text())
    assert config["data"]["path"].endswith("new.txt") and "adapter" not in config
    # Every weight may change in a full fine-tune, and did.
    base = load_file(str(base_gpt / "best" / "model.safetensors"))
    tuned = load_file(str(out / "best" / "model.safetensors"))
    assert base.keys() == tuned.keys()
    assert all(not torch.equal(base[k], tuned[k]) for k in base if k.endswith("c_attn.weight"))


def test_lora_finetune_trains_only_adapters_and_merges_exactly(
    base_gpt, new_text, tmp_path, capsys
):
    out = tmp_path / "lora"
    result = api.finetune(
        base_gpt,
        data=new_text,
        out=out,
        max_steps=12,
        lora_rank=2,
        lora_alpha=8,
        merge=True,
        overrides=["train.lr=1e-2"],
    )
    best = out / "best"

    # The base weights are byte-for-byte the source's; the adapters hold the change.
    base = load_file(str(base_gpt / "best" / "model.safetensors"))
    stored = load_file(str(best / "model.safetensors"))
    assert stored.keys() == base.keys()
    assert all(torch.equal(stored[k], base[k]) for k in base)
    adapter = load_file(str(best / "adapter.safetensors"))
    assert adapter and all(k.endswith((".lora_A", ".lora_B")) for k in adapter)
    assert any("attn.c_attn" in k for k in adapter)
    assert any(float(t.abs().max()) > 0 for k, t in adapter.items() if k.endswith("lora_B"))
    assert (best / "adapter.safetensors").stat().st_size < (
        best / "model.safetensors"
    ).stat().st_size / 4
    assert json.loads((best / "config.json").read_text())["adapter"] == "adapter.safetensors"
    state = json.loads((best / "trainer_state.json").read_text())
    assert state["lora"]["rank"] == 2 and state["lora"]["layers"]

    # load_checkpoint applies the adapter: base model + adapter file gives the same logits.
    tokens = _tokens(best)
    ckpt = load_checkpoint(best)
    assert ckpt.has_adapter
    adapted = _logits(ckpt.model, tokens)
    by_hand = load_checkpoint(base_gpt / "best").model
    assert not torch.allclose(_logits(by_hand, tokens), adapted, atol=1e-4)
    load_lora_adapter(by_hand, best / "adapter.safetensors")
    torch.testing.assert_close(_logits(by_hand.eval(), tokens), adapted, atol=1e-6, rtol=0)

    # --merge: a plain checkpoint with the same logits.
    assert result.merged_dir == out / "merged"
    merged = load_checkpoint(out / "merged")
    assert not merged.has_adapter and not (out / "merged" / "adapter.safetensors").exists()
    assert merged.config.train.lora_rank == 0
    assert (_logits(merged.model, tokens) - adapted).abs().max() <= 1e-5

    # merge-lora from the command line gives the same plain checkpoint; generation works on both.
    assert main(["merge-lora", str(out), str(tmp_path / "merged2")]) == 0
    again = load_checkpoint(tmp_path / "merged2")
    torch.testing.assert_close(_logits(again.model, tokens), _logits(merged.model, tokens))
    capsys.readouterr()
    for directory in (out, out / "merged"):
        assert (
            main(
                [
                    "generate",
                    str(directory),
                    "--prompt",
                    "the",
                    "--max-new-tokens",
                    "6",
                    "--greedy",
                    "--json",
                ]
            )
            == 0
        )
        assert len(json.loads(capsys.readouterr().out)["token_ids"]) == 6
    assert main(["merge-lora", str(out), str(tmp_path / "merged2")]) == EXIT_USER_ERROR
    assert "--overwrite" in capsys.readouterr().err
    assert main(["info", str(out)]) == 0
    assert "LoRA rank 2" in capsys.readouterr().out

    # export-hf writes the adapted model: the merged weights in GPT-2's layout.
    exported = load_file(
        str(api.export_hf(out, tmp_path / "hf", weights_only=True) / "model.safetensors")
    )
    expected = gpt2_state_dict(merged.model)
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[k], expected[k].contiguous()) for k in expected)


def test_lora_resume_continues_exactly(base_gpt, new_text, tmp_path):
    """Stopped at step 4 and resumed to 8 = straight to 8 (constant lr, so the budget does not
    shape the schedule; adapter dropout on, so the RNG state must travel too)."""
    common = dict(
        data=new_text,
        lora_rank=2,
        lora_dropout=0.1,
        overrides=["train.schedule=constant", "train.eval_interval=4"],
    )
    api.finetune(base_gpt, out=tmp_path / "straight", max_steps=8, **common)
    api.finetune(base_gpt, out=tmp_path / "stopped", max_steps=4, **common)
    api.train(out=tmp_path / "stopped", resume=True, max_steps=8)
    a = load_file(str(tmp_path / "straight" / "last" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "last" / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    state = json.loads((tmp_path / "stopped" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["lora"]["rank"] == 2


def test_lora_on_an_untied_lstm_decoder(tmp_path, new_text):
    base = _train_base(tmp_path, "lstm", steps=6)
    out = tmp_path / "lstm-lora"
    api.finetune(
        base,
        data=new_text,
        out=out,
        max_steps=6,
        lora_rank=2,
        lora_targets=["decoder"],
        merge=True,
        overrides=["train.lr=1e-2"],
    )
    adapter = load_file(str(out / "best" / "adapter.safetensors"))
    assert sorted(adapter) == ["decoder.lora_A", "decoder.lora_B"]
    source = load_file(str(base / "best" / "model.safetensors"))
    stored = load_file(str(out / "best" / "model.safetensors"))
    assert all(torch.equal(stored[k], source[k]) for k in source)
    tokens = _tokens(out / "best")
    adapted = load_checkpoint(out / "best")
    assert has_lora(adapted.model)
    merged = load_checkpoint(out / "merged")
    assert (_logits(merged.model, tokens) - _logits(adapted.model, tokens)).abs().max() <= 1e-5


def test_lora_needs_a_source_checkpoint(tmp_path, capsys):
    config = RunConfig().with_overrides(["train.lora_rank=4", "train.max_steps=2"])
    with pytest.raises(ConfigError, match="finetune"):
        run_training(config, tmp_path / "run", interrupt=threading.Event())
    assert main(["train", "--set", "train.lora_rank=4"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "lora_rank" in err and "\n" not in err.strip()
    assert main(["train", "--set", "train.lora_rank=-1"]) == EXIT_USER_ERROR
    assert "lora_rank" in capsys.readouterr().err


def test_merge_without_lora_and_bad_targets_are_clear(base_gpt, new_text, tmp_path, capsys):
    argv = ["finetune", str(base_gpt), "--data", str(new_text), "--out", str(tmp_path / "x")]
    assert main([*argv, "--merge"]) == EXIT_USER_ERROR
    assert "--lora-rank" in capsys.readouterr().err
    assert main([*argv, "--lora-rank", "2", "--lora-targets", "attn.qkv"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "attn.qkv" in err and "attn.c_attn" in err and "\n" not in err.strip()
    assert main(["merge-lora", str(base_gpt), str(tmp_path / "m")]) == EXIT_USER_ERROR
    assert "no LoRA adapter" in capsys.readouterr().err


def test_new_characters_the_base_tokenizer_cannot_encode(base_gpt, tmp_path, capsys):
    strange = tmp_path / "strange.txt"
    strange.write_text("the Zebra sat on the mat .\n" * 40)
    with pytest.raises(TokenizerError) as info:
        api.finetune(base_gpt, data=strange, out=tmp_path / "z", max_steps=2)
    message = str(info.value)
    for expected in (
        "'Z'",
        "'b'",
        "base model",
        "cannot encode the new data",
        "tokenizer.unk",
        "BPE",
    ):
        assert expected in message
    assert "'t'" not in message  # only the unknown characters are named
    assert not (tmp_path / "z" / "best").exists()
    argv = ["finetune", str(base_gpt), "--data", str(strange), "--out", str(tmp_path / "z")]
    assert main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "'Z'" in err and "\n" not in err


def test_help_on_new_commands(capsys):
    for command in ("finetune", "merge-lora", "import-hf", "export-hf"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        assert "usage: rnn2gpt" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "finetune" in capsys.readouterr().out  # --resume's help tells the two apart


# ---------------------------------------------------------------------- GPT-2 interop


def test_import_hf_generate_and_export_hf(tmp_path, capsys):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    from rnn2gpt.tokenizers import BPETokenizer

    bpe = BPETokenizer.train(BASE_TEXT + NEW_TEXT, vocab_size=280)
    config = transformers.GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=16,
        n_positions=32,
        vocab_size=bpe.vocab_size,
        bos_token_id=bpe.eos_id,
        eos_token_id=bpe.eos_id,
    )
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # larger weights than GPT-2's init, so the logits are far from ties
        for param in hf_model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    src = tmp_path / "hf"
    hf_model.save_pretrained(src)
    bpe.save_gpt2_files(src)

    ckpt = tmp_path / "imported"
    assert main(["import-hf", str(src), str(ckpt)]) == 0
    ids = torch.tensor([bpe.encode("the cat sat")])
    with torch.no_grad():
        expected = hf_model(ids).logits
    torch.testing.assert_close(
        _logits(load_checkpoint(ckpt).model, ids), expected, atol=1e-5, rtol=0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                str(ckpt),
                "--prompt",
                "the cat",
                "--max-new-tokens",
                "5",
                "--seed",
                "1",
                "--json",
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert record["prompt"] == "the cat" and len(record["token_ids"]) <= 5
    assert main(["import-hf", str(src), str(ckpt)]) == EXIT_USER_ERROR  # never replaced silently
    capsys.readouterr()

    dest = tmp_path / "exported"
    assert main(["export-hf", str(ckpt), str(dest)]) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(dest).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, atol=1e-5, rtol=0)
