"""``rnn2gpt analyze``: look inside one model (gradient flow, attention, gates, per-token view,
diversity of samples)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
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
    return p


def run(args: argparse.Namespace) -> int:
    from ..analysis.analyze import AnalyzeOptions, analyze_model, read_analysis_text
    from ..checkpoint import load_checkpoint, resolve_checkpoint_dir
    from ..data import load_corpus, read_text

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
