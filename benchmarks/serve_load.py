"""Load on ``rnn2gpt serve``: concurrent streaming clients against a small GPT and an LSTM.

For each model a server runs in its own process (``python -m rnn2gpt serve`` on 127.0.0.1,
``--max-batch 32``), and for each concurrency level (1, 8, 32 clients) every client streams
completions of ``--new-tokens`` tokens (temperature 1, its own seed), one after the other, until
the level has run ``--requests-per-client`` requests per client. Reported per level:

- aggregate output tokens/s and requests/s over the level's wall time;
- p50 / p99 time to first token, time per output token (after the first) and end-to-end latency;
- errors (any status but 200, or a stream without ``[DONE]``);
- the server process's peak RSS (``VmHWM``) and its memory per idle slot (the slot state's bytes
  divided by the slots: O(1) for the RNNs, the KV cache's capacity for a GPT).

1 client is the same server serving one request at a time: the ratio of 32 clients to it is the
gain of continuous batching. ``--lone-cost`` instead measures what the fixed tile shapes cost a
lone request, and what smaller tiles cost a full batch (see :func:`lone_cost`).

    python benchmarks/serve_load.py [--new-tokens 128] [--levels 1,8,32]
    python benchmarks/serve_load.py --lone-cost
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from rnn2gpt.checkpoint import save_checkpoint
from rnn2gpt.config import ModelConfig, RunConfig
from rnn2gpt.data import bundled_corpus_path, read_text
from rnn2gpt.models import build_model
from rnn2gpt.tokenizers import CharTokenizer

MODELS = {
    # Small models of the size the presets train (random weights: speed does not depend on them).
    "gpt": dict(arch="gpt", n_layer=4, n_head=4, n_embd=128, block_size=256),
    "lstm": dict(arch="lstm", n_layer=2, n_embd=256, tie_weights=False),
}
LARGE_GPT = dict(arch="gpt", n_layer=12, n_head=12, n_embd=768, block_size=512)
PROMPT = "ROMEO:\nWhat light through yonder window breaks?\n"


def make_checkpoint(folder: Path, shape: dict) -> Path:
    tokenizer = CharTokenizer.train(read_text(bundled_corpus_path()))
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, **shape)
    save_checkpoint(
        folder / "best",
        model=build_model(config),
        tokenizer=tokenizer,
        config=RunConfig(model=config),
    )
    return folder


def slot_bytes(shape: dict, max_batch: int) -> float:
    """Bytes of the slot state per slot (what an idle slot holds)."""
    tokenizer_vocab = 65
    model = build_model(ModelConfig(vocab_size=tokenizer_vocab, **shape))
    state = model.new_state(max_batch, slots=True)
    tensors = [t for t in (*getattr(state, "keys", ()), *getattr(state, "values", ()))]
    tensors += [t for t in (getattr(state, "h", None), getattr(state, "c", None)) if t is not None]
    return sum(t.numel() * t.element_size() for t in tensors) / max_batch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(
        self, checkpoint: Path, max_batch: int, threads: int, tile: int | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rnn2gpt",
                "-q",
                "serve",
                str(checkpoint),
                "--port",
                str(self.port),
                "--max-batch",
                str(max_batch),
                "--max-queue",
                "256",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(self.proc.stderr.read().decode()[-2000:] if self.proc.stderr else "")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


async def one_request(client: httpx.AsyncClient, url: str, new_tokens: int, seed: int) -> dict:
    body = {
        "prompt": PROMPT,
        "max_tokens": new_tokens,
        "temperature": 1.0,
        "seed": seed,
        "stream": True,
    }
    start = time.perf_counter()
    first = None
    tokens = 0
    done = False
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            return {"error": response.status_code}
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["finish_reason"] is None:
                tokens += 1
                if first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    if not done or first is None:
        return {"error": "incomplete"}
    return {
        "ttft": first - start,
        "tpot": (end - first) / max(tokens - 1, 1),
        "e2e": end - start,
        "tokens": tokens,
    }


async def level(url: str, clients: int, per_client: int, new_tokens: int) -> dict:
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker(w: int) -> list[dict]:
            return [
                await one_request(client, url, new_tokens, 1000 * w + i) for i in range(per_client)
            ]

        start = time.perf_counter()
        results = [
            r for rs in await asyncio.gather(*(worker(w) for w in range(clients))) for r in rs
        ]
        wall = time.perf_counter() - start
    good = [r for r in results if "error" not in r]

    def pct(key: str, q: float) -> float:
        values = sorted(r[key] for r in good)
        return (
            values[min(len(values) - 1, int(round(q * (len(values) - 1))))]
            if values
            else float("nan")
        )

    return {
        "clients": clients,
        "requests": len(results),
        "errors": len(results) - len(good),
        "tokens_per_sec": sum(r["tokens"] for r in good) / wall,
        "requests_per_sec": len(good) / wall,
        "ttft_p50": pct("ttft", 0.5),
        "ttft_p99": pct("ttft", 0.99),
        "tpot_p50": pct("tpot", 0.5),
        "tpot_p99": pct("tpot", 0.99),
        "e2e_p50": pct("e2e", 0.5),
        "e2e_p99": pct("e2e", 0.99),
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tile", type=int, help="serve --tile (default: the server's, 8)")
    parser.add_argument("--lone-cost", action="store_true")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        if args.lone_cost:
            lone_cost(Path(tmp), args)
            return
        print(
            f"{'model':<5} {'clients':>7} {'req':>4} {'err':>3} {'tok/s':>8} {'req/s':>6} "
            f"{'TTFT p50/p99 (s)':>17} {'TPOT p50/p99 (ms)':>18} {'E2E p50/p99 (s)':>16} "
            f"{'peak RSS MiB':>12}"
        )
        for name, shape in MODELS.items():
            checkpoint = make_checkpoint(Path(tmp) / f"load-{name}", shape)
            server = Server(checkpoint, args.max_batch, args.threads, args.tile)
            try:
                rows = []
                for clients in levels:
                    per_client = (
                        args.requests_per_client if clients > 1 else 4 * args.requests_per_client
                    )
                    row = asyncio.run(level(server.url, clients, per_client, args.new_tokens))
                    rows.append(row)
                    print(
                        f"{name:<5} {clients:>7} {row['requests']:>4} {row['errors']:>3} "
                        f"{row['tokens_per_sec']:>8.0f} {row['requests_per_sec']:>6.2f} "
                        f"{row['ttft_p50']:>8.3f}/{row['ttft_p99']:<8.3f} "
                        f"{1000 * row['tpot_p50']:>8.2f}/{1000 * row['tpot_p99']:<9.2f} "
                        f"{row['e2e_p50']:>7.2f}/{row['e2e_p99']:<8.2f} "
                        f"{server.peak_rss_mib():>12.0f}",
                        flush=True,
                    )
                gain = rows[-1]["tokens_per_sec"] / rows[0]["tokens_per_sec"]
                print(
                    f"{name}: {levels[-1]} clients / 1 client tokens/s = {gain:.2f}x; "
                    f"state per idle slot {slot_bytes(shape, args.max_batch) / 1024:.1f} KiB",
                    flush=True,
                )
            finally:
                server.stop()


def lone_cost(tmp: Path, args: argparse.Namespace) -> None:
    """What fixed shapes cost a lone request, measured in this process on the scheduler alone
    (no HTTP): its tokens/s with 1 slot, with 32 slots in one tile, in tiles of 8 and in the
    tiles ``choose_tile`` measures (the server's default), in alternating rounds (median of 3); and
    32 requests at once with each tiling."""
    import queue as queues

    from rnn2gpt import load
    from rnn2gpt.config import GenerationConfig
    from rnn2gpt.generation.scheduler import Request, Scheduler, choose_tile

    torch.set_num_threads(args.threads)

    def run(scheduler: Scheduler, requests: int, tokens: int) -> float:
        events: queues.Queue = queues.Queue()
        config = GenerationConfig(max_new_tokens=tokens, temperature=1.0, stop_at_eos=False)
        start = time.perf_counter()
        for i in range(requests):
            scheduler.submit(
                Request(prompt, GenerationConfig(**{**config.__dict__, "seed": i}), events.put)
            )
        done = produced = 0
        while done < requests:
            event = events.get()
            produced += event.kind == "token"
            done += event.kind == "done"
        return produced / (time.perf_counter() - start)

    for name, shape in (
        ("small gpt", MODELS["gpt"]),
        ("lstm", MODELS["lstm"]),
        ("gpt-2 small shape", LARGE_GPT),
    ):
        generator = load(make_checkpoint(tmp / name.replace(" ", "-"), shape))
        prompt = generator.encode_prompt(PROMPT)
        tokens = 32 if "gpt-2" in name else args.new_tokens
        measured = choose_tile(generator.model, 32)
        setups = {
            "1 slot": (1, None),
            "32 slots, 1 tile": (32, None),
            "32 slots, tiles of 8": (32, 8),
            f"32 slots, measured tile ({measured})": (32, measured),
        }
        lone: dict[str, list[float]] = {k: [] for k in setups}
        full: dict[str, list[float]] = {k: [] for k in setups if k != "1 slot"}
        for _ in range(3):
            for label, (slots, tile) in setups.items():
                scheduler = Scheduler(
                    generator.model, generator.tokenizer, max_batch=slots, tile=tile
                )
                try:
                    run(scheduler, 1, 4)  # warm-up
                    lone[label].append(run(scheduler, 1, tokens))
                    if label in full:
                        full[label].append(run(scheduler, 32, tokens))
                finally:
                    scheduler.close()
        med = {k: statistics.median(v) for k, v in lone.items()}
        base = med["1 slot"]
        print(
            f"{name}: lone request "
            + ", ".join(f"{k} {v:.1f} tok/s ({v / base:.2f}x)" for k, v in med.items())
            + "; 32 requests at once: "
            + ", ".join(f"{k} {statistics.median(v):.0f} tok/s" for k, v in full.items()),
            flush=True,
        )


if __name__ == "__main__":
    main()
