"""Configuration: frozen dataclasses for the model, tokenizer, data, training and generation.

A run is described by one :class:`RunConfig`. It is built from defaults, then a preset (a TOML
file with one table per section), then ``section.key=value`` overrides from the command line.
Every step validates: an unknown key is an error that lists the valid keys, and a value of the
wrong type names the key and the expected type.

This module sits at the bottom of the import graph: it imports nothing else from the package
except :mod:`rnn2gpt.errors`.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from .errors import ConfigError

PRESETS_DIR = Path(__file__).parent / "presets"
# Where rnn2gpt keeps what it can rebuild (token ids, compiled kernels): data.cache_dir, else
# this variable, else ~/.cache/rnn2gpt.
CACHE_ENV = "RNN2GPT_CACHE"
DEFAULT_PRESET = "shakespeare-char-lstm"

ARCHITECTURES = ("rnn", "lstm", "gru", "gpt")
# Encoder-decoder models (translation, summarization); kept apart from the language models above,
# which the architecture comparison iterates over.
SEQ2SEQ_ARCHITECTURES = ("seq2seq-rnn", "transformer")
TASKS = ("lm", "translation", "summarization")
TOKENIZER_KINDS = ("char", "word", "bpe")


def _flag(name: str, help: str, metavar: str | None = None) -> dict[str, Any]:
    """A field's command-line flag (``rnn2gpt generate`` builds its options from these)."""
    return {"flag": name, "help": help, "metavar": metavar}


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a language model. ``vocab_size`` is filled in from the tokenizer."""

    arch: str = "gpt"  # rnn | lstm | gru | gpt
    vocab_size: int = 0
    n_layer: int = 4
    n_embd: int = 128  # embedding width; the GPT's model width
    n_hidden: int = 0  # recurrent hidden size; 0 means n_embd (RNN family only)
    n_head: int = 4  # GPT only
    block_size: int = 256  # GPT context length in tokens
    dropout: float = 0.0  # embeddings, residual branches, between recurrent layers
    attn_dropout: float = (
        0.0  # GPT attention weights (slow on CPUs: PyTorch's fast kernel skips it)
    )
    tie_weights: bool = True  # share the input embedding and output projection
    bias: bool = True  # biases in linear layers and layer norms (GPT)
    nonlinearity: str = "tanh"  # vanilla RNN: tanh | relu
    cell: str = "fused"  # RNN family: fused (PyTorch kernels) | explicit (textbook equations)
    pos_encoding: str = "learned"  # GPT: learned | sinusoidal
    activation: str = "gelu"  # GPT MLP: gelu | gelu_tanh (GPT-2)
    layer_norm_eps: float = 1e-5
    mlp_ratio: int = 4  # GPT MLP hidden width = mlp_ratio * n_embd
    # Encoder-decoder models (arch seq2seq-rnn | transformer); n_layer is the decoder's depth.
    enc_layers: int = 0  # encoder layers; 0 = n_layer
    rnn_type: str = "gru"  # seq2seq-rnn: gru | lstm
    bidirectional: bool = True  # seq2seq-rnn encoder
    attention: str = "bahdanau"  # seq2seq-rnn: bahdanau (additive) | luong (general)
    # Encoder-decoder with its own source vocabulary (tokenizer.separate): the encoder's embedding
    # has this many rows; 0 = sources and targets share one embedding of vocab_size rows.
    src_vocab_size: int = 0
    # Language models: an adaptive softmax output (models/adaptive.py) whose head holds the ids
    # below the first cutoff and whose tail clusters split the rest; () = a plain softmax. Faster
    # training for large, frequency-ranked vocabularies (word tokenizers), e.g. (2000,) on PTB.
    adaptive_cutoffs: tuple[int, ...] = ()

    @property
    def hidden_size(self) -> int:
        """The recurrent hidden size (RNN family)."""
        return self.n_hidden or self.n_embd

    def validate(self) -> None:
        _check_choice("model.arch", self.arch, ARCHITECTURES + SEQ2SEQ_ARCHITECTURES)
        _check_choice("model.rnn_type", self.rnn_type, ("gru", "lstm"))
        _check_choice("model.attention", self.attention, ("bahdanau", "luong"))
        if self.src_vocab_size < 0:
            raise ConfigError(
                f"model.src_vocab_size must be 0 (= vocab_size) or more (got {self.src_vocab_size})"
            )
        if self.adaptive_cutoffs and self.arch in SEQ2SEQ_ARCHITECTURES:
            raise ConfigError(
                "model.adaptive_cutoffs is for language models (rnn, lstm, gru, gpt); "
                f"remove it for a {self.arch} encoder-decoder"
            )
        if self.src_vocab_size and self.arch not in SEQ2SEQ_ARCHITECTURES:
            raise ConfigError(
                f"model.src_vocab_size is for encoder-decoders ({', '.join(SEQ2SEQ_ARCHITECTURES)}); "
                f"a {self.arch} language model has one vocabulary: set model.src_vocab_size=0"
            )
        if self.enc_layers < 0:
            raise ConfigError(
                f"model.enc_layers must be 0 (= n_layer) or more (got {self.enc_layers})"
            )
        _check_choice("model.nonlinearity", self.nonlinearity, ("tanh", "relu"))
        _check_choice("model.cell", self.cell, ("fused", "explicit"))
        _check_choice("model.pos_encoding", self.pos_encoding, ("learned", "sinusoidal"))
        _check_choice("model.activation", self.activation, ("gelu", "gelu_tanh"))
        for name in ("n_layer", "n_embd", "block_size", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1 (got {getattr(self, name)})")
        if self.n_hidden < 0:
            raise ConfigError(
                f"model.n_hidden must be 0 (same as n_embd) or positive (got {self.n_hidden})"
            )
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1) (got {getattr(self, name)})")
        if self.arch in ("gpt", "transformer") and self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )


@dataclass(frozen=True)
class TokenizerConfig:
    """How text becomes token ids. Only used when a tokenizer is trained for a new run."""

    kind: str = "char"  # char | word | bpe
    vocab_size: int = 8000  # bpe: target vocabulary size
    max_vocab: int = 0  # word: keep the most frequent words; 0 = no limit
    min_freq: int = 1  # word: drop words seen fewer times (they become <unk>)
    lowercase: bool = False  # word
    split_punct: bool = True  # word: split .,;:!?"() etc. off words; false for PTB-style text
    unk: bool = False  # char: map unseen characters to <unk> instead of raising
    path: str = ""  # bpe: load tokenizer.json or a dir with vocab.json + merges.txt
    # Sequence-to-sequence only: one tokenizer trained on the training sources and another on the
    # targets (same kind and settings; vocab_size applies to each), instead of one joint tokenizer.
    separate: bool = False

    def validate(self) -> None:
        _check_choice("tokenizer.kind", self.kind, TOKENIZER_KINDS)
        if self.separate and self.kind == "bpe" and self.path:
            raise ConfigError(
                "tokenizer.path loads one ready-made tokenizer, but tokenizer.separate=true trains "
                "one on the sources and one on the targets: drop one of the two settings"
            )
        if self.kind == "bpe" and not self.path and self.vocab_size < 257:
            raise ConfigError(
                f"tokenizer.vocab_size must be at least 257 for byte-level BPE (got {self.vocab_size})"
            )


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it is split."""

    path: str = ""  # file, .gz file or directory; "" = the bundled Tiny Shakespeare
    val_path: str = ""  # separate validation file; "" = the last val_fraction of the data
    test_path: str = ""  # optional test file, evaluated once at the end of training
    data_dir: str = ""  # relative paths above are read from this folder (presets use it)
    val_fraction: float = 0.1
    cache_dir: str = ""  # where tokenized ids are cached; "" = ~/.cache/rnn2gpt
    # Sequence-to-sequence tasks: line-aligned source/target files (plain or .gz), or, when
    # source_field is set, JSON Lines files in path / val_path / test_path with named fields.
    source_path: str = ""
    target_path: str = ""
    val_source_path: str = ""
    val_target_path: str = ""
    test_source_path: str = ""
    test_target_path: str = ""
    source_field: str = ""  # JSONL: a string, or a list of sentences joined with spaces
    target_field: str = ""  # JSONL: a string, or a list (first one trains, all are references)
    # JSONL with several references per source: train on every (source, reference) pair instead
    # of the first reference only (more targets for small data such as SciTLDR).
    train_all_references: bool = False
    max_source_len: int = 0  # training pairs with longer sources (tokens) are dropped; 0 = keep
    max_target_len: int = 0  # same for targets

    def validate(self) -> None:
        if not self.val_path and not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1) (got {self.val_fraction})")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop's settings."""

    batch_size: int = 32
    seq_len: int = 128  # tokens per training window (GPT: at most block_size); BPTT length for RNNs
    max_steps: int = 5000
    max_time: float = 0.0  # seconds of training; 0 = no limit (CLI accepts 90s, 10m, 1h)
    max_tokens: int = 0  # stop after this many training tokens; 0 = no limit
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine schedule ends at lr * min_lr_ratio
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | constant
    optimizer: str = "adamw"  # adamw | sgd
    weight_decay: float = 0.1  # applied to matrices only
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 = off
    grad_accum: int = 1
    precision: str = "auto"  # auto | fp32 | bf16
    # torch.compile the model: auto (where it pays for the run's length) | true | false. Older
    # checkpoints wrote a bool here; true/false (and yes/no, on/off, 1/0) read as "true"/"false".
    compile: str = field(default="auto", metadata={"bool_words": True})
    eval_interval: int = 250  # steps between evaluations
    # Also evaluate once this many seconds of training passed since the last evaluation (0 =
    # off): evenly spaced curve points for time-budgeted runs whose step count is unknown.
    eval_interval_seconds: float = 0.0
    eval_batches: int = 20  # batches per evaluation; 0 = the whole validation set
    patience: int = 0  # stop after this many evaluations without improvement; 0 = off
    log_interval: int = 10
    progress: bool = True  # show a progress bar
    seed: int = 1337
    threads: int = 0  # torch intra-op threads; 0 = PyTorch's default
    # LoRA fine-tuning (needs a source checkpoint): rank 0 = full fine-tuning.
    lora_rank: int = 0
    lora_alpha: float = 16.0  # the adapter update is scaled by lora_alpha / lora_rank
    lora_targets: str = ""  # comma-separated module-name suffixes; "" = the model's defaults
    lora_dropout: float = 0.0  # dropout on the adapters' input
    # Task: lm (language modelling) | translation | summarization (encoder-decoder models).
    task: str = "lm"
    label_smoothing: float = 0.0  # seq2seq cross-entropy label smoothing
    early_stop_metric: str = "val_loss"  # val_loss | bleu | rouge1 | rouge2 | rougeL
    metric_samples: int = 200  # validation pairs decoded for BLEU/ROUGE at each evaluation
    metric_beams: int = 1  # beams used for those decodes

    def validate(self) -> None:
        _check_choice("train.precision", self.precision, ("auto", "fp32", "bf16"))
        _check_choice("train.compile", self.compile, ("auto", "true", "false"))
        _check_choice("train.task", self.task, TASKS)
        _check_choice(
            "train.early_stop_metric",
            self.early_stop_metric,
            ("val_loss", "bleu", "rouge1", "rouge2", "rougeL"),
        )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"train.label_smoothing must be in [0, 1) (got {self.label_smoothing})"
            )
        _check_choice("train.schedule", self.schedule, ("cosine", "constant"))
        _check_choice("train.optimizer", self.optimizer, ("adamw", "sgd"))
        for name in ("batch_size", "seq_len", "grad_accum", "eval_interval", "log_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1 (got {getattr(self, name)})")
        if self.eval_interval_seconds < 0:
            raise ConfigError(
                f"train.eval_interval_seconds must be 0 (off) or positive "
                f"(got {self.eval_interval_seconds})"
            )
        if self.max_steps < 1 and self.max_time <= 0 and self.max_tokens <= 0:
            raise ConfigError(
                "set a training budget: train.max_steps, train.max_time or train.max_tokens"
            )
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive (got {self.lr})")
        if self.lora_rank < 0:
            raise ConfigError(
                f"train.lora_rank must be 0 (full fine-tuning) or positive (got {self.lora_rank})"
            )
        if self.lora_alpha <= 0:
            raise ConfigError(f"train.lora_alpha must be positive (got {self.lora_alpha})")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"train.lora_dropout must be in [0, 1) (got {self.lora_dropout})")


@dataclass(frozen=True)
class GenerationConfig:
    """Every decoding knob. ``temperature == 0`` means greedy decoding.

    Logits processors are applied in this order (see :mod:`rnn2gpt.generation.processors`):
    logit_bias, bad_words, min_new_tokens (eos ban), no_repeat_ngram_size, repetition_penalty,
    presence/frequency penalties, watermark, temperature, top_k, top_p, min_p, typical_p.
    """

    max_new_tokens: int = field(
        default=200, metadata=_flag("--max-new-tokens", "tokens to generate")
    )
    min_new_tokens: int = field(
        default=0, metadata=_flag("--min-new-tokens", "forbid end-of-sequence before this many")
    )
    temperature: float = field(default=0.8, metadata=_flag("--temperature", "0 = greedy"))
    top_k: int = field(
        default=0, metadata=_flag("--top-k", "sample among the k likeliest; 0 = off")
    )
    top_p: float = field(
        default=1.0, metadata=_flag("--top-p", "nucleus: the smallest set of mass p; 1 = off")
    )
    min_p: float = field(
        default=0.0, metadata=_flag("--min-p", "drop tokens below p x the top probability; 0 = off")
    )
    typical_p: float = field(
        default=1.0, metadata=_flag("--typical-p", "locally typical sampling mass; 1 = off")
    )
    repetition_penalty: float = field(
        default=1.0,
        metadata=_flag("--repetition-penalty", "> 1 discourages repeats (CTRL); 1 = off"),
    )
    presence_penalty: float = field(
        default=0.0, metadata=_flag("--presence-penalty", "OpenAI-style, per generated token seen")
    )
    frequency_penalty: float = field(
        default=0.0, metadata=_flag("--frequency-penalty", "OpenAI-style, per generated repeat")
    )
    no_repeat_ngram_size: int = field(
        default=0, metadata=_flag("--no-repeat-ngram-size", "forbid repeating any n-gram; 0 = off")
    )
    bad_words: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) pairs
    num_beams: int = field(
        default=1, metadata=_flag("--num-beams", "beam search with this many beams")
    )
    length_penalty: float = field(
        default=1.0, metadata=_flag("--length-penalty", "beam search: > 1 favours longer outputs")
    )
    early_stopping: bool = False
    num_return_sequences: int = field(
        default=1, metadata=_flag("--num-samples", "sequences per prompt")
    )
    stop: tuple[str, ...] = field(
        default=(), metadata=_flag("--stop", "stop string (repeatable; \\n for a newline)", "TEXT")
    )
    stop_at_eos: bool = True
    # What to do when a GPT's context is full: slide | stop.
    context_policy: str = field(
        default="slide",
        metadata=_flag(
            "--context-policy", "a full GPT context: slide the window or stop", "POLICY"
        ),
    )
    seed: int | None = field(default=None, metadata=_flag("--seed", "sampling seed"))
    # Quality guard: when the last N tokens repeat an earlier span, stop the row ("stop", finish
    # reason "repetition") or ban the token that completes the repeat and sample again
    # ("resample", the no-repeat n-gram processor at size N).
    repetition_guard: int = field(
        default=0,
        metadata=_flag(
            "--repetition-guard", "guard against repeating any N-token span; 0 = off", "N"
        ),
    )
    repetition_guard_action: str = field(
        default="stop",
        metadata=_flag("--repetition-guard-action", "stop | resample", "ACTION"),
    )
    # The watermark (generation.watermark): a secret key turns it on. The key is left out of the
    # repr and of to_dict, so it never reaches config.json, a log or a checkpoint.
    watermark: str | None = field(
        default=None,
        repr=False,
        metadata={
            **_flag("--watermark", "watermark the text with this secret key (never saved)", "KEY"),
            "secret": True,
        },
    )
    watermark_gamma: float = field(
        default=0.25, metadata=_flag("--watermark-gamma", "green fraction of the vocabulary")
    )
    watermark_delta: float = field(
        default=2.0, metadata=_flag("--watermark-delta", "bias added to green tokens' logits")
    )
    watermark_context: int = field(
        default=1, metadata=_flag("--watermark-context", "previous tokens that seed the green list")
    )
    # Speculative decoding (generation.speculative): a drafter proposes draft_tokens tokens per
    # round, the model checks them in one forward. The draft model itself is not a setting (it
    # is a checkpoint: `generate --draft DIR`); prompt lookup drafts by copying from the text.
    draft_tokens: int = field(
        default=4,
        metadata=_flag("--draft-tokens", "speculative decoding: tokens drafted per round", "K"),
    )
    prompt_lookup: int = field(
        default=0,
        metadata=_flag(
            "--prompt-lookup",
            "draft by copying what followed the last N tokens earlier in the text; 0 = off",
            "N",
        ),
    )

    def validate(self) -> None:
        if self.watermark is not None:
            if not self.watermark:
                raise ConfigError("the watermark key is empty; give a secret string")
            check_watermark_settings(
                self.watermark_gamma, self.watermark_delta, self.watermark_context
            )
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0 (got {self.max_new_tokens})")
        if self.min_new_tokens < 0 or self.min_new_tokens > max(self.max_new_tokens, 0):
            raise ConfigError(
                f"min_new_tokens must be between 0 and max_new_tokens (got {self.min_new_tokens})"
            )
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0; 0 means greedy (got {self.temperature})")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0; 0 turns it off (got {self.top_k})")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1] (got {self.top_p})")
        if not 0.0 <= self.min_p < 1.0:
            raise ConfigError(f"min_p must be in [0, 1) (got {self.min_p})")
        if not 0.0 < self.typical_p <= 1.0:
            raise ConfigError(f"typical_p must be in (0, 1] (got {self.typical_p})")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0 (got {self.repetition_penalty})")
        if self.no_repeat_ngram_size < 0:
            raise ConfigError(
                f"no_repeat_ngram_size must be >= 0 (got {self.no_repeat_ngram_size})"
            )
        if self.num_beams < 1:
            raise ConfigError(f"num_beams must be >= 1 (got {self.num_beams})")
        if self.num_return_sequences < 1:
            raise ConfigError(
                f"num_return_sequences must be >= 1 (got {self.num_return_sequences})"
            )
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ConfigError(
                f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams})"
            )
        _check_choice("context_policy", self.context_policy, ("slide", "stop"))
        _check_choice("repetition_guard_action", self.repetition_guard_action, ("stop", "resample"))
        if self.repetition_guard < 0:
            raise ConfigError(
                f"repetition_guard must be >= 0; 0 = off (got {self.repetition_guard})"
            )
        if self.draft_tokens < 1:
            raise ConfigError(f"draft_tokens must be >= 1 (got {self.draft_tokens})")
        if self.prompt_lookup < 0:
            raise ConfigError(f"prompt_lookup must be >= 0; 0 = off (got {self.prompt_lookup})")
        if self.prompt_lookup and self.num_beams > 1:
            raise ConfigError(
                "prompt lookup is speculative decoding, which runs greedy or sampled decoding, "
                "not beam search: set num_beams=1 or prompt_lookup=0"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class RunConfig:
    """Everything that describes one training run; saved inside every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerationConfig = field(default_factory=GenerationConfig)

    def validate(self) -> RunConfig:
        for section in SECTIONS:
            getattr(self, section).validate()
        if self.model.arch == "gpt" and self.train.seq_len > self.model.block_size:
            raise ConfigError(
                f"train.seq_len ({self.train.seq_len}) cannot exceed model.block_size "
                f"({self.model.block_size}) for a GPT"
            )
        if self.tokenizer.separate and self.train.task == "lm":
            raise ConfigError(
                "tokenizer.separate=true gives sources and targets their own tokenizers, so it "
                "needs train.task=translation or summarization; a language model has one tokenizer"
            )
        seq2seq_arch = self.model.arch in SEQ2SEQ_ARCHITECTURES
        if seq2seq_arch != (self.train.task != "lm"):
            raise ConfigError(
                f"model.arch={self.model.arch!r} does not fit train.task={self.train.task!r}: "
                f"translation and summarization need an encoder-decoder "
                f"({' or '.join(SEQ2SEQ_ARCHITECTURES)}), language modelling one of "
                f"{', '.join(ARCHITECTURES)}"
            )
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {section: _section_to_dict(getattr(self, section)) for section in SECTIONS}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> RunConfig:
        """Build from nested dicts (as in config.json or a preset); unknown keys are errors."""
        unknown = set(data) - set(SECTIONS)
        if unknown:
            raise ConfigError(
                f"{source}: unknown section(s) {sorted(unknown)}; valid sections: {', '.join(SECTIONS)}"
            )
        parts = {}
        for section, section_cls in SECTIONS.items():
            values = data.get(section, {}) or {}
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: [{section}] must be a table of key = value")
            parts[section] = _section_from_dict(section_cls, section, values, source)
        return cls(**parts)

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> RunConfig:
        """Apply ``section.key=value`` strings, e.g. ``train.lr=3e-4``."""
        config = self
        for item in overrides:
            if "=" not in item:
                raise ConfigError(
                    f"override {item!r} must look like section.key=value (e.g. train.lr=3e-4)"
                )
            dotted, raw = item.split("=", 1)
            section, key = _split_key(dotted.strip())
            section_obj = getattr(config, section)
            hints = get_type_hints(type(section_obj))
            value = parse_value(raw.strip(), hints[key], f"{section}.{key}")
            value = _bool_words(type(section_obj), key, value)
            config = replace(config, **{section: replace(section_obj, **{key: value})})
        return config

    def with_values(self, section: str, **values: Any) -> RunConfig:
        """Return a copy with some keys of one section replaced (values already typed)."""
        section_obj = getattr(self, section)
        valid = {f.name for f in fields(section_obj)}
        for key in values:
            if key not in valid:
                raise ConfigError(_unknown_key_message(section, key, valid))
        return replace(self, **{section: replace(section_obj, **values)})


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "tokenizer": TokenizerConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "generate": GenerationConfig,
}


# --------------------------------------------------------------------------- presets


def default_cache_dir(cache_dir: str | os.PathLike[str] = "") -> Path:
    """``cache_dir`` if given, else ``$RNN2GPT_CACHE``, else ``~/.cache/rnn2gpt``."""
    chosen = str(cache_dir) or os.environ.get(CACHE_ENV, "") or "~/.cache/rnn2gpt"
    return Path(chosen).expanduser()


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description (the ``description`` key at the top of the file)."""
    result = {}
    for path in sorted(PRESETS_DIR.glob("*.toml")):
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        result[path.stem] = str(data.get("description", ""))
    return result


def load_preset(name: str) -> RunConfig:
    """A shipped preset by name, or any TOML file by path."""
    path = Path(name)
    if not (path.suffix == ".toml" and path.is_file()):
        path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        names = sorted(list_presets())
        hint = difflib.get_close_matches(name, names, n=1)
        suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(
            f"unknown preset {name!r}.{suggestion} Available presets: {', '.join(names)} "
            "(or give a path to a .toml file)"
        )
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"preset {path}: not valid TOML ({exc})") from None
    data.pop("description", None)
    return RunConfig.from_dict(data, source=f"preset {path.name}")


# --------------------------------------------------------------------------- parsing helpers

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)?\s*$", re.IGNORECASE)


def parse_duration(text: str | float | int) -> float:
    """``"90"``, ``"90s"``, ``"10m"``, ``"1.5h"`` -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigError(f"cannot read duration {text!r}; use e.g. 90s, 10m or 1.5h")
    number, unit = float(match.group(1)), (match.group(2) or "s").lower()
    return number * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}[unit]


def parse_value(raw: str, type_hint: Any, name: str) -> Any:
    """Turn a command-line string into a value of the field's type."""
    text = str(type_hint)
    try:
        if type_hint is bool:
            lowered = raw.lower()
            if lowered in _TRUE_WORDS:
                return True
            if lowered in _FALSE_WORDS:
                return False
            raise ValueError
        if type_hint is int:
            return int(raw)
        if type_hint is float:
            if name.endswith("max_time"):
                return parse_duration(raw)
            return float(raw)
        if type_hint is str:
            return raw
        if "None" in text and "int" in text:
            return None if raw.lower() in ("", "none", "null") else int(raw)
        if text.startswith("tuple[tuple"):
            pairs = []
            for part in filter(None, raw.split(",")):
                key, value = part.split(":")
                pairs.append((int(key), float(value)))
            return tuple(pairs)
        if text.startswith("tuple[int"):
            return tuple(int(part) for part in raw.split(",") if part)
        if text.startswith("tuple"):
            return tuple(part for part in raw.split(",") if part)
    except ValueError:
        pass
    raise ConfigError(f"{name}: cannot read {raw!r} as {_type_name(type_hint)}")


def _type_name(type_hint: Any) -> str:
    return getattr(type_hint, "__name__", str(type_hint))


def _split_key(dotted: str) -> tuple[str, str]:
    if "." not in dotted:
        # A bare key is accepted when exactly one section has it (e.g. lr=3e-4).
        owners = [s for s, cls in SECTIONS.items() if dotted in {f.name for f in fields(cls)}]
        if len(owners) == 1:
            return owners[0], dotted
        if not owners:
            all_keys = sorted({f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)})
            raise ConfigError(_unknown_key_message("", dotted, all_keys))
        raise ConfigError(
            f"{dotted!r} is ambiguous: write one of {', '.join(f'{s}.{dotted}' for s in owners)}"
        )
    section, key = dotted.split(".", 1)
    if section not in SECTIONS:
        raise ConfigError(f"unknown section {section!r}; valid sections: {', '.join(SECTIONS)}")
    valid = {f.name for f in fields(SECTIONS[section])}
    if key not in valid:
        raise ConfigError(_unknown_key_message(section, key, valid))
    return section, key


def _unknown_key_message(section: str, key: str, valid) -> str:
    valid = sorted(valid)
    hint = difflib.get_close_matches(key, valid, n=1)
    suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
    where = f"[{section}] " if section else ""
    return f"unknown setting {where}{key!r}.{suggestion} Valid keys: {', '.join(valid)}"


def _section_to_dict(obj: Any) -> dict[str, Any]:
    out = {}
    for f in fields(obj):
        if f.metadata.get("secret"):
            continue  # a secret (the watermark key) is never written or logged
        value = getattr(obj, f.name)
        if isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[f.name] = value
    return out


def _section_from_dict(cls: type, section: str, values: dict[str, Any], source: str) -> Any:
    hints = get_type_hints(cls)
    valid = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in valid:
            raise ConfigError(f"{source}: " + _unknown_key_message(section, key, valid))
        if _is_secret(cls, key):
            raise ConfigError(
                f"{source}: {section}.{key} is a secret and is never read from a file; pass it "
                "on the command line (generate --watermark KEY) or in the API call"
            )
        kwargs[key] = _coerce(_bool_words(cls, key, value), hints[key], f"{section}.{key}", source)
    return cls(**kwargs)


_TRUE_WORDS, _FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _bool_words(cls: type, key: str, value: Any) -> Any:
    """A ``bool_words`` field (a str setting such as auto | true | false that was once a bool)
    reads a bool, or any spelling of one, as "true" / "false"; other values pass unchanged."""
    if not any(f.name == key and f.metadata.get("bool_words") for f in fields(cls)):
        return value
    word = str(value).lower()
    if value is True or word in _TRUE_WORDS:
        return "true"
    if value is False or word in _FALSE_WORDS:
        return "false"
    return value


def _coerce(value: Any, type_hint: Any, name: str, source: str) -> Any:
    """Check a TOML/JSON value against the field type (ints are accepted for floats)."""
    text = str(type_hint)
    if type_hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if type_hint is float and isinstance(value, str) and name.endswith("max_time"):
        return parse_duration(value)
    if type_hint in (int, str, bool) and type(value) is type_hint:
        return value
    if "None" in text and (
        value is None or (isinstance(value, int) and not isinstance(value, bool))
    ):
        return value
    if text.startswith("tuple[tuple") and isinstance(value, list):
        return tuple((int(k), float(v)) for k, v in value)
    if text.startswith("tuple[int"):
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return tuple(value)
        raise ConfigError(f"{source}: {name} must be a list of whole numbers (got {value!r})")
    if text.startswith("tuple") and isinstance(value, list):
        return tuple(str(v) for v in value)
    raise ConfigError(f"{source}: {name} must be {_type_name(type_hint)} (got {value!r})")


def check_watermark_settings(gamma: float, delta: float, context: int) -> None:
    """ConfigError unless 0 < gamma < 1, delta >= 0 and context >= 1 (the watermark's knobs)."""
    if not 0.0 < gamma < 1.0:
        raise ConfigError(f"the watermark's gamma (green fraction) must be in (0, 1) (got {gamma})")
    if delta < 0:
        raise ConfigError(f"the watermark's delta must be >= 0 (got {delta})")
    if context < 1:
        raise ConfigError(f"the watermark's context must be at least 1 token (got {context})")


def _is_secret(cls: type, key: str) -> bool:
    return any(f.name == key and f.metadata.get("secret") for f in fields(cls))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)} (got {value!r})")


__all__ = [
    "ARCHITECTURES",
    "SEQ2SEQ_ARCHITECTURES",
    "TASKS",
    "DEFAULT_PRESET",
    "DataConfig",
    "GenerationConfig",
    "ModelConfig",
    "RunConfig",
    "TokenizerConfig",
    "TrainConfig",
    "check_watermark_settings",
    "list_presets",
    "load_preset",
    "parse_duration",
    "parse_value",
]
