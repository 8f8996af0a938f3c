"""Greedy and sampled decoding over the language-model contract, and :func:`generate`.

One loop (:class:`DecodeRun`) serves :func:`generate` and :func:`~rnn2gpt.generation.stream`:
iterating it advances every row by one token. Per step:

1. the next-token logits (B, V) go through the logits processors;
2. a token per row is chosen: argmax (``temperature == 0``) or a sample from the processed
   distribution drawn with a private ``torch.Generator`` seeded from ``config.seed``;
3. it is written into a preallocated id buffer (B, prompt width + max_new_tokens);
4. finished rows are noted: end-of-sequence, a stop string, or the row's token limit;
5. it is fed to the model with the carried state (KV cache or hidden state), one token per row;
   when the GPT's cache is full, the state is rebuilt from each row's window (see
   :mod:`~rnn2gpt.generation.context`).

Batches: prompts of different lengths are left-padded and prefilled once; with
``num_return_sequences = n`` each prompt's state is repeated n times after the prefill
(``state.select``). Finished rows keep being fed (their outputs are ignored) until every row is
done, so the batch never changes shape.

Cost per step: besides the model, a handful of small tensor ops and at most one host sync (to
check whether every row has finished; none at all when no end-of-sequence token or stop string
can end a row early). Stop strings need the new tokens on the host each step to decode them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from ..config import GenerationConfig
from ..errors import ConfigError
from ..models.base import eval_mode, model_device
from ..tokenizers.base import Tokenizer
from .beam import beam_search
from .context import ContextPolicy, ModelRunner
from .processors import PAD, apply_processors, build_processors
from .request import make_generator, resolve_eos, validate_request, vocab_size_of
from .results import Generation, make_generation
from .speculative import Drafter, SpeculationStats, make_drafter, speculative_generate
from .stopping import TextTracker, repeat_guard


class DecodeRun:
    """One batched greedy or sampled decoding run over ``prompts``.

    Iterate to decode: each iteration chooses one token for every row (rows are prompts, each
    repeated ``num_return_sequences`` times). With ``track_text`` the per-row
    :class:`TextTracker` s (``trackers``) hold the text after every step. Call
    :meth:`generations` once iteration is over.

    Build it under ``torch.inference_mode()`` (its buffers are then inference tensors); each
    step enters inference mode by itself, so code between steps runs outside it.
    """

    def __init__(
        self,
        model: nn.Module,
        prompts: Sequence[Sequence[int]],
        config: GenerationConfig,
        *,
        tokenizer: Tokenizer | None = None,
        eos_id: int | None = None,
        pad_id: int = 0,
        logprobs: int | None = None,
        track_text: bool = False,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.prompts = [list(p) for p in prompts]
        self.device = device = model_device(model)
        self.context = ContextPolicy(model.max_context, config.context_policy)
        self.runner = ModelRunner(model, pad_id=pad_id, device=device)
        self.fitted = [self.context.fit_prompt(p) for p in self.prompts]

        n = config.num_return_sequences
        self.row_prompt = [i for i in range(len(self.fitted)) for _ in range(n)]
        lengths = [len(self.fitted[i]) for i in self.row_prompt]
        limits = [self.context.token_limit(k, config.max_new_tokens) for k in lengths]
        self.limits = [limit for limit, _ in limits]
        self.limit_reasons = [reason for _, reason in limits]
        self.steps = max(self.limits)
        self.width = width = max(lengths)
        batch = len(self.row_prompt)

        # Token history: left-padded prompts, then one column per step. Processors read it.
        ids = torch.full((batch, width + self.steps), PAD, dtype=torch.long)
        for row, prompt_index in enumerate(self.row_prompt):
            prompt = self.fitted[prompt_index]
            ids[row, width - len(prompt) : width] = torch.tensor(prompt, dtype=torch.long)
        self.ids = ids.to(device)
        self.win_start = [width - k for k in lengths]  # where each row's model window begins

        self.eos = eos_id if config.stop_at_eos else None
        self.processors = build_processors(
            config,
            vocab_size=vocab_size_of(model),
            eos_id=eos_id,
            prompt_len=width,
            tokenizer=tokenizer,
            device=device,
        )
        self.generator = None if config.greedy else make_generator(config.seed, device)

        self.top_n = logprobs
        if logprobs is not None:
            self.chosen_lp = torch.zeros(batch, self.steps, device=device)
            self.top_lp = torch.zeros(batch, self.steps, logprobs, device=device)
            self.top_ids = torch.zeros(batch, self.steps, logprobs, dtype=torch.long, device=device)

        self.trackers: list[TextTracker] | None = None
        if track_text:
            assert tokenizer is not None
            self.trackers = [
                TextTracker.for_config(tokenizer, config, prompt_ids=self.prompts[i])
                for i in self.row_prompt
            ]
        # Rows that reach their token limit at step t (their limit-th token is chosen then).
        self.limit_at: dict[int, list[int]] = {}
        for row, limit in enumerate(self.limits):
            if 0 < limit < self.steps:
                self.limit_at.setdefault(limit - 1, []).append(row)
        self.done_host = [limit == 0 for limit in self.limits]
        self.done = torch.tensor(self.done_host, device=device)
        self.steps_run = 0
        self.logits: Tensor | None = None
        self.token: Tensor | None = None

    # ------------------------------------------------------------------ the loop

    def __iter__(self) -> Iterator[int]:
        """Decode; yields the step index after each token is chosen (before it is fed)."""
        if self.steps == 0:
            return
        with torch.inference_mode():
            self.logits = self._prefill()
        for t in range(self.steps):
            with torch.inference_mode():
                all_done = self._choose(t)
            self.steps_run = t + 1
            yield t
            if all_done or t + 1 == self.steps:
                return
            with torch.inference_mode():
                self._feed(t)

    def _prefill(self) -> Tensor:
        logits = self.runner.prefill(self.fitted, feeds_left=self.steps - 1)
        n = self.config.num_return_sequences
        if n > 1:
            index = torch.arange(len(self.fitted), device=self.device).repeat_interleave(n)
            self.runner.select(index)
            logits = logits.index_select(0, index)
        return logits

    def _choose(self, t: int) -> bool:
        """Choose step t's tokens; True when every row has finished."""
        position = self.width + t
        logits = self.logits
        assert logits is not None
        scores = apply_processors(self.processors, self.ids[:, :position], logits)
        if self.generator is None:
            token = scores.argmax(dim=-1)
        else:
            probs = scores.softmax(dim=-1)
            token = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        self.ids[:, position] = token
        self.token = token
        if self.top_n is not None:
            raw = logits.log_softmax(dim=-1)  # the model's own distribution
            self.chosen_lp[:, t] = raw.gather(1, token[:, None]).squeeze(1)
            if self.top_n > 0:
                values, indices = raw.topk(self.top_n, dim=-1)
                self.top_lp[:, t] = values
                self.top_ids[:, t] = indices
        return self._note_finished(t, token)

    def _note_finished(self, t: int, token: Tensor) -> bool:
        limited = self.limit_at.get(t, ())
        if self.trackers is not None:
            tokens = token.tolist()  # the one host sync of this step
            for row, tok in enumerate(tokens):
                if self.done_host[row]:
                    continue
                if tok == self.eos:
                    self.done_host[row] = True
                elif self.trackers[row].add(tok):
                    self.done_host[row] = True
            for row in limited:
                self.done_host[row] = True
            return all(self.done_host)
        if self.eos is None:
            return False  # rows end at their limits; the loop knows when
        self.done |= token == self.eos
        if limited:
            self.done[list(limited)] = True
        return bool(self.done.all())  # the one host sync of this step

    def _feed(self, t: int) -> None:
        assert self.token is not None
        if self.runner.full:
            self.logits = self._rebuild(t)
        else:
            self.logits = self.runner.step(self.token)

    def _rebuild(self, t: int) -> Tensor:
        """The cache is full: prefill each row's window again (sliding rows that outgrew it)."""
        position = self.width + t + 1  # step t's token included
        history = self.ids[:, :position].tolist()
        if self.trackers is not None:
            finished = list(self.done_host)
        else:
            finished = [t + 1 >= limit for limit in self.limits]
            if self.eos is not None:
                for row, tokens in enumerate(history):
                    if self.eos in tokens[self.width :]:
                        finished[row] = True
        windows = self.context.windows(history, self.win_start, finished, self.runner.pad_id)
        return self.runner.prefill(windows, feeds_left=self.steps - t - 2)

    # ------------------------------------------------------------------ results

    def generations(self) -> list[Generation]:
        """One :class:`Generation` per row (prompt-major: prompt 0's sequences first)."""
        steps = self.steps_run
        new_tokens = self.ids[:, self.width : self.width + steps].tolist()
        chosen = top_lp = top_ids = None
        if self.top_n is not None:
            chosen = self.chosen_lp[:, :steps].tolist()
            top_lp = self.top_lp[:, :steps].tolist()
            top_ids = self.top_ids[:, :steps].tolist()
        out = []
        for row, tokens in enumerate(new_tokens):
            tokens = tokens[: self.limits[row]]
            reason = self.limit_reasons[row]
            if self.eos is not None and self.eos in tokens:
                tokens = tokens[: tokens.index(self.eos)]
                reason = "eos"
            count = len(tokens)
            logprobs = tops = None
            if chosen is not None and top_lp is not None and top_ids is not None:
                logprobs = chosen[row][:count]
                tops = [dict(zip(i, v)) for i, v in zip(top_ids[row][:count], top_lp[row][:count])]
            out.append(
                make_generation(
                    tokens,
                    reason,
                    tokenizer=self.tokenizer,
                    prompt_ids=self.prompts[self.row_prompt[row]],
                    stop=self.config.stop,
                    tracker=None if self.trackers is None else self.trackers[row],
                    logprobs=logprobs,
                    top_logprobs=tops,
                )
            )
        return out


def generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    *,
    tokenizer: Tokenizer | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    logprobs: int | None = None,
    draft: nn.Module | Drafter | None = None,
    speculation: SpeculationStats | None = None,
) -> list[list[Generation]]:
    """Continue each prompt; returns, per prompt, ``config.num_return_sequences`` generations.

    Args:
        model: any model of the language-model contract (:mod:`rnn2gpt.models.base`).
        prompts: token ids per prompt (non-empty); batched together, left-padded with ``pad_id``.
        config: the decoding settings (validated here). ``temperature == 0`` is greedy,
            ``num_beams > 1`` beam search (:mod:`~rnn2gpt.generation.beam`), else sampling.
        tokenizer: decodes the text of each generation (and is needed for ``stop`` and
            ``bad_words``); its ``eos_id`` is used when ``eos_id`` is None.
        eos_id: the end-of-sequence token; with ``config.stop_at_eos`` it ends a sequence.
        pad_id: the token fed at padded and finished positions (never attended to or kept).
        logprobs: None for no log-probabilities; n >= 0 for each token's log-probability under
            the model's unprocessed distribution, plus its n most likely alternatives.
        draft: a draft model over the same tokenizer (or a drafter): speculative decoding
            (:mod:`~rnn2gpt.generation.speculative`), as is ``config.prompt_lookup > 0``; the
            tokens are those of plain greedy decoding, or follow the same distribution.
        speculation: when given, receives the drafted and accepted counts of a speculative run.

    Returns:
        ``result[i][j]`` is the j-th :class:`Generation` of prompt i (beam search: best first).
    """
    drafter = make_drafter(config, draft)
    if drafter is not None:
        if logprobs is not None:
            raise ConfigError(
                "log-probabilities are not reported by speculative decoding; "
                "drop the draft model or prompt lookup, or logprobs"
            )
        results, stats = speculative_generate(
            model,
            prompts,
            config,
            drafter,
            draft_tokens=config.draft_tokens,
            tokenizer=tokenizer,
            eos_id=eos_id,
        )
        if speculation is not None:
            speculation.__dict__.update(stats.__dict__)
        return results
    validate_request(model, prompts, config, tokenizer=tokenizer, logprobs=logprobs)
    if not prompts:
        return []
    eos_id = resolve_eos(eos_id, tokenizer)
    with eval_mode(model), torch.inference_mode():
        if config.num_beams > 1:
            return beam_search(
                model,
                prompts,
                config,
                tokenizer=tokenizer,
                eos_id=eos_id,
                pad_id=pad_id,
                logprobs=logprobs,
            )
        run = DecodeRun(
            model,
            prompts,
            config,
            tokenizer=tokenizer,
            eos_id=eos_id,
            pad_id=pad_id,
            logprobs=logprobs,
            # Text is decoded live only when stop strings or the guard can end a row early.
            track_text=tokenizer is not None and bool(config.stop or repeat_guard(config)),
        )
        for _ in run:
            pass
        flat = run.generations()
    n = config.num_return_sequences
    return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]


__all__ = ["DecodeRun", "generate"]
