"""Beam search over the language-model contract.

Each prompt keeps ``K = num_beams`` running hypotheses (beams); the batch has P * K rows, prompt
p's beams in rows p*K .. p*K + K-1. Per step:

1. log-probabilities (B, V) of the next token go through the logits processors (the penalties
   and bans: logit_bias, bad_words, min_new_tokens, no_repeat_ngram_size, repetition and
   presence/frequency penalties). Beam search is deterministic: temperature and the sampling
   shortlists (top_k, top_p, min_p, typical_p) do not apply.
2. Each beam's running sum is added and the best 2K (beam, token) candidates of the K * V are
   taken per prompt. A candidate ending in end-of-sequence among the top K becomes a finished
   hypothesis with score ``sum / len ** length_penalty`` (``len`` counts the new tokens, the
   end-of-sequence token included); the best K other candidates become the next beams
   (``state.select`` reorders the model state, history and log-probabilities alike).
3. A prompt is done when it holds K finished hypotheses and either ``early_stopping`` is set or
   its best running beam, scored at the current length, cannot beat the worst of them (the
   usual heuristic). At the token limit (``max_new_tokens``, or the context under
   ``context_policy="stop"``) the running beams join the finished ones.

The best ``num_return_sequences`` hypotheses per prompt are returned, best first. Stop strings
are applied to each returned hypothesis's text (cut before the first stop string, finish_reason
"stop"); they do not steer the search. With ``num_beams == 1`` this reduces to greedy decoding
(when the end-of-sequence token is not involved); :func:`~rnn2gpt.generation.generate` sends
``num_beams == 1`` to the greedy/sampling loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..config import GenerationConfig
from ..models.base import model_device
from ..tokenizers.base import Tokenizer
from .context import ContextPolicy, ModelRunner
from .processors import PAD, apply_processors, build_processors
from .request import vocab_size_of
from .results import Generation, make_generation
from .stopping import repeat_guard

_NEG_INF = float("-inf")


@dataclass(order=True)
class _Hypothesis:
    score: float
    tokens: list[int] = field(compare=False)
    reason: str = field(compare=False)
    logprobs: list[float] | None = field(default=None, compare=False)
    top_logprobs: list[dict[int, float]] | None = field(default=None, compare=False)


class _Finished:
    """The best (at most ``size``) finished hypotheses of one prompt, best first."""

    def __init__(self, size: int, length_penalty: float) -> None:
        self.size = size
        self.length_penalty = length_penalty
        self.items: list[_Hypothesis] = []

    def normalise(self, total: float, length: int) -> float:
        return total / (max(length, 1) ** self.length_penalty)

    def add(self, hypothesis: _Hypothesis) -> None:
        if len(self.items) >= self.size and hypothesis.score <= self.items[-1].score:
            return
        self.items.append(hypothesis)
        self.items.sort(reverse=True)
        del self.items[self.size :]

    def is_done(self, best_running_total: float, length: int, early_stopping: bool) -> bool:
        if len(self.items) < self.size:
            return False
        if early_stopping or best_running_total == _NEG_INF:
            return True
        return self.normalise(best_running_total, length) <= self.items[-1].score


def beam_search(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    *,
    tokenizer: Tokenizer | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    logprobs: int | None = None,
) -> list[list[Generation]]:
    """Beam search for each prompt; returns per prompt the best ``num_return_sequences``.

    Arguments as :func:`~rnn2gpt.generation.generate` (which validates them and calls this under
    ``torch.inference_mode()`` with the model in eval mode).
    """
    search = _BeamSearch(
        model, prompts, config, tokenizer=tokenizer, eos_id=eos_id, pad_id=pad_id, logprobs=logprobs
    )
    search.run()
    return search.results()


class _BeamSearch:
    def __init__(
        self,
        model: nn.Module,
        prompts: Sequence[Sequence[int]],
        config: GenerationConfig,
        *,
        tokenizer: Tokenizer | None,
        eos_id: int | None,
        pad_id: int,
        logprobs: int | None,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.prompts = [list(p) for p in prompts]
        self.beams = beams = config.num_beams
        self.device = device = model_device(model)
        self.vocab_size = vocab_size_of(model)
        self.context = ContextPolicy(model.max_context, config.context_policy)
        self.runner = ModelRunner(model, pad_id=pad_id, device=device)
        self.fitted = [self.context.fit_prompt(p) for p in self.prompts]
        limits = [self.context.token_limit(len(p), config.max_new_tokens) for p in self.fitted]
        self.limits = [limit for limit, _ in limits]
        self.limit_reasons = [reason for _, reason in limits]
        self.steps = max(self.limits)
        self.width = width = max(len(p) for p in self.fitted)
        num_prompts = len(self.fitted)
        batch = num_prompts * beams

        ids = torch.full((batch, width + self.steps), PAD, dtype=torch.long)
        for row in range(batch):
            prompt = self.fitted[row // beams]
            ids[row, width - len(prompt) : width] = torch.tensor(prompt, dtype=torch.long)
        self.ids = ids.to(device)
        self.win_start = [width - len(self.fitted[row // beams]) for row in range(batch)]

        self.eos = eos_id if config.stop_at_eos else None
        self.processors = build_processors(
            config,
            vocab_size=self.vocab_size,
            eos_id=eos_id,
            prompt_len=width,
            tokenizer=tokenizer,
            sampling=False,
            device=device,
        )
        self.finished = [_Finished(beams, config.length_penalty) for _ in range(num_prompts)]
        self.done = [limit == 0 for limit in self.limits]
        self.row_base = torch.arange(num_prompts, device=device)[:, None] * beams  # (P, 1)

        self.top_n = logprobs
        if logprobs is not None:
            self.chosen_lp = torch.zeros(batch, self.steps, device=device)
            self.top_lp = torch.zeros(batch, self.steps, logprobs, device=device)
            self.top_ids = torch.zeros(batch, self.steps, logprobs, dtype=torch.long, device=device)

    # ------------------------------------------------------------------ the search

    def run(self) -> None:
        if self.steps == 0:
            return
        num_prompts, beams = len(self.fitted), self.beams
        logits = self.runner.prefill(self.fitted, feeds_left=self.steps - 1)
        expand = torch.arange(num_prompts, device=self.device).repeat_interleave(beams)
        self.runner.select(expand)
        logits = logits.index_select(0, expand)
        # Only the first beam is live at first, so the K beams do not start as copies.
        scores = torch.full((num_prompts, beams), _NEG_INF, device=self.device)
        scores[:, 0] = 0.0
        self.beam_scores = scores.view(-1)
        for t in range(self.steps):
            token = self._step(t, logits)
            if all(self.done) or t + 1 == self.steps:
                return
            if self.runner.full:
                logits = self._rebuild(t)
            else:
                logits = self.runner.step(token)

    def _step(self, t: int, logits: Tensor) -> Tensor:
        """Extend every beam by one token; returns the new tokens (B,)."""
        num_prompts, beams, vocab = len(self.fitted), self.beams, self.vocab_size
        position = self.width + t
        logp = logits.log_softmax(dim=-1)  # (B, V)
        scores = apply_processors(self.processors, self.ids[:, :position], logp)
        total = (scores + self.beam_scores[:, None]).view(num_prompts, beams * vocab)
        n_candidates = min(2 * beams, beams * vocab)
        cand_scores, cand = total.topk(n_candidates, dim=1)  # (P, 2K), best first
        cand_beam, cand_token = cand // vocab, cand % vocab
        if self.eos is not None:
            is_eos = cand_token == self.eos
            keep_scores, keep = cand_scores.masked_fill(is_eos, _NEG_INF).topk(beams, dim=1)
        else:
            is_eos = None
            keep_scores, keep = cand_scores[:, :beams], None
        if keep is None:
            src_beam, token = cand_beam[:, :beams], cand_token[:, :beams]
        else:
            src_beam, token = cand_beam.gather(1, keep), cand_token.gather(1, keep)
        src = (src_beam + self.row_base).view(-1)  # (B,) rows the new beams extend
        token = token.reshape(-1)

        # Host copy of what the bookkeeping needs, in one sync: each prompt's best running
        # total and which of its top K candidates end in end-of-sequence.
        summary = keep_scores[:, :1]
        if is_eos is not None:
            ended = is_eos[:, :beams] & (cand_scores[:, :beams] > _NEG_INF)
            summary = torch.cat([summary, ended.to(summary.dtype)], dim=1)
        host = summary.tolist()
        best_running = [row[0] for row in host]
        eos_hits = [
            [p, rank] for p, row in enumerate(host) for rank, hit in enumerate(row[1:]) if hit
        ]
        if eos_hits:
            self._add_eos_hypotheses(t, eos_hits, cand_scores, cand_beam)

        # Reorder every per-row record by the beams' sources, then append the new token.
        self.runner.select(src)
        self.ids = self.ids.index_select(0, src)
        self.ids[:, position] = token
        self.beam_scores = keep_scores.reshape(-1)
        if self.top_n is not None:
            self.chosen_lp = self.chosen_lp.index_select(0, src)
            self.chosen_lp[:, t] = logp[src, token]
            if self.top_n > 0:
                self.top_lp = self.top_lp.index_select(0, src)
                self.top_ids = self.top_ids.index_select(0, src)
                values, indices = logp.index_select(0, src).topk(self.top_n, dim=-1)
                self.top_lp[:, t], self.top_ids[:, t] = values, indices
        self._check_done(t, best_running)
        return token

    def _add_eos_hypotheses(
        self,
        t: int,
        hits: list[list[int]],
        cand_scores: Tensor,
        cand_beam: Tensor,
    ) -> None:
        """Candidates (prompt, rank) that end in end-of-sequence become finished hypotheses."""
        assert self.eos is not None
        rows = {p: [] for p, _ in hits}
        for p, rank in hits:
            rows[p].append(rank)
        for p, ranks in rows.items():
            if self.done[p]:
                continue
            finished = self.finished[p]
            for rank in ranks:
                row = p * self.beams + int(cand_beam[p, rank])
                total = float(cand_scores[p, rank])
                # Records are read now: rows move when the beams are reordered.
                logprobs, tops = self._records(row, t)
                finished.add(
                    _Hypothesis(
                        score=finished.normalise(total, t + 1),
                        tokens=self.ids[row, self.width : self.width + t].tolist(),
                        reason="eos",
                        logprobs=logprobs,
                        top_logprobs=tops,
                    )
                )

    def _check_done(self, t: int, best_running: list[float]) -> None:
        length = t + 1
        for p, finished in enumerate(self.finished):
            if self.done[p]:
                continue
            if finished.is_done(best_running[p], length, self.config.early_stopping):
                self.done[p] = True
            elif length >= self.limits[p]:
                rows = range(p * self.beams, (p + 1) * self.beams)
                sums = self.beam_scores[p * self.beams : (p + 1) * self.beams].tolist()
                for row, total in zip(rows, sums):
                    if total == _NEG_INF:
                        continue
                    logprobs, tops = self._records(row, length)
                    finished.add(
                        _Hypothesis(
                            score=finished.normalise(total, length),
                            tokens=self.ids[row, self.width : self.width + length].tolist(),
                            reason=self.limit_reasons[p],
                            logprobs=logprobs,
                            top_logprobs=tops,
                        )
                    )
                self.done[p] = True

    def _records(
        self, row: int, length: int
    ) -> tuple[list[float] | None, list[dict[int, float]] | None]:
        """(log-probabilities, top alternatives) of the first ``length`` tokens of ``row``, or
        (None, None) when they were not asked for."""
        if self.top_n is None:
            return None, None
        chosen = self.chosen_lp[row, :length].tolist()
        if not self.top_n:
            return chosen, [{} for _ in chosen]
        values = self.top_lp[row, :length].tolist()
        indices = self.top_ids[row, :length].tolist()
        return chosen, [dict(zip(i, v)) for i, v in zip(indices, values)]

    def _rebuild(self, t: int) -> Tensor:
        position = self.width + t + 1
        history = self.ids[:, :position].tolist()
        finished = [self.done[row // self.beams] for row in range(len(history))]
        windows = self.context.windows(history, self.win_start, finished, self.runner.pad_id)
        return self.runner.prefill(windows, feeds_left=self.steps - t - 2)

    # ------------------------------------------------------------------ results

    def results(self) -> list[list[Generation]]:
        out = []
        n = self.config.num_return_sequences
        for p, finished in enumerate(self.finished):
            generations = []
            for hypothesis in finished.items[:n]:
                generations.append(
                    make_generation(
                        hypothesis.tokens,
                        hypothesis.reason,
                        tokenizer=self.tokenizer,
                        prompt_ids=self.prompts[p],
                        stop=self.config.stop,
                        repeat_guard=repeat_guard(self.config),
                        logprobs=hypothesis.logprobs,
                        top_logprobs=hypothesis.top_logprobs,
                        score=hypothesis.score,
                    )
                )
            if not generations:  # nothing could be generated (a zero token limit)
                empty = [] if self.top_n is not None else None
                generations = [
                    make_generation(
                        [],
                        self.limit_reasons[p],
                        tokenizer=self.tokenizer,
                        prompt_ids=self.prompts[p],
                        logprobs=empty,
                        top_logprobs=None if empty is None else [],
                    )
                    for _ in range(n)
                ]
            out.append(generations)
        return out


__all__ = ["beam_search"]
