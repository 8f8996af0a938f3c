"""Training speed side by side with the peers a user would pick instead, in one run.

Two comparisons, each run as subprocesses of this script on the same machine, same data, same
thread count (``OMP_NUM_THREADS``), one job at a time; with ``--repeats``, the peer runs first on
even repeats and second on odd ones, so that the host's drift does not always favour one side:

- ``nanogpt``: nanoGPT (``../shared/peers/nanogpt``) against ``rnn2gpt train`` in nanoGPT's README
  CPU configuration: 4 layers x 4 heads x 128, no biases, block 64, batch 12, dropout 0, AdamW
  lr 1e-3 (betas 0.9/0.99, weight decay 0.1), warmup 100, cosine to 1e-4 over 2,000
  iterations, clip 1.0, fp32 (``train.precision=fp32``). Evaluation is kept to a minimum on both sides:
  nanoGPT ``--eval_iters=1 --eval_interval=2000`` (one batch at iteration 0 and one at 2,000,
  where it writes the checkpoint this script evaluates; the issue's ``--eval_interval=100000``
  would write none) and rnn2gpt ``train.eval_interval`` beyond the run with
  ``train.eval_batches=1``. Reported: whole-run wall time (start to exit, compile included),
  steady-state tokens/s (the median step after the first 100), the mean train loss of steps
  1,901-2,000, and the validation loss of both final models measured here the same way: every
  non-overlapping 64-character window of the last 10% of Tiny Shakespeare.
- ``wlm``: PyTorch's ``word_language_model`` (``../shared/peers/word_language_model``, 2 x 200
  LSTM, tied, its defaults: batch 20, BPTT 35, dropout 0.2, SGD lr 20, clip 0.25) against
  ``rnn2gpt train --preset ptb-word-lstm`` for one epoch of Penn Treebank (``train.max_tokens``
  = the training split's tokens). Reported: whole-run wall time, validation perplexity after
  the epoch, test perplexity (each side's own evaluation of the whole split).

    python benchmarks/train_vs_peers.py nanogpt [--avx2 [--our-fastpaths auto]] [--repeats 1]
    python benchmarks/train_vs_peers.py wlm [--avx2] [--set train.lr=...]

``--avx2`` runs both sides under the AVX2 emulation (``ATEN_CPU_CAPABILITY=avx2``,
``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``, and ``RNN2GPT_FASTPATHS=off`` for
rnn2gpt: the issue's emulation, where both sides run PyTorch's kernels). ``--our-fastpaths auto``
keeps the three caps but leaves rnn2gpt's fast paths on, which is what an AVX2-only CPU runs (our
C kernels are AVX2 code and run under the caps): on an AVX-512 host, the closer proxy for an
AVX2 CPU's speed; on an AVX2 host, the native run again. ``--set`` adds ``rnn2gpt train --set``
overrides (the recipe). The peers are copied into a scratch folder first (``../shared/peers`` is
read-only); their code is run, never copied into rnn2gpt.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PEERS = SHARED / "peers"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare" / "input.txt"
PTB = SHARED / "data" / "ptb"
AVX2 = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}
NANOGPT_ITERS = 2000
NANOGPT_SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12)
LOSS_TAIL = 100  # train loss: the mean over the last this many steps


def environment(emulation: str, ours: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    env["PYTHONUNBUFFERED"] = "1"
    if emulation:  # "": native; "off": the caps and our fast paths off; "auto": the caps alone
        env.update(AVX2)
        if ours and emulation == "off":
            env["RNN2GPT_FASTPATHS"] = "off"
    return env


def timed(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> float:
    """Run ``command`` to completion (output to ``log``); its wall time in seconds."""
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:3])} failed ({done.returncode}); see {log}")
    return seconds


Job = tuple[list[str], dict[str, str], Path, Path]  # timed()'s command, env, cwd, log


def in_turn(repeat: int, peer: Job, ours: Job) -> tuple[float, float]:
    """The wall times of ``timed(*peer)`` and ``timed(*ours)``, the peer run first on even
    repeats and second on odd ones: the host's speed drifts over minutes, and a fixed order
    would hand the drift to one side."""
    if repeat % 2 == 0:
        peer_wall = timed(*peer)
        return peer_wall, timed(*ours)
    ours_wall = timed(*ours)
    return timed(*peer), ours_wall


def rnn2gpt_command(out: Path, settings: list[str], *extra: str) -> list[str]:
    command = [sys.executable, "-m", "rnn2gpt", "train", "--out", str(out), "--overwrite", *extra]
    for item in settings:
        command += ["--set", item]
    return command


def train_losses(run: Path) -> list[float]:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in events if e["event"] == "train"]


# ----------------------------------------------------------------------------- nanoGPT


def prepare_nanogpt(work: Path) -> Path:
    peer = work / "nanogpt"
    if not peer.exists():
        shutil.copytree(PEERS / "nanogpt", peer)
        for path in peer.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        data = peer / "data" / "shakespeare_char"
        shutil.copy(SHAKESPEARE, data / "input.txt")
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    return peer


def nanogpt_command(out: Path) -> list[str]:
    s = NANOGPT_SHAPE
    return [
        sys.executable,
        "train.py",
        "config/train_shakespeare_char.py",
        "--device=cpu",
        "--compile=False",
        "--eval_iters=1",
        f"--eval_interval={NANOGPT_ITERS}",
        "--log_interval=1",
        f"--block_size={s['block_size']}",
        f"--batch_size={s['batch_size']}",
        f"--n_layer={s['n_layer']}",
        f"--n_head={s['n_head']}",
        f"--n_embd={s['n_embd']}",
        f"--max_iters={NANOGPT_ITERS}",
        f"--lr_decay_iters={NANOGPT_ITERS}",
        "--dropout=0.0",
        f"--out_dir={out}",
    ]


def nanogpt_settings() -> list[str]:
    s = NANOGPT_SHAPE
    return [
        f"model.n_layer={s['n_layer']}",
        f"model.n_head={s['n_head']}",
        f"model.n_embd={s['n_embd']}",
        f"model.block_size={s['block_size']}",
        "model.dropout=0.0",
        "model.bias=false",  # nanoGPT's train.py default: no biases in Linear and LayerNorm
        f"train.seq_len={s['block_size']}",
        f"train.batch_size={s['batch_size']}",
        f"train.max_steps={NANOGPT_ITERS}",
        "train.max_time=0",
        "train.lr=1e-3",
        "train.min_lr_ratio=0.1",
        "train.warmup_steps=100",
        "train.weight_decay=0.1",
        "train.beta2=0.99",
        "train.grad_clip=1.0",
        "train.eval_interval=100000",
        "train.eval_batches=1",
        "train.log_interval=1",
        "train.progress=false",
        "train.precision=fp32",
    ]


def val_windows(encode) -> torch.Tensor:
    """Every non-overlapping (block + 1)-token window of the last 10% of Tiny Shakespeare."""
    text = SHAKESPEARE.read_text()
    ids = torch.tensor(encode(text[int(len(text) * 0.9) :]), dtype=torch.long)
    width = NANOGPT_SHAPE["block_size"] + 1
    count = (len(ids) - 1) // (width - 1)
    return torch.stack([ids[i * (width - 1) : i * (width - 1) + width] for i in range(count)])


@torch.no_grad()
def mean_loss(forward, windows: torch.Tensor) -> float:
    total, tokens = 0.0, 0
    for batch in windows.split(64):
        batch = batch.contiguous()
        logits = forward(batch[:, :-1])
        total += F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
        ).item()
        tokens += batch[:, 1:].numel()
    return total / tokens


def nanogpt_val_loss(peer: Path, out: Path) -> float:
    import pickle

    sys.path.insert(0, str(peer))
    try:
        from model import GPT, GPTConfig  # nanoGPT's own model, run as the peer runs it
    finally:
        sys.path.pop(0)
    checkpoint = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)
    model = GPT(GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    model.eval()
    with (peer / "data" / "shakespeare_char" / "meta.pkl").open("rb") as fh:
        stoi = pickle.load(fh)["stoi"]
    windows = val_windows(lambda text: [stoi[c] for c in text])
    # nanoGPT returns the last position's logits unless given targets; ask for all of them.
    return mean_loss(lambda x: model(x, x.contiguous())[0], windows)


def rnn2gpt_val_loss(run: Path) -> float:
    import rnn2gpt

    generator = rnn2gpt.load(run / "last")
    model = generator.model.eval()
    windows = val_windows(generator.tokenizer.encode)
    return mean_loss(lambda x: model(x)[0], windows)


def nanogpt_step_times(log: Path) -> list[float]:
    pattern = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms")
    times = []
    for line in log.read_text().splitlines():
        match = pattern.match(line)
        if match and int(match.group(1)) >= 100:
            times.append(float(match.group(2)) / 1e3)
    return times


def nanogpt_losses(log: Path) -> list[float]:
    pattern = re.compile(r"^iter (\d+): loss ([\d.]+)")
    found = [pattern.match(line) for line in log.read_text().splitlines()]
    by_iter = {int(m.group(1)): float(m.group(2)) for m in found if m}
    return [by_iter[i] for i in range(NANOGPT_ITERS)]


def run_nanogpt(work: Path, emulation: str, repeats: int, settings: list[str]) -> None:
    peer = prepare_nanogpt(work)
    tokens_per_step = NANOGPT_SHAPE["batch_size"] * NANOGPT_SHAPE["block_size"]
    rows = []
    for r in range(repeats):
        peer_out = work / f"nanogpt-out-{r}"
        peer_log = work / f"nanogpt-{r}.log"
        ours_out = work / f"rnn2gpt-{r}"
        ours_log = work / f"rnn2gpt-{r}.log"
        peer_wall, ours_wall = in_turn(
            r,
            (nanogpt_command(peer_out), environment(emulation, False), peer, peer_log),
            (
                rnn2gpt_command(
                    ours_out, nanogpt_settings() + settings, "--preset", "shakespeare-char-gpt"
                ),
                environment(emulation, True),
                ROOT,
                ours_log,
            ),
        )
        peer_losses, ours_losses = nanogpt_losses(peer_log), train_losses(ours_out)
        events = [json.loads(x) for x in (ours_out / "metrics.jsonl").read_text().splitlines()]
        ours_rates = [e["tokens_per_sec"] for e in events if e["event"] == "train"][100:]
        rows.append(
            {
                "nanoGPT wall s": peer_wall,
                "rnn2gpt wall s": ours_wall,
                "ratio": peer_wall / ours_wall,
                "nanoGPT tok/s": tokens_per_step / statistics.median(nanogpt_step_times(peer_log)),
                "rnn2gpt tok/s": statistics.median(ours_rates),
                "nanoGPT train loss": statistics.mean(peer_losses[-LOSS_TAIL:]),
                "rnn2gpt train loss": statistics.mean(ours_losses[-LOSS_TAIL:]),
                "nanoGPT val loss": nanogpt_val_loss(peer, peer_out),
                "rnn2gpt val loss": rnn2gpt_val_loss(ours_out),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    report(rows, "nanoGPT CPU configuration, 2,000 iterations", emulation)


# ----------------------------------------------------------------------------- word_language_model


def prepare_ptb(work: Path) -> Path:
    data = work / "ptb"
    if not data.exists():
        data.mkdir(parents=True)
        with gzip.open(PTB / "ptb.train.txt.gz", "rt") as fh:
            (data / "train.txt").write_text(fh.read())
        shutil.copy(PTB / "ptb.valid.txt", data / "valid.txt")
        shutil.copy(PTB / "ptb.test.txt", data / "test.txt")
    peer = work / "word_language_model"
    if not peer.exists():
        shutil.copytree(PEERS / "word_language_model", peer)
        for path in peer.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
    return data


def epoch_tokens() -> int:
    """Training tokens in one epoch of PTB as rnn2gpt's ptb-word-lstm preset tokenizes it."""
    from rnn2gpt.config import load_preset
    from rnn2gpt.tokenizers import train_tokenizer

    config = load_preset("ptb-word-lstm")
    with gzip.open(PTB / "ptb.train.txt.gz", "rt") as fh:
        text = fh.read()
    tokenizer = train_tokenizer(text, config.tokenizer)
    return len(tokenizer.encode(text))


def run_wlm(work: Path, emulation: str, repeats: int, settings: list[str]) -> None:
    data = prepare_ptb(work)
    peer = work / "word_language_model"
    tokens = epoch_tokens()
    rows = []
    for r in range(repeats):
        peer_log = work / f"wlm-{r}.log"
        command = [
            sys.executable,
            "main.py",
            "--data",
            str(data),
            "--model",
            "LSTM",
            "--emsize",
            "200",
            "--nhid",
            "200",
            "--epochs",
            "1",
            "--tied",
            "--save",
            str(work / f"wlm-{r}.pt"),
        ]
        ours_out = work / f"ptb-rnn2gpt-{r}"
        peer_wall, ours_wall = in_turn(
            r,
            (command, environment(emulation, False), peer, peer_log),
            (
                rnn2gpt_command(
                    ours_out,
                    [f"train.max_tokens={tokens}", "train.max_time=0", "train.progress=false"]
                    + settings,
                    "--preset",
                    "ptb-word-lstm",
                    "--data-dir",
                    str(PTB),
                ),
                environment(emulation, True),
                ROOT,
                work / f"ptb-rnn2gpt-{r}.log",
            ),
        )
        text = peer_log.read_text()
        peer_valid = float(re.findall(r"valid ppl\s+([\d.]+)", text)[-1])
        peer_test = float(re.findall(r"test ppl\s+([\d.]+)", text)[-1])
        events = [json.loads(x) for x in (ours_out / "metrics.jsonl").read_text().splitlines()]
        evals = [e for e in events if e["event"] == "eval"]
        tests = [e for e in events if e["event"] == "test"]
        rows.append(
            {
                "word_language_model wall s": peer_wall,
                "rnn2gpt wall s": ours_wall,
                "ratio": peer_wall / ours_wall,
                "word_language_model valid ppl": peer_valid,
                "rnn2gpt valid ppl": evals[-1]["val_perplexity"],
                "word_language_model test ppl": peer_test,
                "rnn2gpt test ppl": tests[-1]["test_perplexity"] if tests else float("nan"),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    report(rows, f"Penn Treebank, one epoch ({tokens:,} tokens), 2 x 200 LSTM", emulation)


# ----------------------------------------------------------------------------- report


def report(rows: list[dict[str, float]], title: str, emulation: str) -> None:
    where = f"AVX2 emulation, rnn2gpt's fast paths {emulation}" if emulation else "native"
    print(
        f"\n{title}; {where}; torch {torch.__version__}; OMP_NUM_THREADS={environment(emulation, False)['OMP_NUM_THREADS']}\n"
    )
    names = list(rows[0])
    print("| run | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for i, row in enumerate(rows, 1):
        print(f"| {i} | " + " | ".join(f"{row[n]:,.4g}" for n in names) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("peer", choices=("nanogpt", "wlm"))
    parser.add_argument("--avx2", action="store_true", help="emulate an AVX2-only CPU")
    parser.add_argument(
        "--our-fastpaths",
        choices=("off", "auto"),
        default="off",
        help="with --avx2: rnn2gpt's fast paths (off: the issue's emulation)",
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", default="", help="scratch folder (default: a temporary one)")
    parser.add_argument("--set", action="append", default=[], help="rnn2gpt train --set")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="rnn2gpt-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    run = run_nanogpt if args.peer == "nanogpt" else run_wlm
    run(work, args.our_fastpaths if args.avx2 else "", args.repeats, args.set)


if __name__ == "__main__":
    main()
