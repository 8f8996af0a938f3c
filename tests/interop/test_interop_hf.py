"""GPT-2 import/export against transformers itself: same logits, same greedy text, same ids."""

from __future__ import annotations

import json

import pytest
import torch
from interop_helpers import SAMPLE_TEXTS, tiny_gpt2

from rnn2gpt.checkpoint import load_checkpoint, save_checkpoint
from rnn2gpt.config import ModelConfig, RunConfig, TokenizerConfig
from rnn2gpt.errors import CheckpointError, ConfigError
from rnn2gpt.interop import export_hf, import_hf
from rnn2gpt.models import build_model
from rnn2gpt.models.hf import gpt2_config_to_model_config, model_config_to_gpt2_config
from rnn2gpt.tokenizers import CharTokenizer

TOL = 1e-5


def _ids(bpe, text="ROMEO: But soft, the quick brown fox") -> torch.Tensor:
    return torch.tensor([bpe.encode(text)])


def _hf_logits(hf_model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(ids).logits


def _our_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)[0]


def _greedy(model, prompt: list[int], steps: int, eos: int) -> list[int]:
    """Argmax decoding over our forward, carrying the KV cache one token at a time."""
    with torch.no_grad():
        logits, state = model(torch.tensor([prompt]), None)
        out: list[int] = []
        for _ in range(steps):
            token = int(logits[0, -1].argmax())
            out.append(token)
            if token == eos:
                break
            logits, state = model(torch.tensor([[token]]), state)
    return out


def _save_ours(directory, tokenizer, seed=0, **model_overrides):
    base = dict(arch="gpt", vocab_size=tokenizer.vocab_size, n_layer=2, n_embd=32, n_head=2)
    cfg = ModelConfig(**{**base, "block_size": 64, "activation": "gelu_tanh", **model_overrides})
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial biases and norms, so every tensor's mapping matters
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.normal_(0.0, 0.1).add_(
                    1.0 if "ln_" in name and name.endswith("weight") else 0
                )
    kind = getattr(tokenizer, "kind", "bpe")
    config = RunConfig(model=cfg, tokenizer=TokenizerConfig(kind=kind))
    save_checkpoint(directory, model=model, tokenizer=tokenizer, config=config)
    return model


# --------------------------------------------------------------------------- import


def test_import_logits_and_greedy_match_transformers(hf_dir, bpe, tmp_path):
    src, hf_model = hf_dir
    out = import_hf(src, tmp_path / "ckpt")
    checkpoint = load_checkpoint(out)
    model = checkpoint.model
    assert checkpoint.config.model.activation == "gelu_tanh"
    assert checkpoint.config.model.block_size == 64
    assert [checkpoint.tokenizer.encode(t) for t in SAMPLE_TEXTS] == [
        bpe.encode(t) for t in SAMPLE_TEXTS
    ]

    ids = _ids(bpe)
    diff = (_our_logits(model, ids) - _hf_logits(hf_model, ids)).abs().max().item()
    assert diff <= TOL

    prompt = ids[0].tolist()
    steps = 20
    ours = _greedy(model, prompt, steps, bpe.eos_id)
    with torch.no_grad():
        theirs = hf_model.generate(
            ids, max_new_tokens=steps, do_sample=False, pad_token_id=bpe.eos_id
        )[0, len(prompt) :].tolist()
    assert len(ours) > 1
    assert ours == theirs


def test_import_pytorch_bin_without_prefix_and_with_mask_buffers(bpe, tmp_path, transformers_mod):
    hf_model = tiny_gpt2(transformers_mod, bpe.vocab_size, bpe.eos_id, seed=1)
    src = tmp_path / "old"
    src.mkdir()
    hf_model.config.to_json_file(src / "config.json")
    # The layout of the original OpenAI conversions: no "transformer." prefix, causal-mask
    # buffers stored, tied lm_head absent.
    state = {}
    for name, tensor in hf_model.state_dict().items():
        if name == "lm_head.weight":
            continue
        state[name.removeprefix("transformer.")] = tensor.clone()
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, src / "pytorch_model.bin")
    bpe.save(src)  # tokenizer.json this time

    model = load_checkpoint(import_hf(src, tmp_path / "ckpt")).model
    ids = _ids(bpe, "Hello, world! naïve café")
    assert (_our_logits(model, ids) - _hf_logits(hf_model, ids)).abs().max().item() <= TOL


def test_import_untied_gelu_exact(bpe, tmp_path, transformers_mod):
    hf_model = tiny_gpt2(
        transformers_mod,
        bpe.vocab_size,
        bpe.eos_id,
        seed=2,
        tie_word_embeddings=False,
        activation_function="gelu",
        n_inner=64,
    )
    src = tmp_path / "hf"
    hf_model.save_pretrained(src)
    bpe.save_gpt2_files(src)
    checkpoint = load_checkpoint(import_hf(src, tmp_path / "ckpt"))
    cfg = checkpoint.config.model
    assert (cfg.tie_weights, cfg.activation, cfg.mlp_ratio) == (False, "gelu", 2)
    ids = _ids(bpe)
    diff = (_our_logits(checkpoint.model, ids) - _hf_logits(hf_model, ids)).abs().max().item()
    assert diff <= TOL


def test_import_drops_padded_vocabulary_rows(bpe, tmp_path, transformers_mod):
    hf_model = tiny_gpt2(transformers_mod, bpe.vocab_size + 12, bpe.eos_id, seed=3)
    src = tmp_path / "hf"
    hf_model.save_pretrained(src)
    bpe.save_gpt2_files(src)
    checkpoint = load_checkpoint(import_hf(src, tmp_path / "ckpt"))
    assert checkpoint.config.model.vocab_size == bpe.vocab_size
    ids = _ids(bpe)
    theirs = _hf_logits(hf_model, ids)[..., : bpe.vocab_size]
    assert (_our_logits(checkpoint.model, ids) - theirs).abs().max().item() <= TOL


# --------------------------------------------------------------------------- export


EXPORT_VARIANTS = {
    "gpt2-like": {},
    "no-bias-sinusoidal-untied": dict(
        bias=False, pos_encoding="sinusoidal", activation="gelu", tie_weights=False, mlp_ratio=2
    ),
}


@pytest.mark.parametrize("variant", sorted(EXPORT_VARIANTS))
def test_export_loads_in_transformers_with_equal_logits(variant, bpe, tmp_path, transformers_mod):
    model = _save_ours(tmp_path / "ckpt", bpe, **EXPORT_VARIANTS[variant])
    dest = export_hf(tmp_path / "ckpt", tmp_path / "export")
    hf_model = transformers_mod.AutoModelForCausalLM.from_pretrained(dest).eval()
    assert type(hf_model).__name__ == "GPT2LMHeadModel"
    ids = _ids(bpe)
    diff = (_our_logits(model, ids) - _hf_logits(hf_model, ids)).abs().max().item()
    assert diff <= TOL


def test_export_tokenizer_gives_the_same_ids(bpe, tmp_path, transformers_mod):
    _save_ours(tmp_path / "ckpt", bpe)
    dest = export_hf(tmp_path / "ckpt", tmp_path / "export")
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (dest / name).is_file()
    hf_tok = transformers_mod.AutoTokenizer.from_pretrained(dest)
    assert hf_tok.eos_token_id == bpe.eos_id
    for text in SAMPLE_TEXTS:
        ids = hf_tok(text)["input_ids"]
        assert ids == bpe.encode(text), text
        assert hf_tok.decode(ids) == bpe.decode(ids)


def test_import_export_round_trip_keeps_weights(hf_dir, tmp_path):
    from safetensors.torch import load_file

    src, hf_model = hf_dir
    import_hf(src, tmp_path / "ckpt")
    dest = export_hf(tmp_path / "ckpt", tmp_path / "export")
    exported = load_file(str(dest / "model.safetensors"))
    original = {k: v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name
    config = json.loads((dest / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["activation_function"] == "gelu_new"


def test_export_char_gpt_needs_weights_only(tmp_path, transformers_mod):
    chars = CharTokenizer.train("hello world, a tiny char corpus")
    model = _save_ours(tmp_path / "ckpt", chars)
    with pytest.raises(CheckpointError, match="char tokenizer"):
        export_hf(tmp_path / "ckpt", tmp_path / "export")
    assert not (tmp_path / "export").exists()
    dest = export_hf(tmp_path / "ckpt", tmp_path / "export", weights_only=True)
    assert not (dest / "tokenizer.json").exists()
    assert (dest / "rnn2gpt_tokenizer.json").is_file()
    hf_model = transformers_mod.AutoModelForCausalLM.from_pretrained(dest).eval()
    ids = torch.tensor([chars.encode("hello")])
    assert (_our_logits(model, ids) - _hf_logits(hf_model, ids)).abs().max().item() <= TOL


def test_export_refuses_recurrent_models(bpe, tmp_path):
    cfg = ModelConfig(arch="lstm", vocab_size=bpe.vocab_size, n_layer=1, n_embd=16)
    save_checkpoint(
        tmp_path / "ckpt",
        model=build_model(cfg),
        tokenizer=bpe,
        config=RunConfig(model=cfg, tokenizer=TokenizerConfig(kind="bpe")),
    )
    with pytest.raises(CheckpointError, match="only GPT checkpoints"):
        export_hf(tmp_path / "ckpt", tmp_path / "export")


def test_export_refuses_an_adaptive_softmax_gpt(bpe, tmp_path):
    _save_ours(tmp_path / "ckpt", bpe, adaptive_cutoffs=(100,))
    with pytest.raises(CheckpointError, match="adaptive softmax"):
        export_hf(tmp_path / "ckpt", tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_export_never_clobbers_a_foreign_directory(bpe, tmp_path):
    _save_ours(tmp_path / "ckpt", bpe)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not empty"):
        export_hf(tmp_path / "ckpt", busy)
    with pytest.raises(CheckpointError, match="not a GPT-2 export"):
        export_hf(tmp_path / "ckpt", busy, overwrite=True)
    assert (busy / "notes.txt").read_text() == "keep me"
    dest = export_hf(tmp_path / "ckpt", tmp_path / "export")
    assert export_hf(tmp_path / "ckpt", dest, overwrite=True) == dest
    assert (dest / "model.safetensors").is_file()


# --------------------------------------------------------------------------- errors


def test_import_errors_are_clear(hf_dir, tmp_path):
    src, _ = hf_dir
    with pytest.raises(CheckpointError, match="does not exist"):
        import_hf(tmp_path / "nowhere", tmp_path / "a")

    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(CheckpointError, match="only GPT-2 models"):
        import_hf(src, tmp_path / "b")

    (src / "config.json").write_text(
        json.dumps({**config, "scale_attn_by_inverse_layer_idx": True})
    )
    with pytest.raises(CheckpointError, match="scale_attn_by_inverse_layer_idx"):
        import_hf(src, tmp_path / "c")

    (src / "config.json").write_text(json.dumps({**config, "n_positions": 32}))
    with pytest.raises(CheckpointError, match=r"transformer\.wpe\.weight \(64, 32\)"):
        import_hf(src, tmp_path / "d")

    (src / "config.json").write_text(json.dumps(config))
    (src / "merges.txt").unlink()
    with pytest.raises(CheckpointError, match="merges.txt"):
        import_hf(src, tmp_path / "e")

    (src / "model.safetensors").unlink()
    (src / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(CheckpointError, match="has no weights"):
        import_hf(src, tmp_path / "f")
    assert not any((tmp_path / name).exists() for name in "abcdef")


def test_import_refuses_to_replace_a_non_checkpoint(hf_dir, tmp_path):
    src, _ = hf_dir
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "data.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="not empty"):
        import_hf(src, busy)
    with pytest.raises(CheckpointError, match="not an rnn2gpt checkpoint"):
        import_hf(src, busy, overwrite=True)
    with pytest.raises(CheckpointError):
        import_hf(src, src, overwrite=True)  # never over its own source
    assert (busy / "data.txt").read_text() == "precious"
    out = import_hf(src, tmp_path / "ckpt")
    assert import_hf(src, out, overwrite=True) == out


def test_config_conversion_round_trip_and_refusals():
    cfg = ModelConfig(arch="gpt", vocab_size=300, n_layer=3, n_embd=48, n_head=4, block_size=80)
    cfg = ModelConfig(**{**cfg.__dict__, "activation": "gelu_tanh", "tie_weights": False})
    hf = model_config_to_gpt2_config(cfg, bos_token_id=0, eos_token_id=0)
    assert hf["architectures"] == ["GPT2LMHeadModel"] and hf["activation_function"] == "gelu_new"
    back = gpt2_config_to_model_config(hf)
    assert back == cfg
    with pytest.raises(ConfigError, match="only GPT checkpoints"):
        model_config_to_gpt2_config(ModelConfig(arch="gru", vocab_size=10))
    with pytest.raises(ConfigError, match="activation_function"):
        gpt2_config_to_model_config({**hf, "activation_function": "relu"})
    with pytest.raises(ConfigError, match="scale_attn_weights"):
        gpt2_config_to_model_config({**hf, "scale_attn_weights": False})
    with pytest.raises(ConfigError, match="cross"):
        gpt2_config_to_model_config({**hf, "add_cross_attention": True})


class _NotATensor:
    pass


def test_import_refuses_corrupt_and_unsafe_weights(hf_dir, tmp_path):
    src, _ = hf_dir
    (src / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        import_hf(src, tmp_path / "a")
    (src / "model.safetensors").unlink()
    torch.save({"h.0.ln_1.weight": _NotATensor()}, src / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights-only"):
        import_hf(src, tmp_path / "b")
    (src / "pytorch_model.bin").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        import_hf(src, tmp_path / "c")


def test_import_sharded_safetensors(hf_dir, bpe, tmp_path):
    from safetensors.torch import load_file, save_file

    src, hf_model = hf_dir
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for shard, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(src / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (src / "model.safetensors").unlink()
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model = load_checkpoint(import_hf(src, tmp_path / "ckpt")).model
    ids = _ids(bpe)
    assert (_our_logits(model, ids) - _hf_logits(hf_model, ids)).abs().max().item() <= TOL
