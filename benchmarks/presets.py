"""Train shipped presets one after another and tabulate what each reached.

    python benchmarks/presets.py shakespeare-char-gpt shakespeare-char-lstm ... [--out runs/bench]
    python benchmarks/presets.py ptb-word-lstm --data-dir ../shared/data/ptb

Each preset runs as ``rnn2gpt train --preset NAME --out OUT/NAME`` in its own process (so the
wall time includes start-up, tokenization, evaluations and saving). The table gives wall time,
parameters, training tokens/s, best validation loss (and perplexity / bits per character) and,
where the preset has a test file, the test perplexity of the best checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path


def run_preset(name: str, out: Path, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "rnn2gpt",
        "train",
        "--preset",
        name,
        "--out",
        str(out),
        "--overwrite",
        "--set",
        "train.progress=false",
        *extra,
    ]
    print("$ " + " ".join(cmd[2:]), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n")
        raise SystemExit(f"{name} failed")
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if e.get("event") == "eval"]
    trains = [e for e in events if e.get("event") == "train"]
    tests = [e for e in events if e.get("event") == "test"]
    best = min(evals, key=lambda e: e["val_loss"])
    info = json.loads(
        subprocess.run(
            [sys.executable, "-m", "rnn2gpt", "info", str(out), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    train_tokens = trains[-1]["tokens"] if trains else 0
    train_seconds = sum(1 for _ in trains) and trains[-1]["elapsed"]
    return {
        "preset": name,
        "wall_s": wall,
        "params": info["parameters"],
        "steps": trains[-1]["step"] if trains else 0,
        "tokens": train_tokens,
        "tokens_per_sec": _median([e["tokens_per_sec"] for e in trains[1:]] or [0.0]),
        "train_seconds": train_seconds,
        "best_val_loss": best["val_loss"],
        "best_val_step": best["step"],
        "val_ppl": math.exp(best["val_loss"]),
        "val_bpc": best.get("val_bits_per_char"),
        "test_ppl": tests[-1].get("test_perplexity") if tests else None,
        "stdout_tail": proc.stdout.strip().splitlines()[-6:],
    }


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("presets", nargs="+")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    extra = (["--data-dir", args.data_dir] if args.data_dir else []) + [
        item for s in args.set for item in ("--set", s)
    ]
    rows = []
    for name in args.presets:
        rows.append(run_preset(name, Path(args.out) / name, extra))
        r = rows[-1]
        print(json.dumps({k: v for k, v in r.items() if k != "stdout_tail"}), flush=True)
    print(
        "\n| preset | wall | parameters | steps | tokens/s (median) | best val loss "
        "| val ppl | val bits/char | test ppl |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        bpc = f"{r['val_bpc']:.3f}" if r["val_bpc"] is not None else "-"
        test = f"{r['test_ppl']:.1f}" if r["test_ppl"] is not None else "-"
        print(
            f"| {r['preset']} | {r['wall_s'] / 60:.1f} min | {r['params']:,} | {r['steps']:,} "
            f"| {r['tokens_per_sec']:,.0f} | {r['best_val_loss']:.4f} | {r['val_ppl']:.2f} "
            f"| {bpc} | {test} |"
        )


if __name__ == "__main__":
    main()
