"""Pre-train on Penn Treebank, fine-tune on Tiny Shakespeare: full, LoRA, and from scratch.

    python benchmarks/finetune.py --ptb ../shared/data/ptb [--pretrain-time 5m] [--steps 300]

1. Pre-train a byte-level BPE GPT on PTB (``rnn2gpt train --tokenizer bpe``).
2. With the same tokenizer, train on Tiny Shakespeare (bundled) for the same number of steps:
   (a) full fine-tuning (``rnn2gpt finetune``), (b) LoRA fine-tuning (``--lora-rank 8``),
   (c) from scratch (``rnn2gpt train`` with ``tokenizer.path`` = the pre-trained tokenizer).
Each run is its own process, timed, with its peak resident memory from ``/usr/bin/time``.
Validation: the last 10% of Tiny Shakespeare, in nats per BPE token (same tokenizer for all).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MODEL = [
    "--set",
    "model.n_layer=4",
    "--set",
    "model.n_head=4",
    "--set",
    "model.n_embd=256",
    "--set",
    "model.block_size=128",
    "--set",
    "model.dropout=0.0",
]
COMMON = [
    "--set",
    "train.batch_size=16",
    "--set",
    "train.seq_len=128",
    "--set",
    "train.progress=false",
    "--set",
    "train.eval_batches=0",
    "--overwrite",
]


def run(args: list[str], log: Path) -> tuple[float, int]:
    """Run ``rnn2gpt ARGS``; returns (wall seconds, peak RSS in MiB)."""
    cmd = ["/usr/bin/time", "-f", "MAXRSS_KB %M", sys.executable, "-m", "rnn2gpt", *args]
    print("$ rnn2gpt " + " ".join(args), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(args)}")
    rss_kb = int(proc.stderr.rsplit("MAXRSS_KB", 1)[1].split()[0])
    return wall, rss_kb // 1024


def best_val(out: Path) -> tuple[float, int]:
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if e.get("event") == "eval"]
    best = min(evals, key=lambda e: e["val_loss"])
    return best["val_loss"], evals[-1]["step"]


def trainable(out: Path) -> int:
    state = json.loads((out / "best" / "trainer_state.json").read_text())
    return int(state.get("trainable_parameters", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ptb", required=True, help="folder with ptb.train.txt.gz, ptb.valid.txt")
    parser.add_argument("--out", default="runs/finetune-bench")
    parser.add_argument("--pretrain-time", default="5m")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--bpe-vocab", type=int, default=4000)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ptb = Path(args.ptb)

    pre = out / "ptb-pretrain"
    wall, rss = run(
        [
            "train",
            "--data",
            str(ptb / "ptb.train.txt.gz"),
            "--val-data",
            str(ptb / "ptb.valid.txt"),
            "--tokenizer",
            "bpe",
            "--model",
            "gpt",
            "--out",
            str(pre),
            "--max-time",
            args.pretrain_time,
            "--set",
            f"tokenizer.vocab_size={args.bpe_vocab}",
            "--set",
            "train.lr=2e-3",
            "--set",
            "train.eval_interval=500",
            *MODEL,
            *COMMON,
        ],
        out / "pretrain.log",
    )
    pre_loss, pre_steps = best_val(pre)
    print(
        f"pre-trained on PTB: {pre_steps} steps, val loss {pre_loss:.4f}, {wall:.0f} s, {rss} MiB"
    )

    steps = [
        "--max-steps",
        str(args.steps),
        "--set",
        f"train.eval_interval={args.steps // 3}",
        "--set",
        "train.warmup_steps=30",
    ]
    rows = []
    variants = {
        "full fine-tune": [
            "finetune",
            str(pre / "best"),
            "--data",
            "shakespeare",
            "--set",
            "train.lr=1e-3",
        ],
        "LoRA r=8 (attn+mlp)": [
            "finetune",
            str(pre / "best"),
            "--data",
            "shakespeare",
            "--lora-rank",
            "8",
            "--lora-alpha",
            "16",
            "--set",
            "train.lr=3e-3",
        ],
        "from scratch": [
            "train",
            "--data",
            "shakespeare",
            "--model",
            "gpt",
            "--tokenizer",
            "bpe",
            "--set",
            f"tokenizer.path={pre / 'best' / 'tokenizer.json'}",
            "--set",
            "train.lr=2e-3",
            *MODEL,
        ],
    }
    from rnn2gpt.data import bundled_corpus_path

    corpus = str(bundled_corpus_path())
    for name, argv in variants.items():
        argv = [corpus if a == "shakespeare" else a for a in argv]
        run_dir = out / name.split()[0].lower().replace("lora", "lora")
        wall, rss = run(
            [*argv, "--out", str(run_dir), *steps, *COMMON], out / f"{run_dir.name}.log"
        )
        loss, _ = best_val(run_dir)
        info = json.loads(
            subprocess.run(
                [sys.executable, "-m", "rnn2gpt", "info", str(run_dir), "--json"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        rows.append(
            (name, loss, trainable(run_dir) or info["parameters"], info["parameters"], wall, rss)
        )
        print(rows[-1], flush=True)

    print(
        f"\nPre-training: GPT 4L/4H/256d, BPE {args.bpe_vocab} trained on PTB, "
        f"{args.pretrain_time}: {pre_steps} steps, PTB val loss {pre_loss:.4f}\n"
    )
    print(
        f"| Tiny Shakespeare, {args.steps} steps (B16 x T128) | best val loss (nats/token) "
        "| trainable params | total params | wall s | peak RSS MiB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, loss, train_params, total, wall, rss in rows:
        print(f"| {name} | {loss:.4f} | {train_params:,} | {total:,} | {wall:.0f} | {rss} |")


if __name__ == "__main__":
    main()
