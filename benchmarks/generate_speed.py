"""Generation speed: rnn2gpt's decoding engine vs Hugging Face ``transformers.generate``.

Same weights, same machine, same run. For each GPT shape (a: nanoGPT's CPU example, 4 layers x
128 wide, char vocabulary; b: GPT-2 small, 12 x 768, 50257 tokens, random weights) and batch
size (1, 8): greedy decoding of 128 new tokens after a 32-token prompt, KV cache on both sides.
Also: bf16 weights for rnn2gpt, and RNN/LSTM/GRU tokens/s at 128 vs 2048 new tokens to show the
per-token cost stays flat as the text grows.

    python benchmarks/generate_speed.py            # everything (about 5 minutes on 2 cores)
    python benchmarks/generate_speed.py --quick    # fewer repeats

Prints Markdown tables. Greedy tokens of rnn2gpt and transformers are compared (fp32) as a check
that both decode the same model.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rnn2gpt.config import GenerationConfig, ModelConfig  # noqa: E402
from rnn2gpt.generation import generate  # noqa: E402
from rnn2gpt.models import build_model  # noqa: E402
from rnn2gpt.models.base import use_inference_layout  # noqa: E402
from rnn2gpt.models.hf import gpt2_state_dict, model_config_to_gpt2_config  # noqa: E402
from rnn2gpt.models.quantized import quantize_model  # noqa: E402

PROMPT_LEN = 32
NEW_TOKENS = 128
GPT_SHAPES = {
    "a: nanoGPT CPU size (4L/4H/128d, vocab 65)": ModelConfig(
        arch="gpt",
        vocab_size=65,
        n_layer=4,
        n_head=4,
        n_embd=128,
        block_size=256,
        activation="gelu_tanh",
    ),
    "b: GPT-2 small shape (12L/12H/768d, vocab 50257)": ModelConfig(
        arch="gpt",
        vocab_size=50257,
        n_layer=12,
        n_head=12,
        n_embd=768,
        block_size=1024,
        activation="gelu_tanh",
    ),
}
WEIGHT_BYTES_PER_S = (
    19e9  # matrix-vector weight-read bandwidth measured on this machine (256 MiB fp32 torch.mv)
)


def to_hf(model):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(**model_config_to_gpt2_config(model.config)))
    missing, unexpected = hf.load_state_dict(gpt2_state_dict(model), strict=False)
    assert not unexpected, unexpected
    assert all(
        k.endswith(("attn.bias", "attn.masked_bias")) or k == "lm_head.weight" for k in missing
    ), missing
    return hf.eval()


def time_runs(fn, repeats: int) -> list[float]:
    fn()  # warm-up (allocations, oneDNN primitive caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def ours(model, prompts, new_tokens=NEW_TOKENS):
    config = GenerationConfig(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=0.0, stop_at_eos=False
    )
    return generate(model, prompts, config)


def theirs(hf, prompt_tensor, new_tokens=NEW_TOKENS, **extra):
    """``transformers`` greedy decoding of exactly ``new_tokens`` (``extra``: e.g. an
    ``assistant_model=`` or ``prompt_lookup_num_tokens=``)."""
    with torch.inference_mode():
        return hf.generate(
            prompt_tensor,
            attention_mask=torch.ones_like(prompt_tensor),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=0,
            eos_token_id=None,
            use_cache=True,
            **extra,
        )


def bench_gpt(repeats: int, shapes: str = "ab") -> list[dict]:
    rows = []
    for name, cfg in GPT_SHAPES.items():
        if name[0] not in shapes:
            continue
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        hf = to_hf(model)
        use_inference_layout(model)  # what rnn2gpt.load() does: column-major + packed weights
        params = model.num_parameters()
        model_bf16 = build_model(cfg).eval()
        model_bf16.load_state_dict(model.state_dict())
        model_bf16.to(torch.bfloat16)
        use_inference_layout(model_bf16)  # what rnn2gpt.load(dtype="bf16") does
        model_int8 = build_model(cfg).eval()
        model_int8.load_state_dict(model.state_dict())
        quantize_model(model_int8)  # what rnn2gpt.load(quantize="int8") does
        use_inference_layout(model_int8)
        for batch in (1, 8):
            g = torch.Generator().manual_seed(batch)
            prompt = torch.randint(0, cfg.vocab_size, (batch, PROMPT_LEN), generator=g)
            prompts = prompt.tolist()
            # Same model, same greedy tokens (fp32): a check, not a timing.
            our_tokens = [r[0].token_ids for r in ours(model, prompts)]
            their_tokens = theirs(hf, prompt)[:, PROMPT_LEN:].tolist()
            agree = sum(a == b for a, b in zip(our_tokens, their_tokens))
            t_hf = time_runs(functools.partial(theirs, hf, prompt), repeats)
            t_ours = time_runs(functools.partial(ours, model, prompts), repeats)
            t_bf16 = time_runs(functools.partial(ours, model_bf16, prompts), repeats)
            int8_tokens = [r[0].token_ids for r in ours(model_int8, prompts)]  # (and the compile)
            agree_int8 = sum(a == b for a, b in zip(our_tokens, int8_tokens))
            t_int8 = time_runs(functools.partial(ours, model_int8, prompts), repeats)
            tok = batch * NEW_TOKENS
            hf_tps = tok / statistics.median(t_hf)
            ours_tps = tok / statistics.median(t_ours)
            bf16_tps = tok / statistics.median(t_bf16)
            int8_tps = tok / statistics.median(t_int8)
            rows.append(
                {
                    "shape": name,
                    "params": params,
                    "batch": batch,
                    "hf": hf_tps,
                    "ours": ours_tps,
                    "bf16": bf16_tps,
                    "ratio": ours_tps / hf_tps,
                    "ratio_bf16": bf16_tps / hf_tps,
                    "int8": int8_tps,
                    "ratio_int8": int8_tps / hf_tps,
                    "agree_int8": f"{agree_int8}/{batch}",
                    "agree": f"{agree}/{batch}",
                    "roofline": (ours_tps / batch) * params * 4 / WEIGHT_BYTES_PER_S
                    if batch == 1
                    else None,
                    "n": repeats,
                }
            )
            print_row(rows[-1], flush=True)
    return rows


def print_row(r, flush=False):
    roof = f"{r['roofline']:.0%}" if r["roofline"] is not None else "-"
    print(
        f"| {r['shape']} | {r['batch']} | {r['hf']:,.1f} | {r['ours']:,.1f} | **{r['ratio']:.2f}x** "
        f"| {r['bf16']:,.1f} | **{r['ratio_bf16']:.2f}x** | {r['int8']:,.1f} | "
        f"**{r['ratio_int8']:.2f}x** | {roof} | {r['agree']} | {r['agree_int8']} | {r['n']} |",
        flush=flush,
    )


def bench_recurrent(repeats: int) -> None:
    print("\n| model | params | new tokens | tokens/s | ms/token |")
    print("| --- | ---: | ---: | ---: | ---: |")
    # Widths chosen for about 0.8M parameters, like shape (a).
    for arch, width, layers in (("rnn", 400, 3), ("lstm", 200, 3), ("gru", 232, 3)):
        cfg = ModelConfig(arch=arch, vocab_size=65, n_layer=layers, n_embd=width)
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        prompt = torch.randint(0, 65, (1, PROMPT_LEN)).tolist()
        for new in (128, 2048):
            t = time_runs(
                functools.partial(ours, model, prompt, new), max(1, repeats // (new // 128))
            )
            tps = new / statistics.median(t)
            print(
                f"| {arch} | {model.num_parameters():,} | {new} | {tps:,.0f} | {1000 / tps:.3f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default="ab", help="GPT shapes to run: a, b or ab")
    parser.add_argument("--no-recurrent", action="store_true", help="skip the RNN/LSTM/GRU table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 5
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; prompt {PROMPT_LEN}, "
        f"{NEW_TOKENS} new tokens, greedy, KV cache; medians of {repeats} runs\n"
    )
    print(
        "| shape | batch | transformers fp32 tok/s | rnn2gpt fp32 tok/s | ratio | rnn2gpt bf16 "
        "tok/s | bf16 / HF fp32 | rnn2gpt int8 tok/s | int8 / HF fp32 | fp32 b1 of bandwidth "
        "roofline | same greedy tokens | int8 greedy = fp32 greedy | n |"
    )
    print(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    bench_gpt(repeats, args.shapes)
    if not args.no_recurrent:
        bench_recurrent(repeats)


if __name__ == "__main__":
    main()
