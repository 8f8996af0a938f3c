"""The Python face of rnn2gpt: load a checkpoint and generate or stream text; train a model.

This layer only wires the parts together (checkpoint -> tokenizer + model -> decoding engine);
it holds no decoding or training logic of its own.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from .checkpoint import read_config, resolve_checkpoint_dir, resume_dir
from .config import DEFAULT_PRESET, GenerationConfig, RunConfig, load_preset, parse_duration
from .errors import ConfigError
from .models.base import use_inference_layout
from .tokenizers.base import encode_prompt

logger = logging.getLogger(__name__)

LOSS_CURVE_FILE = "loss_curve.svg"

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


class TextGenerator:
    """A loaded checkpoint, ready to generate.

    Attributes:
        model: the ``nn.Module`` of the model contract (eval mode).
        tokenizer: the tokenizer saved with it.
        config: the :class:`~rnn2gpt.config.RunConfig` it was trained with.
        directory: where it was loaded from.
        draft: a :class:`TextGenerator` over the same tokenizer that drafts for this one
            (speculative decoding; :meth:`use_draft`), or None.
        speculation: the drafted/accepted counts of the last speculative call, or None.
    """

    def __init__(self, checkpoint: Any) -> None:
        self.model = checkpoint.model
        self.tokenizer = checkpoint.tokenizer
        self.config: RunConfig = checkpoint.config
        self.directory = Path(checkpoint.directory)
        self.draft: TextGenerator | None = None
        self.speculation: Any = None

    def use_draft(self, draft: TextGenerator | None) -> None:
        """Decode with speculative decoding, ``draft`` proposing tokens (None: plain decoding).

        Any architecture drafts for any other, but both must share one tokenizer: the same
        tokenizer fingerprint, else ConfigError.
        """
        if draft is not None and draft.tokenizer.fingerprint() != self.tokenizer.fingerprint():
            raise ConfigError(
                f"the draft model {draft.directory} has a different tokenizer from "
                f"{self.directory} (fingerprints differ); a drafter must share the model's "
                "tokenizer: train it on the same text with the same tokenizer settings (for BPE, "
                "--set tokenizer.path=<the model's checkpoint>/tokenizer.json)"
            )
        self.draft = draft

    # ------------------------------------------------------------------ settings and prompts

    def generation_config(self, **settings: Any) -> GenerationConfig:
        """The checkpoint's generation defaults with ``settings`` applied and validated.

        ``num_samples`` is accepted as a synonym of ``num_return_sequences``.
        """
        if "num_samples" in settings:
            settings["num_return_sequences"] = settings.pop("num_samples")
        valid = {f.name for f in fields(GenerationConfig)}
        unknown = sorted(set(settings) - valid)
        if unknown:
            raise ConfigError(
                f"unknown generation setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        for key in ("stop", "bad_words"):
            if isinstance(settings.get(key), str):
                settings[key] = (settings[key],)
            elif settings.get(key) is not None:
                settings[key] = tuple(settings[key])
        config = replace(self.config.generate, **settings)
        config.validate()
        return config

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of ``prompt`` (see :func:`rnn2gpt.tokenizers.base.encode_prompt`)."""
        return encode_prompt(self.tokenizer, prompt)

    # ------------------------------------------------------------------ decoding

    def complete(self, prompts: Sequence[str], *, logprobs: int | None = None, **settings: Any):
        """Generate for several prompts at once (batched); returns, per prompt, a list of
        :class:`~rnn2gpt.generation.Generation` (``num_return_sequences`` of them)."""
        from .generation import generate
        from .generation.speculative import SpeculationStats

        config = self.generation_config(**settings)
        ids = [self.encode_prompt(p) for p in prompts]
        speculation = SpeculationStats()
        results = generate(
            self.model,
            ids,
            config,
            tokenizer=self.tokenizer,
            eos_id=self.tokenizer.eos_id,
            pad_id=self._pad_id(),
            logprobs=logprobs,
            draft=None if self.draft is None else self.draft.model,
            speculation=speculation,
        )
        speculative = self.draft is not None or config.prompt_lookup > 0
        self.speculation = speculation if speculative else None
        return results

    def generate(self, prompt: str | Sequence[str] = "", **settings: Any) -> str | list[str]:
        """Generated text (without the prompt). A list of prompts gives a list of texts; with
        ``num_return_sequences > 1`` each prompt gives a list."""
        single = isinstance(prompt, str)
        results = self.complete([prompt] if single else list(prompt), **settings)
        texts = [[g.text for g in per_prompt] for per_prompt in results]
        flat = [t[0] if len(t) == 1 else t for t in texts]
        return flat[0] if single else flat

    def stream(self, prompt: str = "", **settings: Any) -> Iterator[str]:
        """Yield text pieces as they are generated (never splitting a character)."""
        from .generation import stream

        config = self.generation_config(**settings)
        yield from stream(
            self.model,
            self.encode_prompt(prompt),
            config,
            tokenizer=self.tokenizer,
            eos_id=self.tokenizer.eos_id,
            draft=None if self.draft is None else self.draft.model,
        )

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_id
        return 0 if pad is None else pad


QUANTIZATIONS = ("int8",)


def load(
    directory: str | Path,
    *,
    dtype: str = "fp32",
    device: str = "cpu",
    quantize: str | None = None,
    draft: str | Path | None = None,
) -> TextGenerator:
    """Load a checkpoint directory for generation.

    Args:
        directory: a checkpoint (e.g. ``runs/x/best``) or a run directory holding ``best/``.
        dtype: ``fp32`` or ``bf16`` (weights converted; faster on CPUs with bf16 units); with
            int8 weights, the dtype of the activations.
        device: ``cpu``, ``cuda``...
        quantize: ``"int8"``: every linear layer's weight to int8 with per-output-channel
            scales (:mod:`rnn2gpt.models.quantized`). A checkpoint written by ``rnn2gpt
            quantize`` is int8 already.
        draft: a checkpoint over the same tokenizer to draft tokens with (speculative decoding,
            loaded with the same dtype, device and quantization): see
            :meth:`TextGenerator.use_draft`.
    """
    from .checkpoint import load_checkpoint
    from .models.quantized import quantize_model

    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of fp32, bf16 (got {dtype!r})")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"quantize must be one of {', '.join(QUANTIZATIONS)} (got {quantize!r})")
    checkpoint = load_checkpoint(resolve_checkpoint_dir(directory), map_location=device)
    if quantize == "int8":
        quantize_model(checkpoint.model)
    checkpoint.model.to(device=device, dtype=_DTYPES[dtype]).eval()
    use_inference_layout(checkpoint.model)
    generator = TextGenerator(checkpoint)
    if draft is not None:
        generator.use_draft(load(draft, dtype=dtype, device=device, quantize=quantize))
    return generator


# ---------------------------------------------------------------------- training


# A translation or summarization run without a preset (the presets' models are language models)
# gets an encoder-decoder of the default shape over a joint BPE vocabulary, unless told otherwise.
# Its runs go to runs/<task>.
SEQ2SEQ_DEFAULTS: dict[str, dict[str, Any]] = {
    task: {
        "model": {"arch": "transformer", "n_head": 4},
        "tokenizer": {"kind": "bpe", "vocab_size": 8000},
        "run_name": task,
    }
    for task in ("translation", "summarization")
}

# TrainRequest's named options and the settings they set.
_OPTION_KEYS = {
    "data": ("data", "path"),
    "val_data": ("data", "val_path"),
    "data_dir": ("data", "data_dir"),
    "source": ("data", "source_path"),
    "target": ("data", "target_path"),
    "val_source": ("data", "val_source_path"),
    "val_target": ("data", "val_target_path"),
    "model": ("model", "arch"),
    "tokenizer": ("tokenizer", "kind"),
    "seed": ("train", "seed"),
    "task": ("train", "task"),
}


@dataclass(frozen=True)
class TrainRequest:
    """What a user asks of ``rnn2gpt train``, before it becomes a :class:`RunConfig`."""

    preset: str | None = None
    data: str | None = None
    val_data: str | None = None
    data_dir: str | None = None
    model: str | None = None
    tokenizer: str | None = None
    max_steps: int | None = None
    max_time: str | float | None = None
    seed: int | None = None
    overrides: tuple[str, ...] = ()
    # Sequence to sequence: the task and line-aligned files (see train.task, data.*_path).
    task: str | None = None
    source: str | None = None
    target: str | None = None
    val_source: str | None = None
    val_target: str | None = None
    separate_tokenizers: bool = False

    def run_config(self, base: RunConfig | None = None) -> RunConfig:
        """Defaults < preset (or ``base``) < named options < ``overrides``; validated.

        ``base`` is the saved configuration of a run being resumed: only what the user names
        explicitly changes it.
        """
        if base is not None and self.preset is not None:
            raise ConfigError("a resumed run keeps its own settings; drop --preset (use --set)")
        config = base if base is not None else load_preset(self.preset or DEFAULT_PRESET)
        named: dict[str, dict[str, Any]] = {}
        for option, (section, key) in _OPTION_KEYS.items():
            value = getattr(self, option)
            if value is not None:
                named.setdefault(section, {})[key] = value
        if self.data is not None and self.val_data is None:
            # A new corpus replaces the preset's whole data section (its validation/test files).
            named["data"].update(val_path="", test_path="")
        if self.separate_tokenizers:
            named.setdefault("tokenizer", {})["separate"] = True
        named.setdefault("train", {}).update(self._budget())
        for section, values in named.items():
            config = config.with_values(section, **values)
        config = self._task_defaults(config, resumed=base is not None)
        return config.with_overrides(list(self.overrides)).validate()

    def _budget(self) -> dict[str, Any]:
        """An explicit step budget replaces the preset's time budget, and the other way round."""
        values: dict[str, Any] = {}
        if self.max_steps is not None:
            values.update(max_steps=int(self.max_steps), max_time=0.0)
        if self.max_time is not None:
            values.update(max_time=parse_duration(self.max_time))
            values.setdefault("max_steps", 10**9)
        return values

    def _task_defaults(self, config: RunConfig, *, resumed: bool) -> RunConfig:
        """A new run of a task with defaults of its own (:data:`SEQ2SEQ_DEFAULTS`) and no preset
        gets its model and tokenizer, where the user named none."""
        defaults = SEQ2SEQ_DEFAULTS.get(config.train.task)
        if defaults is None or resumed or self.preset is not None:
            return config
        for section, option in (("model", self.model), ("tokenizer", self.tokenizer)):
            if option is None:
                config = config.with_values(section, **defaults[section])
        return config

    def default_out(self) -> Path:
        """``runs/<preset>``, or ``runs/<task>`` for a sequence-to-sequence run without one."""
        task_run = SEQ2SEQ_DEFAULTS.get(str(self.task), {}).get("run_name")
        return Path("runs") / Path(self.preset or task_run or DEFAULT_PRESET).stem


def train(
    preset: str | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
    overwrite: bool = False,
    config: RunConfig | None = None,
    **options: Any,
):
    """Train a model; mirrors ``rnn2gpt train``. Returns the trainer's ``TrainResult``.

    Options: ``data``, ``val_data``, ``data_dir``, ``model`` (rnn|lstm|gru|gpt|seq2seq-rnn|
    transformer), ``tokenizer`` (char|word|bpe), ``max_steps``, ``max_time`` ("10m"), ``seed``,
    ``overrides`` (["train.lr=3e-4", ...]), and for translation and summarization ``task``,
    ``source``, ``target``, ``val_source``, ``val_target``, ``separate_tokenizers``. Pass
    ``config`` to give a complete :class:`RunConfig` instead. ``resume=True`` continues the run
    in ``out`` with its saved settings (options given here still apply, e.g. a longer
    ``max_steps``). ``overwrite=True`` lets a new run replace the checkpoints already in ``out``.
    The run's loss curve is drawn to ``out/loss_curve.svg`` when it ends.
    """
    from .training import train as run_training

    valid = {f.name for f in dataclasses.fields(TrainRequest)} - {"preset"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
        )
    if "overrides" in options:
        options["overrides"] = tuple(options["overrides"])
    request = TrainRequest(preset=preset, **options)
    out_dir = Path(out) if out is not None else request.default_out()
    if config is None:
        base = read_config(resume_dir(out_dir)) if resume else None
        config = request.run_config(base)
    result = run_training(
        config,
        out_dir,
        resume=resume,
        init_from=str(init_from) if init_from else None,
        overwrite=overwrite,
    )
    draw_loss_curve(out_dir, config)
    return result


def draw_loss_curve(run_dir: str | Path, config: RunConfig) -> Path | None:
    """``run_dir/loss_curve.svg`` from the run's ``metrics.jsonl``; None when there is nothing
    to draw or it cannot be written (a plot is never worth failing a finished run). SVG written
    by hand (:mod:`rnn2gpt.analysis.loss_svg`): matplotlib's PNG took 1.2-1.5 s of every run's
    end; :func:`rnn2gpt.analysis.plot_loss_curve` still draws one."""
    from .analysis.loss_svg import write_loss_curve_svg

    run_dir = Path(run_dir)
    try:
        return write_loss_curve_svg(
            run_dir / "metrics.jsonl",
            run_dir / LOSS_CURVE_FILE,
            title=f"{config.model.arch} on {config.tokenizer.kind} tokens",
        )
    except (OSError, ValueError) as exc:
        logger.warning("could not draw the loss curve: %s", exc)
        return None


# ---------------------------------------------------------------------- fine-tuning and interop

MERGED_DIR = "merged"


def finetune(
    checkpoint: str | Path,
    *,
    data: str | Path,
    val_data: str | Path | None = None,
    out: str | Path | None = None,
    max_steps: int | None = None,
    max_time: str | float | None = None,
    lora_rank: int = 0,
    lora_alpha: float | None = None,
    lora_targets: str | Sequence[str] | None = None,
    lora_dropout: float | None = None,
    merge: bool = False,
    seed: int | None = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
):
    """Fine-tune ``checkpoint`` on new text; mirrors ``rnn2gpt finetune``. Returns the
    trainer's ``TrainResult``.

    The run starts from the checkpoint's weights and tokenizer (the new text is encoded with
    that tokenizer) with a fresh optimizer and learning-rate schedule; every other setting comes
    from the checkpoint's saved config, then the options here, then ``overrides``
    (``["train.lr=1e-4", ...]``). Without a budget the source run's own budget applies.

    Args:
        checkpoint: a checkpoint (``runs/x/best``) or a run folder (its ``best/`` is used).
        data, val_data: the new training text and an optional validation file (default: the
            last ``data.val_fraction`` of ``data``).
        out: the run folder (default ``runs/<name of checkpoint>-finetuned``).
        lora_rank: 0 = full fine-tuning; R > 0 trains rank-R LoRA adapters only (the base
            weights stay frozen; checkpoints hold the base weights plus ``adapter.safetensors``).
        lora_alpha, lora_targets, lora_dropout: the adapters' scale, module-name suffixes
            (e.g. ``"attn.c_attn,mlp.c_fc"``; None = the model's defaults) and input dropout.
        merge: after a LoRA run, also write ``OUT/merged/``: the best checkpoint with the adapters
            folded into the weights (a plain checkpoint); its path is ``result.merged_dir``.
        overwrite: replace a run (and its ``merged/``) already in ``out``.

    An interrupted fine-tune continues exactly with ``train(out=OUT, resume=True)``
    (``rnn2gpt train --resume OUT``); ``finetune`` always starts afresh from ``checkpoint``.
    """
    from .checkpoint import merge_lora_checkpoint as merge_checkpoint
    from .config import TrainConfig
    from .training import train as run_training

    source = resolve_checkpoint_dir(checkpoint)
    # The source's data files are not this run's (its test file included).
    base = read_config(source).with_values("data", test_path="")
    defaults = TrainConfig()
    if lora_targets is not None and not isinstance(lora_targets, str):
        lora_targets = ",".join(lora_targets)
    # The source run's own LoRA settings never carry over: each fine-tune says what it wants.
    base = base.with_values(
        "train",
        lora_rank=int(lora_rank or 0),
        lora_alpha=defaults.lora_alpha if lora_alpha is None else float(lora_alpha),
        lora_targets=lora_targets or "",
        lora_dropout=defaults.lora_dropout if lora_dropout is None else float(lora_dropout),
    )
    request = TrainRequest(
        data=str(data),
        val_data=None if val_data is None else str(val_data),
        data_dir="",  # the new paths are the user's own, not relative to the source's data_dir
        max_steps=max_steps,
        max_time=max_time,
        seed=seed,
        overrides=tuple(overrides),
    )
    config = request.run_config(base)
    out_dir = Path(out) if out is not None else default_finetune_dir(source)
    merged = out_dir / MERGED_DIR
    if merge:
        if config.train.lora_rank <= 0:
            raise ConfigError(
                "--merge folds LoRA adapters into the weights, so it needs --lora-rank R; a full "
                "fine-tune already writes plain checkpoints"
            )
        if merged.is_dir() and any(merged.iterdir()) and not overwrite:
            raise ConfigError(
                f"{merged} already exists; choose another --out folder or pass --overwrite"
            )
    result = run_training(config, out_dir, init_from=str(source), overwrite=overwrite)
    draw_loss_curve(out_dir, config)
    if merge and not result.interrupted:
        result.merged_dir = merge_checkpoint(out_dir / "best", merged, overwrite=True)
    return result


def quantize_checkpoint(
    checkpoint: str | Path, dest: str | Path, *, kind: str = "int8", overwrite: bool = False
) -> Path:
    """Write ``checkpoint`` with int8 weights to ``dest`` (``rnn2gpt quantize``): safetensors
    with each linear layer's ``qweight`` and ``scale``, loadable without the original."""
    from .checkpoint import load_checkpoint, save_checkpoint
    from .checkpoint.files import destination_in_use
    from .models.quantized import quantize_model

    if kind not in QUANTIZATIONS:
        raise ConfigError(f"quantize must be one of {', '.join(QUANTIZATIONS)} (got {kind!r})")
    source = resolve_checkpoint_dir(checkpoint)
    target = Path(dest).expanduser()
    if destination_in_use(target, overwrite):
        read_config(target)  # replace only a checkpoint
    loaded = load_checkpoint(source)
    if loaded.has_adapter:
        raise ConfigError(
            f"{source} holds LoRA adapters; merge them first (rnn2gpt merge-lora), then quantize"
        )
    save_checkpoint(
        target,
        model=quantize_model(loaded.model),
        tokenizer=loaded.tokenizer,
        config=loaded.config,
        source_tokenizer=loaded.source_tokenizer,
    )
    return target


def default_finetune_dir(checkpoint: str | Path) -> Path:
    """``runs/<run name>-finetuned``; the run name of ``runs/x/best`` is ``x``."""
    path = Path(checkpoint).expanduser().resolve()
    if path.name in ("best", "last", MERGED_DIR) and path.parent.name:
        path = path.parent
    return Path("runs") / f"{path.name or 'model'}-finetuned"


def merge_lora_checkpoint(
    checkpoint: str | Path, dest: str | Path, *, overwrite: bool = False
) -> Path:
    """Fold a LoRA checkpoint's adapters into its weights and save a plain checkpoint at
    ``dest``; mirrors ``rnn2gpt merge-lora``. ``checkpoint`` may be a run folder."""
    from .checkpoint import merge_lora_checkpoint as merge

    return merge(resolve_checkpoint_dir(checkpoint), dest, overwrite=overwrite)


def import_hf(src: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Convert a Hugging Face GPT-2 folder (``save_pretrained`` output) into an rnn2gpt
    checkpoint; mirrors ``rnn2gpt import-hf``. Returns the checkpoint path."""
    from .interop import import_hf as convert

    return convert(src, out, overwrite=overwrite)


def export_hf(
    checkpoint: str | Path, dest: str | Path, *, overwrite: bool = False, weights_only: bool = False
) -> Path:
    """Write a GPT checkpoint (or run folder) as a Hugging Face GPT-2 folder that
    ``AutoModelForCausalLM.from_pretrained`` reads; mirrors ``rnn2gpt export-hf``. A LoRA
    checkpoint is exported with its adapters merged."""
    from .interop import export_hf as convert

    return convert(
        resolve_checkpoint_dir(checkpoint), dest, overwrite=overwrite, weights_only=weights_only
    )


# ---------------------------------------------------------------------- responsible generation


@dataclass(frozen=True)
class WatermarkVerdict:
    """What :func:`detect_watermark` found.

    Attributes:
        detection: counts, z-score, p-value and verdict, per-token flags
            (:class:`~rnn2gpt.generation.watermark.Detection`).
        pieces: the text of each judged token (the prompt excluded).
        prompt: the prompt given, which served as context only.
        dropped: characters of the text outside a char vocabulary, left out (a model with that
            vocabulary cannot have written them).
    """

    detection: Any
    pieces: list[str]
    prompt: str
    dropped: int

    def html(self) -> str:
        from .analysis.watermark_view import watermark_html

        return watermark_html(self.pieces, self.detection, self.prompt)


def detect_watermark(
    source: str | Path | Any,
    text: str,
    key: str,
    *,
    prompt: str = "",
    gamma: float = 0.25,
    context: int = 1,
    threshold: float = 4.0,
    count_repeats: bool = False,
) -> WatermarkVerdict:
    """Whether ``text`` carries the watermark of ``key`` (``rnn2gpt detect``).

    ``source``: a checkpoint or run folder (only its tokenizer is read), or a tokenizer. The
    text is scored with that tokenizer; ``prompt``, when given, is the context of the first
    token and is not counted. ``gamma`` and ``context`` must be those the text was written with.
    """
    from .analysis.common import token_pieces
    from .checkpoint import read_tokenizer
    from .generation.watermark import detect

    if isinstance(source, (str, Path)):
        tokenizer = read_tokenizer(resolve_checkpoint_dir(source))
    else:
        tokenizer = source
    prompt_ids, _ = _encode_known(tokenizer, prompt) if prompt else ([], 0)
    ids, dropped = _encode_known(tokenizer, text)
    detection = detect(
        prompt_ids + ids,
        key,
        gamma=gamma,
        context=context,
        prompt_len=len(prompt_ids),
        threshold=threshold,
        count_repeats=count_repeats,
    )
    return WatermarkVerdict(detection, token_pieces(tokenizer, ids), prompt, dropped)


@dataclass
class DraftCorpus:
    """What :func:`write_draft_corpus` wrote: the file, its documents and characters, the
    tokens the target generated, and the prompts skipped for characters its tokenizer lacks."""

    path: Path
    documents: int
    characters: int
    generated: int
    skipped: int


def write_draft_corpus(
    target: str | Path,
    out: str | Path,
    *,
    data: str | Path | None = None,
    prompts: int = 4000,
    prompt_length: int = 48,
    new_tokens: int = 160,
    batch_size: int = 64,
    overwrite: bool = False,
    progress: Any = None,
) -> DraftCorpus:
    """Write the text to distill a drafter on (``rnn2gpt draft-corpus``): the target's greedy
    continuations of ``prompts`` prompts of ``prompt_length`` characters, each prompt followed by
    its continuation, blank lines between (:mod:`rnn2gpt.generation.draft_corpus`).

    The prompts come from ``data``, or by default from the training part of the target's own
    training text (the validation part stays unseen). Fine-tune a drafter over the target's
    tokenizer on the file (``rnn2gpt finetune DRAFT --data OUT``), then decode with
    ``--draft``. The file is written atomically; an existing one is kept unless ``overwrite``.
    """
    from .atomic import write_text_atomic
    from .data import read_text
    from .errors import DataError
    from .generation.draft_corpus import spread_prompts, target_documents
    from .models.seq2seq import is_seq2seq

    for name, value in (
        ("prompts", prompts),
        ("prompt_length", prompt_length),
        ("new_tokens", new_tokens),
        ("batch_size", batch_size),
    ):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1 (got {value})")
    destination = Path(out).expanduser()
    if destination.is_dir():
        raise ConfigError(f"{destination} is a directory; give a file name for the corpus")
    if destination.exists() and not overwrite:
        raise ConfigError(f"{destination} already exists; pass --overwrite to replace it")
    generator = load(target)
    if is_seq2seq(generator.model):
        raise ConfigError(
            f"{generator.directory} is an encoder-decoder; a draft corpus needs a language model "
            "(encoder-decoders draft by prompt lookup: --prompt-lookup N)"
        )
    text = read_text(data) if data is not None else training_part(generator.config)
    chosen = spread_prompts(text, prompts, prompt_length)
    if not chosen:
        raise DataError(
            f"the text has fewer than {prompt_length} characters; give more text or a shorter "
            "--prompt-length"
        )
    # Greedy: the drafter learns the token the target picks. A continuation ends at the target's
    # end-of-text token, as plain decoding would end it.
    config = GenerationConfig(temperature=0.0, max_new_tokens=new_tokens, stop_at_eos=True)
    written = target_documents(
        generator.model,
        generator.tokenizer,
        chosen,
        config,
        batch_size=batch_size,
        progress=progress,
    )
    if not written.documents:
        raise DataError(
            f"none of the {len(chosen)} prompts could be encoded by {generator.directory}'s "
            "tokenizer; give text in the target's own alphabet"
        )
    corpus = "\n\n".join(written.documents) + "\n"
    write_text_atomic(destination, corpus, prefix=".draft-corpus-")
    return DraftCorpus(
        destination, len(written.documents), len(corpus), written.generated, written.skipped
    )


def training_text(config: RunConfig) -> str:
    """The training text a run read: ``data.path`` (under ``data.data_dir``) or the bundled
    corpus; DataError when it is no longer where the run found it."""
    from .data import bundled_corpus_path, read_text, resolve_data_path

    if not config.data.path:
        return read_text(bundled_corpus_path())
    return read_text(resolve_data_path(config.data.path, config.data.data_dir))


def training_part(config: RunConfig) -> str:
    """The part of a run's training text it trained on: without a separate validation file, all
    but the last ``data.val_fraction``, cut where the trainer cut it."""
    text = training_text(config)
    if config.data.val_path:
        return text
    return text[: int(len(text) * (1.0 - config.data.val_fraction))]


def sample_report(
    generator: TextGenerator, samples: Sequence[str], train_text: str | None = None
) -> dict[str, Any]:
    """Quality of generated ``samples`` (``generate --report``): distinct-1/2 and the 4-gram
    repetition rate over words (:mod:`rnn2gpt.evaluation.diversity`), and per sample the longest
    span copied verbatim from ``train_text`` (default: the run's own training text), in tokens
    of the checkpoint's tokenizer and in characters (:mod:`rnn2gpt.evaluation.memorization`)."""
    import numpy as np

    from .analysis.common import token_pieces
    from .evaluation.diversity import diversity_metrics
    from .evaluation.memorization import CopyIndex

    if train_text is None:
        from .errors import DataError

        try:
            train_text = training_text(generator.config)
        except DataError as exc:
            raise DataError(
                f"--report looks for copies in the run's training text, which cannot be read "
                f"({exc}); give it with --train-text FILE"
            ) from None
    text = train_text
    corpus, _ = _encode_known(generator.tokenizer, text)
    index = CopyIndex(np.asarray(corpus, dtype=np.int32))
    copies = []
    for sample in samples:
        ids, _ = _encode_known(generator.tokenizer, sample)
        span = index.longest_copy(ids)
        pieces = token_pieces(generator.tokenizer, ids[span.sample_start :][: span.length])
        copied = "".join(pieces) if span.length else ""
        copies.append({"tokens": span.length, "chars": len(copied), "text": copied})
    return {**diversity_metrics(list(samples)), "longest_copy": copies, "copy_min_tokens": index.k}


def _encode_known(tokenizer: Any, text: str) -> tuple[list[int], int]:
    """Token ids of ``text`` and how many characters were left out: a char vocabulary without
    ``<unk>`` cannot encode characters it never saw, and its models never write them."""
    from .errors import TokenizerError

    try:
        return tokenizer.encode(text), 0
    except TokenizerError:
        if tokenizer.kind != "char":
            raise
    known = {c for c in set(text) if _encodes(tokenizer, c)}
    kept = "".join(c for c in text if c in known)
    return (tokenizer.encode(kept) if kept else []), len(text) - len(kept)


def _encodes(tokenizer: Any, character: str) -> bool:
    from .errors import TokenizerError

    try:
        tokenizer.encode(character)
    except TokenizerError:
        return False
    return True


# ---------------------------------------------------------------------- the machine


def doctor_report(bench_seconds: float | None = 10.0) -> dict[str, Any]:
    """What this machine offers and which paths ``train`` and ``generate`` will take, and why.

    ``bench_seconds``: how long to measure matmul GFLOP/s and weight-read GB/s
    (:func:`rnn2gpt.hardware.measure_throughput`); None skips the measurement (``bench`` is
    then None). Mirrors ``rnn2gpt doctor --json``.
    """
    from . import hardware
    from .models.base import decoding_paths
    from .models.native_ops import training_path
    from .training import memory
    from .training.precision import precision_choice

    choice = precision_choice("auto", "cpu")
    return {
        "cpu": {
            "model": hardware.cpu_model(),
            "features": hardware.cpu_features(),
            "capability": hardware.cpu_capability(),
            "onednn_isa_cap": hardware.onednn_isa_cap(),
        },
        "torch": {
            "version": str(torch.__version__),
            "onednn": bool(torch.backends.mkldnn.is_available()),
            "threads": int(torch.get_num_threads()),
        },
        "fastpaths": hardware.fastpaths_mode(),
        "train": {
            "precision": "bf16" if choice.dtype is not None else "fp32",
            "precision_reason": choice.reason,
            "bf16_autocast_speedup": (
                hardware.bf16_autocast_speedup() if hardware.cpu_has_fast_bf16() else None
            ),
            "kernels": training_path(),
            "memory": memory.policy(),
        },
        "generate": decoding_paths(measure=bench_seconds is not None),
        "bench": None if bench_seconds is None else hardware.measure_throughput(bench_seconds),
    }
