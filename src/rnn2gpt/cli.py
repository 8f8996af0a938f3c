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

from . import __version__
from .errors import Rnn2GptError

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
        overrides=tuple(args.set or ()),
    )
    out = args.out or args.resume
    if args.resume and args.out and Path(args.out) != Path(args.resume):
        raise Rnn2GptError("give either --resume DIR or --out DIR, not two different folders")
    config = request.run_config()
    result = train(args.preset, out=out, resume=bool(args.resume), config=config)
    _print_train_summary(result)
    return EXIT_INTERRUPTED if getattr(result, "interrupted", False) else 0


def _print_train_summary(result) -> None:
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
    lines.append(f"checkpoints in {out_dir}; try `rnn2gpt generate {out_dir}`")
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


def cmd_info(args: argparse.Namespace) -> int:
    from .api import resolve_checkpoint_dir
    from .training.checkpoint import load_checkpoint

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
    if ckpt.trainer_state:
        for key in ("step", "tokens", "best_val_loss"):
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


def cmd_presets(args: argparse.Namespace) -> int:
    from .config import DEFAULT_PRESET, list_presets

    presets = list_presets()
    width = max(len(name) for name in presets)
    for name, description in presets.items():
        mark = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:<{width}}  {description}{mark}")
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
    p.add_argument("--model", choices=["rnn", "lstm", "gru", "gpt"], help="architecture")
    p.add_argument("--tokenizer", choices=["char", "word", "bpe"], help="tokenizer kind")
    p.add_argument("--out", help="output folder (default runs/PRESET)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    budget.add_argument("--max-time", help="stop after this much training time, e.g. 90s, 10m, 1h")
    p.add_argument("--seed", type=int, help="random seed (runs are reproducible from it)")
    p.add_argument("--resume", metavar="DIR", help="continue an interrupted run in DIR exactly")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set train.lr=3e-4 --set model.n_layer=6",
    )
    p.set_defaults(func=cmd_train)

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
    p.add_argument("--data", required=True, help="text file, .gz or directory")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--max-batches", type=int, default=0, help="0 = the whole text")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="describe a checkpoint", description="Describe a checkpoint.")
    p.add_argument("checkpoint", metavar="DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "presets",
        help="list the shipped presets",
        description="List the shipped presets, one line each.",
    )
    p.set_defaults(func=cmd_presets)
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
