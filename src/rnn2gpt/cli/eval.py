"""``rnn2gpt eval``: loss, perplexity and bits per character of a text (language models), or
BLEU/ROUGE of an encoder-decoder on parallel data (``--task``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import Rnn2GptError


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
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
        help="score an encoder-decoder with BLEU (translation) or ROUGE (summarization); "
        "default: the checkpoint's own task",
    )
    p.add_argument("--source", help="seq2seq: sources (lines, or a .jsonl file with fields)")
    p.add_argument("--target", help="seq2seq: references, line-aligned with --source")
    p.add_argument("--source-field", help="JSON Lines source field (default: source)")
    p.add_argument("--target-field", help="JSON Lines reference field (default: target)")
    p.add_argument("--num-beams", type=int, default=1, help="seq2seq: beams (1 = greedy)")
    p.add_argument("--max-new-tokens", type=int, help="seq2seq: longest output")
    p.add_argument("--max-examples", type=int, default=0, help="seq2seq: 0 = all pairs")
    p.add_argument("--output", help="seq2seq: write the decoded outputs to this file")
    return p


def run(args: argparse.Namespace) -> int:
    # A language model is scored on a text (--data), an encoder-decoder on parallel data
    # (--source, and --target or a .jsonl source).
    if args.source:
        return _run_seq2seq(args)
    if not args.data:
        raise Rnn2GptError(
            "give the text to evaluate with --data FILE, or an encoder-decoder's sources with "
            "--source FILE (and references with --target FILE)"
        )
    return _run_language_model(args)


def _run_language_model(args: argparse.Namespace) -> int:
    from ..api import load
    from ..data import encode_cached, read_text
    from ..evaluation import evaluate_lm

    gen = load(args.checkpoint)
    text = read_text(args.data)
    ids = encode_cached(text, gen.tokenizer, gen.config.data.cache_dir)
    train_cfg = gen.config.train
    metrics = evaluate_lm(
        gen.model,
        ids,
        batch_size=args.batch_size or train_cfg.batch_size,
        seq_len=args.seq_len or train_cfg.seq_len,
        stream=gen.model.carries_state,
        max_batches=args.max_batches,
        chars_per_token=len(text) / max(len(ids), 1),
    )
    _print({"data": str(args.data), **metrics}, args.json, width=16, digits=4)
    return 0


def _run_seq2seq(args: argparse.Namespace) -> int:
    """``eval DIR --task translation|summarization --source F [--target F]``: BLEU or ROUGE."""
    from ..tasks import evaluate_seq2seq, load_seq2seq

    runner = load_seq2seq(args.checkpoint)
    sources, references = _read_pairs(args, runner)
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
    _print(result, args.json, width=10, digits=2)
    return 0


def _read_pairs(args: argparse.Namespace, runner: Any) -> tuple[list[str], list]:
    """Sources and references: line-aligned --source/--target, or one JSON Lines --source."""
    from ..data.parallel import read_jsonl_pairs, read_line_pairs

    if args.target:
        split = read_line_pairs(args.source, args.target)
        return split.sources, split.targets
    if str(args.source).endswith((".jsonl", ".jsonl.gz")):
        data = runner.data_config
        source_field = args.source_field or (data.source_field if data else "") or "source"
        target_field = args.target_field or (data.target_field if data else "") or "target"
        split = read_jsonl_pairs(args.source, source_field, target_field)
        return split.sources, split.references
    raise Rnn2GptError("give the references with --target FILE (or a .jsonl --source)")


def _print(result: dict[str, Any], as_json: bool, *, width: int, digits: int) -> None:
    if as_json:
        print(json.dumps(result, indent=1))
        return
    for key, value in result.items():
        shown = f"{value:.{digits}f}" if isinstance(value, float) else value
        print(f"{key:>{width}}  {shown}")
