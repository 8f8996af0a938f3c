"""Checkpoint directories: round trips, atomic writes, and a clear error for every bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from rnn2gpt.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    state_from_tensors,
    state_to_tensors,
)
from rnn2gpt.checkpoint import files as ckpt_mod
from rnn2gpt.checkpoint import format as ckpt_format
from rnn2gpt.config import RunConfig
from rnn2gpt.errors import CheckpointError
from rnn2gpt.models import build_model
from rnn2gpt.tokenizers import CharTokenizer
from rnn2gpt.training.optim import build_optimizer, param_groups

TEXT = "hello world, the cat sat on the mat.\n"


def _setup(arch: str = "gpt", seed: int = 0, **model):
    tokenizer = CharTokenizer.train(TEXT)
    values = dict(arch=arch, vocab_size=tokenizer.vocab_size, n_layer=1, n_embd=16, n_head=2)
    values.update(model)
    config = RunConfig.from_dict(
        {"model": {**values, "block_size": 32}, "train": {"seq_len": 16}}
    ).validate()
    torch.manual_seed(seed)
    return build_model(config.model), tokenizer, config


def _one_step(model, optimizer, vocab: int) -> None:
    torch.manual_seed(1)
    x = torch.randint(0, vocab, (2, 8))
    logits, _ = model(x)
    F.cross_entropy(logits.reshape(-1, vocab), x.reshape(-1)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _logits(model, vocab: int) -> torch.Tensor:
    x = torch.arange(8).remainder(vocab).unsqueeze(0)
    with torch.no_grad():
        return model.eval()(x)[0]


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_round_trip_gives_identical_logits_and_optimizer_state(tmp_path, arch):
    model, tokenizer, config = _setup(arch)
    optimizer = build_optimizer(model, config.train)
    _one_step(model, optimizer, tokenizer.vocab_size)
    save_checkpoint(
        tmp_path / "ck",
        model=model,
        tokenizer=tokenizer,
        config=config,
        optimizer=optimizer,
        trainer_state={"step": 1, "note": "x"},
        tensors={"extra": torch.arange(3)},
    )
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == [
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "tokenizer.json",
        "trainer_state.json",
        "trainer_state.safetensors",
    ]
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert meta["format"] == "rnn2gpt" and meta["format_version"] == 1
    assert meta["rnn2gpt_version"] and meta["model"]["arch"] == arch

    loaded = load_checkpoint(tmp_path / "ck")
    assert not loaded.model.training
    assert loaded.config == config
    assert loaded.tokenizer.encode(TEXT) == tokenizer.encode(TEXT)
    assert loaded.trainer_state == {"step": 1, "note": "x"}
    assert torch.equal(loaded.tensors["extra"], torch.arange(3))
    assert torch.equal(
        _logits(loaded.model, tokenizer.vocab_size), _logits(model, tokenizer.vocab_size)
    )

    fresh = build_optimizer(loaded.model, config.train)
    loaded.load_optimizer_state(fresh)
    saved_state, new_state = optimizer.state_dict(), fresh.state_dict()
    assert saved_state["param_groups"] == new_state["param_groups"]
    assert saved_state["state"].keys() == new_state["state"].keys()
    for index, values in saved_state["state"].items():
        for key, value in values.items():
            assert torch.equal(value, new_state["state"][index][key]), (index, key)


def test_tied_weights_are_stored_once_and_retied(tmp_path):
    model, tokenizer, config = _setup("gpt", tie_weights=True)
    save_checkpoint(tmp_path / "ck", model=model, tokenizer=tokenizer, config=config)
    stored = load_file(str(tmp_path / "ck" / "model.safetensors"))
    assert "transformer.wte.weight" in stored and "lm_head.weight" not in stored
    loaded = load_checkpoint(tmp_path / "ck").model
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, tokenizer, config = _setup(seed=0)
    target = tmp_path / "last"
    save_checkpoint(target, model=model, tokenizer=tokenizer, config=config)
    before = _logits(load_checkpoint(target).model, tokenizer.vocab_size)

    other, _, _ = _setup(seed=1)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(
        ckpt_format, "save_optimizer_state", crash
    )  # fails after weights are written
    optimizer = build_optimizer(other, config.train)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(
            target, model=other, tokenizer=tokenizer, config=config, optimizer=optimizer
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no temporary left behind
    assert torch.equal(_logits(load_checkpoint(target).model, tokenizer.vocab_size), before)


def test_crash_between_the_renames_is_recovered(tmp_path, monkeypatch):
    model, tokenizer, config = _setup(seed=0)
    target = tmp_path / "best"
    save_checkpoint(target, model=model, tokenizer=tokenizer, config=config)
    before = _logits(model, tokenizer.vocab_size)

    real_rename = ckpt_mod.os.rename
    calls = []

    def rename_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old checkpoint is aside, the new one not yet in place
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "rename", rename_then_die)
    other, _, _ = _setup(seed=1)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(target, model=other, tokenizer=tokenizer, config=config)
    monkeypatch.setattr(ckpt_mod.os, "rename", real_rename)
    assert not target.exists()
    restored = load_checkpoint(target)  # puts the old checkpoint back
    assert torch.equal(_logits(restored.model, tokenizer.vocab_size), before)


@pytest.fixture
def saved(tmp_path):
    model, tokenizer, config = _setup()
    directory = tmp_path / "ck"
    save_checkpoint(directory, model=model, tokenizer=tokenizer, config=config)
    return directory


def _edit_config(directory, **changes):
    path = directory / "config.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            data[section][name] = value
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_missing_path_and_file_instead_of_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_checkpoint(tmp_path / "file")


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path / "empty")


def test_hugging_face_directory_points_to_import_hf(tmp_path):
    hf = tmp_path / "gpt2"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(CheckpointError, match="rnn2gpt import-hf"):
        load_checkpoint(hf)


def test_newer_format_version(saved):
    _edit_config(saved, format_version=99)
    with pytest.raises(CheckpointError, match="upgrade rnn2gpt"):
        load_checkpoint(saved)


def test_unknown_config_key(saved):
    _edit_config(saved, **{"model.n_wings": 2})
    with pytest.raises(CheckpointError, match="n_wings"):
        load_checkpoint(saved)


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json"])
def test_missing_required_file(saved, name):
    (saved / name).unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(saved)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_weights(saved, damage):
    path = saved / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(b"\x00garbage" * 4 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(saved)


def test_missing_and_unexpected_tensors_are_named(saved):
    path = saved / "model.safetensors"
    tensors = load_file(str(path))
    del tensors["transformer.ln_f.weight"]
    tensors["decoder.extra"] = torch.zeros(2)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved)
    message = str(info.value)
    assert "missing tensors transformer.ln_f.weight" in message
    assert "unexpected tensors decoder.extra" in message


def test_mis_shaped_tensors_are_named(saved):
    _edit_config(saved, **{"model.n_embd": 8})  # the weights were made with width 16
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved)
    message = str(info.value)
    assert "mis-shaped tensors" in message
    assert "transformer.h.0.attn.c_attn.weight (48, 16) (model expects (24, 8))" in message
    assert "lm_head.weight" not in message  # a tied alias is not reported twice


def test_optimizer_of_another_kind_is_refused(tmp_path):
    model, tokenizer, config = _setup()
    optimizer = build_optimizer(model, config.train)
    _one_step(model, optimizer, tokenizer.vocab_size)
    save_checkpoint(
        tmp_path / "ck", model=model, tokenizer=tokenizer, config=config, optimizer=optimizer
    )
    sgd = build_optimizer(
        model, config.with_values("train", optimizer="sgd", weight_decay=0.0).train
    )
    with pytest.raises(CheckpointError, match="AdamW state but the run uses SGD"):
        load_checkpoint(tmp_path / "ck").load_optimizer_state(sgd)


def test_the_projects_adamw_and_pytorchs_share_checkpoints(tmp_path):
    """build_optimizer's NativeAdamW writes "AdamW" state (as release 0.1.0's checkpoints hold),
    and PyTorch's class resumes from it."""
    model, tokenizer, config = _setup()
    optimizer = build_optimizer(model, config.train)
    assert type(optimizer) is not torch.optim.AdamW  # the subclass, not PyTorch's own
    _one_step(model, optimizer, tokenizer.vocab_size)
    save_checkpoint(
        tmp_path / "ck", model=model, tokenizer=tokenizer, config=config, optimizer=optimizer
    )
    meta = ckpt_mod.read_metadata(tmp_path / "ck" / "optimizer.safetensors")
    assert meta["optimizer"] == "AdamW"
    theirs = torch.optim.AdamW(param_groups(model, config.train.weight_decay), lr=config.train.lr)
    load_checkpoint(tmp_path / "ck").load_optimizer_state(theirs)
    assert theirs.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()


def test_no_optimizer_file(saved):
    model = load_checkpoint(saved).model
    config = load_checkpoint(saved).config
    with pytest.raises(CheckpointError, match="optimizer.safetensors"):
        load_checkpoint(saved).load_optimizer_state(build_optimizer(model, config.train))


def test_carried_state_round_trip():
    model, _, _ = _setup("lstm")
    _, state = model(torch.zeros(3, 5, dtype=torch.long))
    tensors = state_to_tensors(state, prefix="carried")
    assert set(tensors) == {"carried.h", "carried.c"}
    rebuilt = state_from_tensors(model.new_state(3), tensors, prefix="carried")
    assert torch.equal(rebuilt.h, state.h) and torch.equal(rebuilt.c, state.c)
    assert rebuilt.pad_mask is None


def test_rng_state_round_trip():
    json_part, tensors = capture_rng_state()
    json.dumps(json_part)  # must be plain JSON
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    restore_rng_state(json.loads(json.dumps(json_part)), tensors)
    again = (random.random(), float(np.random.rand()), torch.rand(3))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


def test_corrupt_tokenizer(saved):
    (saved / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_checkpoint(saved)
