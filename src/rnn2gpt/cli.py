"""The ``rnn2gpt`` command line.

Every command has ``--help``. Mistakes a user can make (bad path, unknown setting, corrupt
checkpoint...) end with one line ``error: ...`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import ConfigError, Rnn2GptError

if TYPE_CHECKING:
    from .experiments.compare import CompareSettings

logger = logging.getLogger("rnn2gpt")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


# ---------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    from .api import TrainRequest, train

    request = TrainRequest(
        preset=args.preset,
        data=args.data,
        val_data=args.val_data,
        data_dir=args.data_dir,
        model=args.model,
        tokenizer=args.tokenizer,
        max_steps=args.max_steps,
        max_time=args.max_time,
        seed=args.seed,
        overrides=_seq2seq_train_overrides(args) + tuple(args.set or ()),
    )
    if args.task and args.task != "lm" and not args.out and not args.resume:
        args.out = str(Path("runs") / (args.preset or args.task))
    if args.resume and args.out and Path(args.out) != Path(args.resume):
        raise Rnn2GptError("give either --resume DIR or --out DIR, not two different folders")
    out = args.resume or args.out
    base = None
    if args.resume:
        from .checkpoint import read_config

        last = Path(args.resume) / "last"
        if not last.is_dir():
            raise Rnn2GptError(
                f"cannot resume: {last} does not exist; start a new run without --resume"
            )
        base = read_config(last)
    config = request.run_config(base)
    result = train(
        args.preset, out=out, resume=bool(args.resume), config=config, overwrite=args.overwrite
    )
    _print_train_summary(result, config.train.task)
    return EXIT_INTERRUPTED if getattr(result, "interrupted", False) else 0


def _seq2seq_train_overrides(args: argparse.Namespace) -> tuple[str, ...]:
    """``--task/--source/--target/--val-source/--val-target/--separate-tokenizers`` as
    ``section.key=value`` settings (given before ``--set``, which may override them)."""
    values = []
    if getattr(args, "separate_tokenizers", False):
        values.append("tokenizer.separate=true")
    task = getattr(args, "task", None)
    if task:
        values.append(f"train.task={task}")
        if task != "lm" and not args.preset and not args.resume and args.model is None:
            # No preset: an encoder-decoder of the default shape over a joint BPE vocabulary.
            values += ["model.arch=transformer", "model.n_head=4"]
            if args.tokenizer is None:
                values += ["tokenizer.kind=bpe", "tokenizer.vocab_size=8000"]
    for option, key in (
        ("source", "source_path"),
        ("target", "target_path"),
        ("val_source", "val_source_path"),
        ("val_target", "val_target_path"),
    ):
        value = getattr(args, option, None)
        if value is not None:
            values.append(f"data.{key}={value}")
    return tuple(values)


_TASK_COMMANDS = {"lm": "generate", "translation": "translate", "summarization": "summarize"}


def _print_train_summary(result, task: str = "lm") -> None:
    out_dir = Path(result.out_dir)
    metrics = result.final_metrics or {}
    lines = [
        f"trained {result.steps} steps, {result.tokens:,} tokens in {result.elapsed:.0f} s "
        f"({result.tokens_per_sec:,.0f} tokens/s)",
    ]
    if result.best_val_loss is not None:
        lines.append(f"best validation loss {result.best_val_loss:.4f}")
    for key in ("val_loss", "val_perplexity", "val_bits_per_char", "test_loss", "test_perplexity"):
        if key in metrics and metrics[key] is not None:
            lines.append(f"{key.replace('_', ' ')} {metrics[key]:.4f}")
    if getattr(result, "interrupted", False):
        lines.append(
            f"interrupted: saved {out_dir / 'last'}; continue with "
            f"`rnn2gpt train --resume {out_dir}`"
        )
    command = _TASK_COMMANDS.get(task, "generate")
    lines.append(f"checkpoints in {out_dir}; try `rnn2gpt {command} {out_dir}`")
    print("\n".join(lines))


def cmd_generate(args: argparse.Namespace) -> int:
    from .api import load

    gen = load(args.checkpoint, dtype=args.dtype)
    settings = _generation_settings(args, gen)
    if args.batch_file:
        prompts = _read_prompts(args.batch_file)
    else:
        prompts = [args.prompt]

    streaming = (
        not args.json
        and args.logprobs is None
        and len(prompts) == 1
        and settings.get("num_beams", gen.config.generate.num_beams) == 1
    )
    if streaming:
        n = settings.pop("num_return_sequences", gen.config.generate.num_return_sequences)
        base_seed = settings.pop("seed", gen.config.generate.seed)
        for i in range(n):
            seed = None if base_seed is None else base_seed + i
            if i:
                print("\n" + "-" * 40)
            sys.stdout.write(prompts[0])
            for piece in gen.stream(prompts[0], seed=seed, **settings):
                sys.stdout.write(piece)
                sys.stdout.flush()
        sys.stdout.write("\n")
        return 0

    results = gen.complete(prompts, logprobs=args.logprobs, **settings)
    if args.json:
        records = []
        for prompt, per_prompt in zip(prompts, results):
            for index, g in enumerate(per_prompt):
                record = {
                    "prompt": prompt,
                    "index": index,
                    "text": g.text,
                    "finish_reason": g.finish_reason,
                    "token_ids": list(g.token_ids),
                }
                if args.logprobs is not None:
                    record["logprobs"] = g.logprobs
                    record["top_logprobs"] = [
                        {str(k): v for k, v in alt.items()} for alt in (g.top_logprobs or [])
                    ]
                records.append(record)
        print(
            json.dumps(records if len(records) != 1 else records[0], ensure_ascii=False, indent=1)
        )
        return 0
    for prompt, per_prompt in zip(prompts, results):
        for g in per_prompt:
            print(prompt + g.text)
            if args.logprobs is not None:
                for token_id, lp in zip(g.token_ids, g.logprobs or []):
                    piece = gen.tokenizer.decode([token_id])
                    print(f"  {piece!r:>12} {lp:8.4f}")
            print("-" * 40)
    return 0


def _generation_settings(args: argparse.Namespace, gen) -> dict:
    from .config import GenerationConfig

    names = {
        "max_new_tokens": args.max_new_tokens,
        "min_new_tokens": args.min_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "typical_p": args.typical_p,
        "repetition_penalty": args.repetition_penalty,
        "presence_penalty": args.presence_penalty,
        "frequency_penalty": args.frequency_penalty,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "num_beams": args.num_beams,
        "length_penalty": args.length_penalty,
        "num_return_sequences": args.num_samples,
        "seed": args.seed,
    }
    settings = {k: v for k, v in names.items() if v is not None}
    if args.stop:
        settings["stop"] = tuple(s.encode().decode("unicode_escape") for s in args.stop)
    if args.greedy:
        settings["temperature"] = 0.0
    if args.set:
        from .config import RunConfig

        overridden = (
            RunConfig(generate=GenerationConfig())
            .with_overrides([s if s.startswith("generate.") else f"generate.{s}" for s in args.set])
            .generate
        )
        for item in args.set:
            key = item.split("=", 1)[0].removeprefix("generate.")
            settings[key] = getattr(overridden, key)
    return settings


def _read_prompts(path: str) -> list[str]:
    from .data import read_text

    if path == "-":
        text = sys.stdin.read()
    else:
        text = read_text(path)
    prompts = [line for line in text.split("\n") if line.strip()]
    if not prompts:
        raise Rnn2GptError(f"{path}: no prompts found (one prompt per line)")
    return [p.replace("\\n", "\n") for p in prompts]


def cmd_eval(args: argparse.Namespace) -> int:
    if getattr(args, "task", None):
        return cmd_eval_seq2seq(args)
    if not args.data:
        raise Rnn2GptError("give the text to evaluate with --data FILE")
    from .api import load
    from .data import encode_cached, read_text
    from .evaluation import evaluate_lm

    gen = load(args.checkpoint)
    text = read_text(args.data)
    ids = encode_cached(text, gen.tokenizer, gen.config.data.cache_dir)
    train_cfg = gen.config.train
    seq_len = args.seq_len or train_cfg.seq_len
    metrics = evaluate_lm(
        gen.model,
        ids,
        batch_size=args.batch_size or train_cfg.batch_size,
        seq_len=seq_len,
        stream=gen.model.carries_state,
        max_batches=args.max_batches,
        chars_per_token=len(text) / max(len(ids), 1),
    )
    metrics = {"data": str(args.data), **metrics}
    if args.json:
        print(json.dumps(metrics, indent=1))
    else:
        for key, value in metrics.items():
            print(f"{key:>16}  {value:.4f}" if isinstance(value, float) else f"{key:>16}  {value}")
    return 0


def cmd_eval_seq2seq(args: argparse.Namespace) -> int:
    """``eval DIR --task translation|summarization --source F [--target F]``: BLEU or ROUGE."""
    from .tasks import evaluate_seq2seq, load_seq2seq

    if not args.source:
        raise Rnn2GptError("give the sources with --source FILE (and references with --target)")
    runner = load_seq2seq(args.checkpoint)
    sources, references = _read_seq2seq_pairs(args, runner)
    if args.max_examples:
        sources, references = sources[: args.max_examples], references[: args.max_examples]
    result = evaluate_seq2seq(
        runner,
        sources,
        references,
        task=args.task,
        num_beams=args.num_beams,
        max_new_tokens=args.max_new_tokens,
    )
    hypotheses = result.pop("hypotheses")
    if args.output:
        Path(args.output).write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for key, value in result.items():
            print(f"{key:>10}  {value:.2f}" if isinstance(value, float) else f"{key:>10}  {value}")
    return 0


def _read_seq2seq_pairs(args: argparse.Namespace, runner) -> tuple[list[str], list]:
    """Sources and references: line-aligned --source/--target, or one JSON Lines --source."""
    from .data.parallel import read_jsonl_pairs, read_line_pairs

    name = str(args.source)
    if args.target:
        split = read_line_pairs(args.source, args.target)
        return split.sources, split.targets
    if name.endswith((".jsonl", ".jsonl.gz")):
        data = getattr(runner, "data_config", None)
        source_field = args.source_field or (data.source_field if data else "") or "source"
        target_field = args.target_field or (data.target_field if data else "") or "target"
        split = read_jsonl_pairs(args.source, source_field, target_field)
        return split.sources, split.references
    raise Rnn2GptError("give the references with --target FILE (or a .jsonl --source)")


def _read_input_lines(path: str | None):
    """Lines of --input FILE, or of stdin one at a time (so pipes stream)."""
    if path:
        from .data.parallel import read_lines

        yield from read_lines(path)
        return
    for line in sys.stdin:
        yield line.rstrip("\n")


def _run_seq2seq_lines(args: argparse.Namespace, default_beams: int) -> int:
    from .tasks import load_seq2seq, plot_cross_attention

    runner = load_seq2seq(args.checkpoint)
    beams = args.num_beams if args.num_beams is not None else default_beams
    first = None
    lines = _read_input_lines(args.input)
    if args.input:
        lines = list(lines)
        outputs = runner.run(lines, num_beams=beams, max_new_tokens=args.max_new_tokens)
        for out in outputs:
            print(out)
        first = (lines[0], outputs[0]) if lines else None
    else:
        for line in lines:
            out = runner.run([line], num_beams=beams, max_new_tokens=args.max_new_tokens)[0]
            print(out, flush=True)
            first = first or (line, out)
    if args.plot_attention and first is not None:
        png = plot_cross_attention(runner, first[0], args.plot_attention, output=first[1])
        if png is not None:
            print(f"attention plot: {png}", file=sys.stderr)
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    return _run_seq2seq_lines(args, default_beams=5)


def cmd_summarize(args: argparse.Namespace) -> int:
    return _run_seq2seq_lines(args, default_beams=4)


def cmd_info(args: argparse.Namespace) -> int:
    from .api import resolve_checkpoint_dir
    from .checkpoint import load_checkpoint

    directory = resolve_checkpoint_dir(args.checkpoint)
    ckpt = load_checkpoint(directory)
    model = ckpt.model
    info = {
        "checkpoint": str(directory),
        "architecture": ckpt.config.model.arch,
        "parameters": model.num_parameters(),
        "tokenizer": f"{ckpt.tokenizer.kind} ({ckpt.tokenizer.vocab_size} tokens)",
        "context": model.max_context if model.max_context is not None else "unbounded (recurrent)",
    }
    if ckpt.separate_tokenizers:
        source = ckpt.source_tokenizer
        info["tokenizer"] += " for targets"
        info["src tokenizer"] = f"{source.kind} ({source.vocab_size} tokens)"
    if ckpt.has_adapter:
        train = ckpt.config.train
        info["adapter"] = (
            f"LoRA rank {train.lora_rank}, alpha {train.lora_alpha:g} (base + adapter)"
        )
    if ckpt.trainer_state:
        for key in ("step", "tokens", "best_val_loss", "trainable_parameters"):
            if key in ckpt.trainer_state:
                info[key] = ckpt.trainer_state[key]
    if args.json:
        print(json.dumps({**info, "config": ckpt.config.to_dict()}, indent=1))
        return 0
    for key, value in info.items():
        print(f"{key:>14}  {value}")
    print("\nmodel settings:")
    for key, value in ckpt.config.to_dict()["model"].items():
        print(f"  model.{key} = {value}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .api import finetune

    result = finetune(
        args.checkpoint,
        data=args.data,
        val_data=args.val_data,
        out=args.out,
        max_steps=args.max_steps,
        max_time=args.max_time,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_targets=args.lora_targets,
        lora_dropout=args.lora_dropout,
        merge=args.merge,
        seed=args.seed,
        overrides=tuple(args.set or ()),
        overwrite=args.overwrite,
    )
    _print_train_summary(result)
    if result.merged_dir is not None:
        print(f"merged checkpoint (adapters folded in) in {result.merged_dir}")
    elif args.merge and result.interrupted:
        print(
            "not merged (interrupted); after resuming, run `rnn2gpt merge-lora "
            f"{result.out_dir} {Path(result.out_dir) / 'merged'}`"
        )
    return EXIT_INTERRUPTED if result.interrupted else 0


def cmd_merge_lora(args: argparse.Namespace) -> int:
    from .api import merge_lora_checkpoint

    path = merge_lora_checkpoint(args.checkpoint, args.dest, overwrite=args.overwrite)
    print(f"merged checkpoint written to {path}")
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    from .api import import_hf

    path = import_hf(args.src, args.dest, overwrite=args.overwrite)
    print(f"imported {args.src} into {path}; try `rnn2gpt generate {path}`")
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:
    from .api import export_hf

    path = export_hf(
        args.checkpoint, args.dest, overwrite=args.overwrite, weights_only=args.weights_only
    )
    print(f"exported to {path}; load it with AutoModelForCausalLM.from_pretrained({str(path)!r})")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .config import DEFAULT_PRESET, list_presets

    presets = list_presets()
    width = max(len(name) for name in presets)
    for name, description in presets.items():
        mark = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:<{width}}  {description}{mark}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .experiments.compare import (
        TABLE_COLUMNS,
        refresh_comparison,
        results_rows,
        run_comparison,
    )

    if args.retime and not args.report_only:
        raise ConfigError("--retime times a finished comparison again; add --report-only")
    if args.report_only:
        comparison = refresh_comparison(args.out, retime=args.retime)
    else:
        comparison = run_comparison(_compare_settings(args), args.out)
    print(_text_table(TABLE_COLUMNS, results_rows(comparison)))
    out = Path(args.out)
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return 0


def _compare_settings(args: argparse.Namespace) -> CompareSettings:
    """The comparison the ``compare`` command's options ask for."""
    from .config import parse_duration
    from .experiments.compare import CompareSettings

    return CompareSettings(
        data=args.data,
        tokenizer=args.tokenizer,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        budget_seconds=parse_duration(args.budget) if args.budget else None,
        budget_tokens=args.budget_tokens,
        overrides=tuple(args.set or ()),
        prompt=args.prompt.replace("\\n", "\n"),
        seed=args.seed,
        match_params=not args.keep_sizes,
        target_params=args.target_params,
        gen_tokens=args.gen_tokens,
        isolate=not args.in_process,
        overwrite=args.overwrite,
    )


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(headers, widths))]
    lines += [
        "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        )
        for r in rows
    ]
    return "\n".join(lines)


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis.analyze import AnalyzeOptions, analyze_model, read_analysis_text
    from .api import resolve_checkpoint_dir
    from .checkpoint import load_checkpoint
    from .data import load_corpus, read_text

    directory = resolve_checkpoint_dir(args.checkpoint)
    ckpt = load_checkpoint(directory)
    chosen = {
        "gradient_flow": args.gradient_flow,
        "attention": args.attention,
        "gates": args.gates,
        "tokens": args.tokens,
        "diversity": args.diversity,
    }
    if not any(chosen.values()):  # nothing named: every analysis
        chosen = dict.fromkeys(chosen, True)
    prompt = (args.prompt or "").replace("\\n", "\n")
    text = read_analysis_text(args.text, prompt, lambda: load_corpus(ckpt.config.data).val_text)
    options = AnalyzeOptions(
        **chosen,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        batches=args.batches,
        seed=args.seed,
        max_tokens=args.max_tokens,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        unit=args.unit,
        copy_n=args.copy_n,
    )
    if args.out:
        out = Path(args.out)
    elif directory != Path(args.checkpoint):  # a run folder: next to its checkpoints
        out = Path(args.checkpoint) / "analysis"
    else:
        out = directory.parent / f"{directory.name}-analysis"
    result = analyze_model(
        ckpt.model.eval(),
        ckpt.tokenizer,
        out,
        text=text,
        prompt=prompt,
        train_text=read_text(args.train_data) if args.train_data else None,
        generation=ckpt.config.generate,
        options=options,
        label=f"{ckpt.config.model.arch} ({directory})",
    )
    for note in result.notes:
        print(f"note: {note}")
    diversity = result.numbers.get("diversity")
    if diversity:
        copied = diversity["copied_fraction"]
        print(
            f"diversity: distinct-1 {diversity['distinct_1']:.3f}, distinct-2 "
            f"{diversity['distinct_2']:.3f}, repetition rate {diversity['repetition_rate']:.3f}"
            + ("" if copied is None else f", copied {diversity['copy_n']}-grams {copied:.3f}")
        )
    tokens = result.numbers.get("tokens")
    if tokens and tokens.get("scored"):
        print(
            f"text: {tokens['mean_surprisal_bits']:.3f} bits per token, mean entropy "
            f"{tokens['mean_entropy_bits']:.3f} bits"
        )
    print("wrote " + ", ".join(str(f) for f in result.files))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .api import doctor_report

    report = doctor_report(None if args.no_bench else args.bench_seconds)
    if args.json:
        print(json.dumps(report))
        return 0
    cpu, build = report["cpu"], report["torch"]
    features = ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in cpu["features"].items())
    lines = [
        f"cpu        {cpu['model']}",
        f"features   {features}",
        f"pytorch    {build['version']} at {cpu['capability']}"
        + (f", oneDNN capped at {cpu['onednn_isa_cap']}" if cpu["onednn_isa_cap"] else "")
        + f"; oneDNN {'yes' if build['onednn'] else 'no'}; {build['threads']} threads",
        f"fastpaths  {report['fastpaths']} (RNN2GPT_FASTPATHS)",
        f"train      precision=auto runs {report['train']['precision_reason']}",
    ]
    lines += [f"generate   {name}: {path}" for name, path in report["generate"].items()]
    bench = report["bench"]
    if bench is not None:
        lines.append(
            f"measured   fp32 matmul {bench['fp32_gflops']:.0f} GFLOP/s, bf16 matmul "
            f"{bench['bf16_gflops']:.0f} GFLOP/s, weight read {bench['weight_read_gbps']:.1f} GB/s"
        )
        lines.append(
            "           training a model of N parameters runs about 6*N FLOPs per token at "
            "30-50% of the matmul rate of its precision"
        )
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnn2gpt",
        description="Neural text generation from RNN to GPT: train on your text, then generate.",
    )
    parser.add_argument("--version", action="version", version=f"rnn2gpt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a model (no arguments: the default GPT on Tiny Shakespeare)",
        description="Train a language model. With no arguments, trains the default "
        "character GPT on the bundled Tiny Shakespeare.",
    )
    p.add_argument("--preset", help="preset name (see `rnn2gpt presets`) or a .toml file")
    p.add_argument("--data", help="training text: a file, a .gz file or a directory")
    p.add_argument("--val-data", help="separate validation file (default: last 10%% of --data)")
    p.add_argument("--data-dir", help="folder the preset's relative data paths are read from")
    p.add_argument(
        "--model",
        choices=["rnn", "lstm", "gru", "gpt", "seq2seq-rnn", "transformer"],
        help="architecture",
    )
    p.add_argument("--tokenizer", choices=["char", "word", "bpe"], help="tokenizer kind")
    p.add_argument("--out", help="output folder (default runs/PRESET)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    budget.add_argument("--max-time", help="stop after this much training time, e.g. 90s, 10m, 1h")
    p.add_argument("--seed", type=int, help="random seed (runs are reproducible from it)")
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue an interrupted run (train or finetune) in DIR exactly: same weights, "
        "optimizer, schedule and data position (to start a new run from a checkpoint, use "
        "`rnn2gpt finetune`)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="let a new run replace the checkpoints already in --out",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set train.lr=3e-4 --set model.n_layer=6",
    )
    p.add_argument(
        "--task",
        choices=["lm", "translation", "summarization"],
        help="what to train (default: the preset's; lm = language model)",
    )
    p.add_argument("--source", help="seq2seq: training sources, one per line (plain or .gz)")
    p.add_argument("--target", help="seq2seq: training targets, line-aligned with --source")
    p.add_argument("--val-source", help="seq2seq: validation sources")
    p.add_argument("--val-target", help="seq2seq: validation targets")
    p.add_argument(
        "--separate-tokenizers",
        action="store_true",
        help="seq2seq: train one tokenizer on the sources and another on the targets instead of "
        "one joint tokenizer (tokenizer.separate=true)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "finetune",
        help="fine-tune a checkpoint on new text (full or LoRA)",
        description="Fine-tune a trained checkpoint on new text: the same trainer, started from "
        "the checkpoint's weights and tokenizer with a fresh optimizer and learning-rate "
        "schedule; other settings come from the checkpoint's config (change them with --set). "
        "The new text is encoded with the checkpoint's tokenizer. An interrupted fine-tune is "
        "continued exactly with `rnn2gpt train --resume OUT`; running finetune again starts over.",
    )
    p.add_argument("checkpoint", metavar="DIR", help="checkpoint or run folder to start from")
    p.add_argument("--data", required=True, help="new training text: a file, .gz or directory")
    p.add_argument("--val-data", help="separate validation file (default: last 10%% of --data)")
    p.add_argument("--out", help="output folder (default runs/<name of DIR>-finetuned)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    budget.add_argument("--max-time", help="stop after this much training time, e.g. 90s, 10m")
    p.add_argument(
        "--lora-rank",
        type=int,
        default=0,
        metavar="R",
        help="train rank-R LoRA adapters only (base weights frozen); 0 = full fine-tuning",
    )
    p.add_argument("--lora-alpha", type=float, metavar="A", help="adapter scale alpha (16)")
    p.add_argument(
        "--lora-targets",
        metavar="A,B",
        help="layers to adapt, by name suffix, e.g. attn.c_attn,mlp.c_fc (default: the model's "
        "block linears; recurrent models: decoder)",
    )
    p.add_argument("--lora-dropout", type=float, metavar="P", help="dropout on the adapters' input")
    p.add_argument(
        "--merge",
        action="store_true",
        help="after a LoRA run, also write OUT/merged: the best checkpoint with the adapters "
        "folded into the weights",
    )
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set train.lr=1e-4 --set train.batch_size=8",
    )
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "generate",
        help="generate text from a checkpoint (streams to stdout)",
        description="Generate text from a checkpoint; streams as it is produced.",
    )
    p.add_argument("checkpoint", metavar="DIR", help="checkpoint or run folder")
    p.add_argument("--prompt", default="", help="text to continue (default: start fresh)")
    p.add_argument(
        "--batch-file",
        metavar="FILE",
        help="one prompt per line ('-' = stdin); generated as one batch",
    )
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--min-new-tokens", type=int)
    p.add_argument("--temperature", type=float, help="0 = greedy")
    p.add_argument("--greedy", action="store_true", help="same as --temperature 0")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--min-p", type=float)
    p.add_argument("--typical-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--presence-penalty", type=float)
    p.add_argument("--frequency-penalty", type=float)
    p.add_argument("--no-repeat-ngram-size", type=int)
    p.add_argument("--num-beams", type=int, help="beam search with this many beams")
    p.add_argument("--length-penalty", type=float)
    p.add_argument("--num-samples", type=int, help="samples per prompt")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--logprobs",
        type=int,
        metavar="N",
        nargs="?",
        const=0,
        help="print each token's log-probability (and N alternatives)",
    )
    p.add_argument("--json", action="store_true", help="print JSON results")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any generation setting, e.g. --set typical_p=0.9",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "eval",
        help="loss, perplexity and bits per character on a text",
        description="Evaluate a checkpoint on any text file.",
    )
    p.add_argument("checkpoint", metavar="DIR")
    p.add_argument("--data", help="text file, .gz or directory (language models)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--max-batches", type=int, default=0, help="0 = the whole text")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--task",
        choices=["translation", "summarization"],
        help="score an encoder-decoder: BLEU (translation) or ROUGE (summarization)",
    )
    p.add_argument("--source", help="seq2seq: sources (lines, or a .jsonl file with fields)")
    p.add_argument("--target", help="seq2seq: references, line-aligned with --source")
    p.add_argument("--source-field", help="JSON Lines source field (default: source)")
    p.add_argument("--target-field", help="JSON Lines reference field (default: target)")
    p.add_argument("--num-beams", type=int, default=1, help="seq2seq: beams (1 = greedy)")
    p.add_argument("--max-new-tokens", type=int, help="seq2seq: longest output")
    p.add_argument("--max-examples", type=int, default=0, help="seq2seq: 0 = all pairs")
    p.add_argument("--output", help="seq2seq: write the decoded outputs to this file")
    p.set_defaults(func=cmd_eval)

    for name, what, beams in (
        ("translate", "Translate", 5),
        ("summarize", "Summarize", 4),
    ):
        p = sub.add_parser(
            name,
            help=f"{what.lower()} lines of text with an encoder-decoder checkpoint",
            description=f"{what} each input line (stdin or --input) with an encoder-decoder "
            "checkpoint; one output line per input line.",
        )
        p.add_argument("checkpoint", metavar="DIR")
        p.add_argument("--input", help="file of input lines (default: stdin, line by line)")
        p.add_argument(
            "--num-beams", type=int, help=f"beam search width (default {beams}; 1 = greedy)"
        )
        p.add_argument("--max-new-tokens", type=int, help="longest output in tokens")
        p.add_argument(
            "--plot-attention",
            metavar="PNG",
            help="write the cross-attention heatmap of the first line to this PNG",
        )
        p.set_defaults(func=cmd_translate if name == "translate" else cmd_summarize)

    p = sub.add_parser("info", help="describe a checkpoint", description="Describe a checkpoint.")
    p.add_argument("checkpoint", metavar="DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "merge-lora",
        help="fold a LoRA checkpoint's adapters into a plain checkpoint",
        description="Fold the LoRA adapters of a fine-tuned checkpoint into its weights and save "
        "a plain checkpoint (same outputs, no adapter file).",
    )
    p.add_argument("checkpoint", metavar="DIR", help="LoRA checkpoint or run folder")
    p.add_argument("dest", metavar="DEST", help="folder for the merged checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint in DEST")
    p.set_defaults(func=cmd_merge_lora)

    p = sub.add_parser(
        "import-hf",
        help="convert a Hugging Face GPT-2 folder into a checkpoint",
        description="Convert a Hugging Face GPT-2 model folder (what save_pretrained writes: "
        "config.json, weights, vocab.json + merges.txt or tokenizer.json) into an rnn2gpt "
        "checkpoint. Nothing is downloaded.",
    )
    p.add_argument("src", metavar="SRC", help="Hugging Face model folder")
    p.add_argument("dest", metavar="DIR", help="folder for the new checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint in DIR")
    p.set_defaults(func=cmd_import_hf)

    p = sub.add_parser(
        "export-hf",
        help="write a GPT checkpoint as a Hugging Face GPT-2 folder",
        description="Write a GPT checkpoint as a Hugging Face GPT-2 folder that "
        "transformers' AutoModelForCausalLM / AutoTokenizer.from_pretrained can load. LoRA "
        "checkpoints are exported with their adapters merged.",
    )
    p.add_argument("checkpoint", metavar="DIR", help="GPT checkpoint or run folder")
    p.add_argument("dest", metavar="DEST", help="folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace a GPT-2 export in DEST")
    p.add_argument(
        "--weights-only",
        action="store_true",
        help="export a char/word-tokenizer model anyway (its tokenizer stays rnn2gpt's own)",
    )
    p.set_defaults(func=cmd_export_hf)

    p = sub.add_parser(
        "presets",
        help="list the shipped presets",
        description="List the shipped presets, one line each.",
    )
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser(
        "compare",
        help="train every architecture under the same budget and write a comparison report",
        description="Train RNN, LSTM, GRU and GPT (presets shakespeare-char-*) under the same "
        "budget with comparable parameter counts, then write OUT/report.md and OUT/report.html "
        "(table, validation curves, samples).",
    )
    p.add_argument("--data", help="training text (default: the bundled Tiny Shakespeare)")
    p.add_argument("--tokenizer", choices=["char", "word", "bpe"], help="tokenizer for all models")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget", help="training time per model, e.g. 90s, 10m (default 5m)")
    budget.add_argument(
        "--budget-tokens",
        type=int,
        metavar="N",
        help="training tokens per model instead of a time budget",
    )
    p.add_argument("--models", default="rnn,lstm,gru,gpt", help="comma-separated architectures")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument("--prompt", default="", help="prompt of every model's sample")
    p.add_argument("--seed", type=int, help="training and sampling seed")
    p.add_argument(
        "--target-params",
        type=int,
        metavar="N",
        help="size every model near N parameters (default: the GPT preset's count)",
    )
    p.add_argument(
        "--keep-sizes",
        action="store_true",
        help="keep the presets' sizes instead of matching parameter counts",
    )
    p.add_argument(
        "--gen-tokens",
        type=int,
        default=200,
        help="tokens generated to time decoding and for each sample (default 200)",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="train in this process (starts faster; peak memory is not measured)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace runs already in --out")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rewrite the report of the comparison in --out from its saved "
        "results and checkpoints",
    )
    p.add_argument(
        "--retime",
        action="store_true",
        help="with --report-only: time every model's generation again",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a setting for every model (model.n_layer=2) or one (gpt:model.n_head=4)",
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "analyze",
        help="look inside a model: gradient flow, attention, gates, per-token view, diversity",
        description="Analyse a checkpoint on a text. With no analysis named, runs them all; "
        "writes PNGs, HTML views and analysis.md / analysis.html.",
    )
    p.add_argument("checkpoint", metavar="DIR", help="checkpoint or run folder")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--text", metavar="FILE", help="text to analyse")
    text.add_argument("--prompt", help="text to analyse (and the prompt of diversity samples)")
    p.add_argument("--out", help="output folder (default DIR/analysis)")
    p.add_argument("--gradient-flow", action="store_true", help="gradient norm vs distance")
    p.add_argument("--attention", action="store_true", help="attention maps (GPT)")
    p.add_argument("--gates", action="store_true", help="gate activations (LSTM, GRU)")
    p.add_argument("--tokens", action="store_true", help="per-token probability and entropy")
    p.add_argument("--diversity", action="store_true", help="diversity of generated samples")
    p.add_argument(
        "--train-data",
        metavar="PATH",
        help="training text, for the share of generated n-grams copied from it",
    )
    p.add_argument("--seq-len", type=int, default=64, help="gradient-flow window (tokens)")
    p.add_argument("--batches", type=int, default=4, help="gradient-flow batches averaged")
    p.add_argument("--batch-size", type=int, default=8, help="gradient-flow windows per batch")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=64,
        help="tokens shown in attention maps and gate heatmaps",
    )
    p.add_argument("--samples", type=int, default=8, help="samples for the diversity metrics")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens per sample")
    p.add_argument(
        "--unit", choices=["word", "char"], default="word", help="unit of the diversity metrics"
    )
    p.add_argument("--copy-n", type=int, default=4, help="n of the copied n-grams")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser(
        "doctor",
        help="what this CPU offers and which fast paths train and generate will use",
        description="Describe this machine: the CPU and its features, the PyTorch build, which "
        "precision and fast paths `train` and `generate` will use and why, and a short "
        "measurement of matmul GFLOP/s and weight-read GB/s to predict training time. "
        "RNN2GPT_FASTPATHS=off turns every fast path off.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-bench", action="store_true", help="skip the measurement")
    p.add_argument(
        "--bench-seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="how long the measurement runs (default 10)",
    )
    p.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
    )
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return args.func(args)
    except Rnn2GptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `rnn2gpt generate ... | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
