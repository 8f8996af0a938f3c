"""Training throughput in nanoGPT's CPU example configuration, side by side in one run.

Config (nanoGPT README, shakespeare_char on CPU): 4 layers, 4 heads, 128 wide, block 64,
batch 12, dropout 0, AdamW lr 1e-3 (betas 0.9/0.99, weight decay 0.1), grad clip 1.0, char
vocabulary (65). Three contenders, timed alternately in the same process on the same batches:

- ``transformers``: ``GPT2LMHeadModel`` of that shape, the plain PyTorch loop a user would write
  (fp32; this is the peer measured in ../shared/peer-baselines.md, 4c, where it ran at nanoGPT's
  speed: 43.6 vs 41.1 ms/step);
- ``rnn2gpt fp32`` and ``rnn2gpt bf16``: one optimizer step of rnn2gpt's trainer
  (:class:`rnn2gpt.training.trainer.Trainer`'s step on the same data, precision forced).

    python benchmarks/train_speed.py [--steps 200]

The full 2000-step run (tokens/s end to end and the final validation loss) is the command in
benchmarks/RESULTS.md: ``rnn2gpt train`` with the same settings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rnn2gpt.config import ModelConfig, TrainConfig  # noqa: E402
from rnn2gpt.data import WindowBatches, bundled_corpus_path  # noqa: E402
from rnn2gpt.models import build_model  # noqa: E402
from rnn2gpt.tokenizers import CharTokenizer  # noqa: E402
from rnn2gpt.training.optim import build_optimizer  # noqa: E402
from rnn2gpt.training.precision import autocast  # noqa: E402

BATCH, BLOCK = 12, 64
MODEL = ModelConfig(arch="gpt", n_layer=4, n_head=4, n_embd=128, block_size=BLOCK, dropout=0.0)
TRAIN = TrainConfig(batch_size=BATCH, seq_len=BLOCK, lr=1e-3, weight_decay=0.1, beta2=0.99)


def hf_stepper(vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_positions=256,
            n_embd=128,
            n_layer=4,
            n_head=4,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    ).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)

    def step(x, y):
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def ours_stepper(vocab: int, dtype):
    """The trainer's step: same optimizer builder, autocast and loss as rnn2gpt.training."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**MODEL.__dict__, "vocab_size": vocab})).train()
    opt = build_optimizer(model, TRAIN)

    def step(x, y):
        with autocast("cpu", dtype):
            logits, _ = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per contender")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    args = parser.parse_args()
    text = bundled_corpus_path().read_text()
    tok = CharTokenizer.train(text)
    ids = tok.encode_array(text)
    batches = WindowBatches(ids, BATCH, BLOCK, seed=1337)
    contenders = {
        "transformers GPT2LMHeadModel, fp32": hf_stepper(tok.vocab_size),
        "rnn2gpt, fp32": ours_stepper(tok.vocab_size, None),
        "rnn2gpt, bf16 autocast": ours_stepper(tok.vocab_size, torch.bfloat16),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    per_round = max(1, args.steps // args.rounds)
    for step in contenders.values():  # warm-up
        for i in range(10):
            step(*batches.get(i))
    for r in range(args.rounds):
        for name, step in contenders.items():
            for i in range(per_round):
                x, y = batches.get(r * per_round + i)
                t = time.perf_counter()
                step(x, y)
                times[name].append(time.perf_counter() - t)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, B{BATCH} x T{BLOCK}, "
        f"{len(next(iter(times.values())))} timed steps each, {args.rounds} alternating rounds\n"
    )
    print("| contender | ms/step (median) | tokens/s | vs transformers |")
    print("| --- | ---: | ---: | ---: |")
    base = None
    for name, ts in times.items():
        med = statistics.median(ts)
        base = base or med
        print(f"| {name} | {med * 1000:.2f} | {BATCH * BLOCK / med:,.0f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
