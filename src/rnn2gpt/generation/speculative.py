"""Speculative decoding: a cheap drafter proposes K tokens, the target checks them in one forward.

Per round, for every row (a prompt, or one of its ``num_return_sequences`` copies):

1. the drafter proposes up to K tokens d1..dK after the row's last token x (a draft model
   decoding K steps with its own carried state, or :class:`PromptLookup`, which copies what
   followed the last n tokens earlier in the row);
2. the target takes x, d1..dK in one forward (B, K + 1): its logits after x, after d1, ...,
   after dK;
3. the logits processors are applied at every position exactly as plain decoding applies them,
   position i seeing the row's tokens plus d1..di (the prefix that is accepted when position i
   is reached);
4. greedy: d(i+1) is kept while it is the target's own choice at position i; the first
   disagreement is replaced by the target's choice, and when all K agree the target's choice
   after dK comes free. Greedy output is the target's own greedy output (up to floating-point
   ties between its two best tokens: the batched check and a step-by-step decode round
   differently).
   Sampling: the standard rejection rule (Leviathan et al. 2023; Chen et al. 2023): keep d with
   probability min(1, p(d) / q(d)) (p the target's processed distribution, q the drafter's; a
   copied token has q = 1 at d); at the first rejection sample from max(p - q, 0) renormalised;
   after K acceptances sample from the target's next distribution. The output then follows the
   target's distribution exactly;
5. both models roll back to the accepted length with the state operation ``truncate``
   (:mod:`rnn2gpt.models.base`): a KV cache forgets slots, a recurrent state restores the
   per-token state it kept.

Each row keeps its own length (slot states: :class:`~rnn2gpt.models.kv_cache.SlotKVCache` for a
GPT, a recurrent state with a trail), so rows of a batch accept different numbers of tokens. A
model whose context fills slides a row's window as plain decoding does (its last
``max_context // 2`` tokens), when the row's cache is full; near the edge a round drafts fewer
tokens, so the windows are the ones plain decoding sees.

The two models must share a tokenizer (checked by the caller through fingerprints).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import GenerationConfig
from ..errors import ConfigError
from ..models.base import eval_mode, model_device
from ..tokenizers.base import Tokenizer
from .context import ContextPolicy, slide_keep
from .processors import PAD, LogitsProcessor, apply_processors, build_processors
from .request import make_generator, resolve_eos, validate_request, vocab_size_of
from .results import Generation, make_generation
from .stopping import TextTracker


@dataclass
class SpeculationStats:
    """Counts of one speculative run: drafted tokens, how many the target accepted, rounds."""

    drafted: int = 0
    accepted: int = 0
    rounds: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "rounds": self.rounds,
        }


class RollbackRunner:
    """One model's slot state over the rows of a run: feeds tokens, rolls rows back, slides.

    ``lengths[r]`` is how many tokens row r's state holds. Rows are prefilled alone (no
    padding), so a row's logits never depend on its neighbours' lengths.
    """

    def __init__(self, model: nn.Module, rows: int, depth: int) -> None:
        self.model = model
        self.device = model_device(model)
        self.max_context: int | None = model.max_context
        self.state = model.new_state(rows, slots=True, rollback=depth)
        # A bound encoder-decoder has no context to slide but a fixed number of target positions.
        capacity = getattr(self.state, "capacity", None)
        self.capacity: int | None = capacity if capacity is not None else self.max_context
        self.lengths = [0] * rows

    def start(self, rows: Sequence[int], tokens: Sequence[int]) -> None:
        """Rows ``rows`` hold ``tokens`` (one prefill, copied into each row)."""
        if not tokens:
            # A fresh row is empty already (and an encoder-decoder's holds its source's start).
            emptied = {row: 0 for row in rows if self.lengths[row]}
            if emptied:
                self.state.truncate(emptied)
        else:
            x = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
            _, state = self.model(x, None)
            if len(rows) > 1:
                state = state.select(torch.zeros(len(rows), dtype=torch.long))
            self.state.write_rows(list(rows), state)
        for row in rows:
            self.lengths[row] = len(tokens)

    def room(self, row: int) -> int | None:
        """Tokens row ``row`` can still take (None: no limit)."""
        return None if self.capacity is None else self.capacity - self.lengths[row]

    def slide_full(self, rows: Sequence[int], histories: Sequence[Sequence[int]]) -> None:
        """Rows whose window is full restart from their last tokens, as plain decoding slides:
        with the row's next token fed, the window is its last ``slide_keep`` tokens."""
        if self.max_context is None:
            return
        keep = slide_keep(self.max_context)
        for row in rows:
            if self.lengths[row] >= self.max_context:
                self.start([row], histories[row][-keep:-1] if keep > 1 else [])

    def feed(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) -> logits (B, T, V) float32; every row takes T tokens."""
        logits, self.state = self.model(tokens, self.state)
        self.lengths = [n + tokens.shape[1] for n in self.lengths]
        return logits.float()

    def settle(self, fed: int, kept: Sequence[int | None]) -> None:
        """After a check of ``fed`` tokens (x and its drafts): row r keeps x and its first
        ``kept[r]`` drafts; a finished row (None) is emptied."""
        lengths = {}
        for row, accepted in enumerate(kept):
            lengths[row] = 0 if accepted is None else self.lengths[row] - fed + 1 + accepted
        self.state.truncate(lengths)
        self.lengths = [lengths[row] for row in range(len(kept))]


class Proposal:
    """Drafted tokens (B, k) and, for a model drafter, the processed distributions q (B, k, V)
    they were drawn from (None: each row copied its tokens, q = 1 at the draft)."""

    def __init__(self, tokens: Tensor, q: Tensor | None) -> None:
        self.tokens = tokens
        self.q = q


class ModelDrafter:
    """A small language model of the same tokenizer drafting K tokens per round.

    It takes x, d1, ..., d(K-1) in K single-token steps, then rolls back with the target. dK is
    fed only if a row accepted every draft (it must then be level with the target): in the
    rounds that reject a draft, that step would be thrown away.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.runner: RollbackRunner | None = None
        self.pending: Tensor | None = None  # (B,) dK (x when K = 0), not yet fed

    def start(self, run: SpeculativeRun) -> None:
        self.runner = RollbackRunner(self.model, len(run.histories), run.draft_tokens + 1)
        for tokens, rows in run.prompt_rows():
            self.runner.start(rows, tokens[:-1])

    def room(self, row: int) -> int | None:
        assert self.runner is not None
        return self.runner.room(row)

    def slide_full(self, rows: Sequence[int], histories: Sequence[Sequence[int]]) -> None:
        assert self.runner is not None
        self.runner.slide_full(rows, histories)

    def propose(self, run: SpeculativeRun, last: Tensor, k: int) -> Proposal:
        assert self.runner is not None
        tokens, dists = [], []
        token = last
        for _ in range(k):
            logits = self.runner.feed(token[:, None])[:, -1]
            scores = run.process(logits, tokens)
            if run.generator is None:
                token = scores.argmax(dim=-1)
            else:
                probs = scores.softmax(dim=-1)
                token = torch.multinomial(probs, 1, generator=run.generator).squeeze(1)
                dists.append(probs)
            tokens.append(token)
        self.pending = token
        drafted = torch.stack(tokens, dim=1) if tokens else last.new_zeros(len(last), 0)
        return Proposal(drafted, torch.stack(dists, dim=1) if dists else None)

    def settle(self, fed: int, kept: Sequence[int | None]) -> None:
        """Roll back with the target (see :meth:`RollbackRunner.settle`); the drafter has taken
        one token fewer than the target unless a row kept every draft."""
        assert self.runner is not None and self.pending is not None
        if any(accepted == fed - 1 for accepted in kept):
            self.runner.feed(self.pending[:, None])
        else:
            fed -= 1
        self.pending = None
        self.runner.settle(fed, kept)


class PromptLookup:
    """Drafts by copying: finds the last ``ngram`` tokens of a row earlier in the row (the prompt
    and what was generated, the latest occurrence first) and proposes the tokens that followed.

    Rows without a match propose nothing; a round whose rows all come up empty is a plain step.
    ``sources`` (one token list per prompt) is searched too, after the row itself: an
    encoder-decoder's source text, which its output copies from.
    """

    def __init__(self, ngram: int = 3, sources: Sequence[Sequence[int]] | None = None) -> None:
        if ngram < 1:
            raise ConfigError(f"prompt lookup needs an n-gram of at least 1 token (got {ngram})")
        self.ngram = ngram
        self.model: nn.Module | None = None  # no model: nothing to run or to check
        self.sources = None if sources is None else [list(s) for s in sources]
        self.row_source: list[int] = []

    def start(self, run: SpeculativeRun) -> None:
        self.row_source = run.row_prompt

    def room(self, row: int) -> int | None:
        return None

    def slide_full(self, rows: Sequence[int], histories: Sequence[Sequence[int]]) -> None:
        pass

    def propose(self, run: SpeculativeRun, last: Tensor, k: int) -> Proposal:
        found = []
        for row, history in enumerate(run.histories):
            copied = self.lookup(history, k)
            if not copied and self.sources is not None:
                copied = self.lookup(history, k, within=self.sources[self.row_source[row]])
            found.append(copied)
        width = max(len(f) for f in found)
        tokens = torch.zeros(len(found), width, dtype=torch.long)
        for row, copied in enumerate(found):
            tokens[row, : len(copied)] = torch.tensor(copied, dtype=torch.long)
        return Proposal(tokens.to(last.device), None)

    def lookup(
        self, history: Sequence[int], k: int, within: Sequence[int] | None = None
    ) -> list[int]:
        """Up to k tokens that followed the latest occurrence of the last n tokens of
        ``history`` earlier in it (or anywhere in ``within``)."""
        n = self.ngram
        if k <= 0 or len(history) < n:
            return []
        tail = list(history[-n:])
        text = history if within is None else within
        last_start = len(text) - n - 1 if within is None else len(text) - n
        first = tail[0]
        for start in range(last_start, -1, -1):
            if text[start] == first and list(text[start : start + n]) == tail:
                return list(text[start + n : start + n + k])
        return []

    def settle(self, fed: int, kept: Sequence[int | None]) -> None:
        pass  # nothing to roll back: the next lookup reads the row as it is


Drafter = ModelDrafter | PromptLookup


class SpeculativeRun:
    """One batched speculative decoding run of ``model`` (the target) with ``drafter``.

    Iterate to decode: each iteration is one round (every unfinished row gains 1..K+1 tokens).
    ``stats`` counts drafted and accepted tokens; :meth:`generations` returns the results.
    """

    def __init__(
        self,
        model: nn.Module,
        drafter: Drafter,
        prompts: Sequence[Sequence[int]],
        config: GenerationConfig,
        *,
        draft_tokens: int = 4,
        tokenizer: Tokenizer | None = None,
        eos_id: int | None = None,
    ) -> None:
        if draft_tokens < 1:
            raise ConfigError(f"draft_tokens must be at least 1 (got {draft_tokens})")
        self.model = model
        self.drafter = drafter
        self.config = config
        self.tokenizer = tokenizer
        self.draft_tokens = draft_tokens
        self.device = device = model_device(model)
        context = ContextPolicy(model.max_context, config.context_policy)
        self.prompts = [list(p) for p in prompts]
        fitted = [context.fit_prompt(p) for p in self.prompts]

        n = config.num_return_sequences
        self.row_prompt = [i for i in range(len(fitted)) for _ in range(n)]
        self.fitted = fitted
        self.histories = [list(fitted[i]) for i in self.row_prompt]  # prompt + generated, per row
        self.generated: list[list[int]] = [[] for _ in self.row_prompt]
        limits = [context.token_limit(len(h), config.max_new_tokens) for h in self.histories]
        self.limits = [limit for limit, _ in limits]
        self.reasons = [reason for _, reason in limits]
        self.done = [limit == 0 for limit in self.limits]
        # Processors read rows left-padded to the widest prompt, as plain decoding lays them out.
        self.width = max(len(p) for p in fitted)
        self.eos = eos_id if config.stop_at_eos else None
        self.processors: list[LogitsProcessor] = build_processors(
            config,
            vocab_size=vocab_size_of(model),
            eos_id=eos_id,
            prompt_len=self.width,
            tokenizer=tokenizer,
            device=device,
        )
        self.generator = None if config.greedy else make_generator(config.seed, device)
        self.trackers = None
        if tokenizer is not None:
            self.trackers = [
                TextTracker.for_config(tokenizer, config, prompt_ids=self.prompts[i])
                for i in self.row_prompt
            ]
        self.stats = SpeculationStats()

        rows = len(self.histories)
        self.target = RollbackRunner(model, rows, draft_tokens + 1)
        for tokens, same in self.prompt_rows():
            self.target.start(same, tokens[:-1])
        drafter.start(self)
        self._positions: list[list[int]] = []  # rows' draft prefixes, for process()

    def prompt_rows(self) -> Iterator[tuple[list[int], list[int]]]:
        """(fitted prompt, the rows that continue it) for every prompt."""
        n = self.config.num_return_sequences
        for index, tokens in enumerate(self.fitted):
            yield tokens, list(range(index * n, (index + 1) * n))

    # ------------------------------------------------------------------ the loop

    def __iter__(self) -> Iterator[int]:
        """Decode; yields the round index after each round's tokens are added."""
        with torch.inference_mode():
            round_index = 0
            while not all(self.done):
                self._round()
                yield round_index
                round_index += 1

    def _round(self) -> None:
        active = [row for row, done in enumerate(self.done) if not done]
        self.target.slide_full(active, self.histories)
        self.drafter.slide_full(active, self.histories)
        k = self._draft_count(active)
        last = torch.tensor([h[-1] for h in self.histories], dtype=torch.long, device=self.device)
        proposal = self.drafter.propose(self, last, k)
        drafts = proposal.tokens  # (B, k'), k' <= k
        k = drafts.shape[1]
        logits = self.target.feed(torch.cat([last[:, None], drafts], dim=1))  # (B, k + 1, V)
        draft_lists = drafts.tolist()
        scores = torch.stack(
            [self.process(logits[:, i], [drafts[:, j] for j in range(i)]) for i in range(k + 1)],
            dim=1,
        )  # (B, k + 1, V), position i processed as plain decoding would after d1..di
        if self.generator is None:
            accepted, extra = self._verify_greedy(scores, draft_lists)
        else:
            accepted, extra = self._verify_sampled(scores, draft_lists, proposal.q)

        self.stats.rounds += 1
        kept: list[int | None] = []  # per row: drafts accepted, None for a finished row
        for row in range(len(self.histories)):
            if self.done[row]:
                kept.append(None)
                continue
            a = accepted[row]
            self.stats.drafted += k
            added = self._emit(row, draft_lists[row][:a] + [extra[row]])
            self.stats.accepted += min(a, added)
            kept.append(None if self.done[row] else a)
        self.target.settle(k + 1, kept)
        self.drafter.settle(k + 1, kept)

    def _draft_count(self, active: list[int]) -> int:
        """K, fewer when every row is near its token limit or a row's window is nearly full (so
        windows slide where plain decoding slides them)."""
        k = self.draft_tokens
        k = min(k, max(self.limits[r] - len(self.generated[r]) for r in active) - 1)
        for room in (self.target.room, self.drafter.room):
            for row in active:
                left = room(row)
                if left is not None:
                    k = min(k, left - 1)
        return max(k, 0)

    def process(self, logits: Tensor, drafted: Sequence[Tensor]) -> Tensor:
        """Apply the processors to logits (B, V) after each row's tokens plus ``drafted`` (a list
        of (B,) tokens): rows of equal length go together, laid out as plain decoding does."""
        if not self.processors:
            return logits
        extra = torch.stack(list(drafted), dim=1).tolist() if drafted else [[] for _ in logits]
        groups: dict[int, list[int]] = {}
        for row, generated in enumerate(self.generated):
            groups.setdefault(len(generated), []).append(row)
        out = torch.empty_like(logits)
        for count, rows in groups.items():
            ids = torch.full((len(rows), self.width + count + len(drafted)), PAD, dtype=torch.long)
            for i, row in enumerate(rows):
                prompt = self.fitted[self.row_prompt[row]]
                tokens = prompt + self.generated[row] + extra[row]
                ids[i, self.width - len(prompt) :] = torch.tensor(tokens, dtype=torch.long)
            index = torch.tensor(rows, dtype=torch.long, device=logits.device)
            processed = apply_processors(self.processors, ids.to(logits.device), logits[index])
            out[index] = processed
        return out

    def _verify_greedy(
        self, scores: Tensor, drafts: list[list[int]]
    ) -> tuple[list[int], list[int]]:
        """(accepted drafts per row, the target's token after them)."""
        choices = scores.argmax(dim=-1).tolist()  # (B, k + 1)
        accepted, extra = [], []
        for row, chosen in enumerate(choices):
            a = 0
            for drafted in drafts[row]:
                if drafted != chosen[a]:
                    break
                a += 1
            accepted.append(a)
            extra.append(chosen[a])
        return accepted, extra

    def _verify_sampled(
        self, scores: Tensor, drafts: list[list[int]], q: Tensor | None
    ) -> tuple[list[int], list[int]]:
        """The rejection rule: (accepted drafts per row, the token sampled after them)."""
        assert self.generator is not None
        p = scores.softmax(dim=-1)  # (B, k + 1, V)
        batch, k = p.shape[0], p.shape[1] - 1
        drafted = torch.tensor(drafts, dtype=torch.long, device=p.device).view(batch, k)
        p_draft = p[:, :k].gather(2, drafted[:, :, None]).squeeze(2)  # (B, k)
        q_draft = (
            torch.ones_like(p_draft) if q is None else q.gather(2, drafted[:, :, None]).squeeze(2)
        )
        u = torch.rand(batch, k, generator=self.generator, device=p.device)
        keep = (u * q_draft < p_draft).long()  # u < p/q without dividing by q = 0
        accepted = keep.cumprod(dim=1).sum(dim=1).tolist()
        extra = []
        for row, a in enumerate(accepted):
            dist = p[row, a]
            if a < k:
                if q is None:
                    residual = dist.clone()
                    residual[drafts[row][a]] = 0.0
                else:
                    residual = (dist - q[row, a]).clamp_min(0.0)
                if float(residual.sum()) > 0:
                    dist = residual
            extra.append(int(torch.multinomial(dist, 1, generator=self.generator)))
        return accepted, extra

    def _emit(self, row: int, tokens: list[int]) -> int:
        """Add a row's new tokens until it finishes; returns how many were added."""
        added = 0
        for token in tokens:
            self.histories[row].append(token)
            self.generated[row].append(token)
            added += 1
            if token == self.eos:
                self.done[row] = True
                self.reasons[row] = "eos"
            elif self.trackers is not None and self.trackers[row].add(token):
                self.done[row] = True
            if len(self.generated[row]) >= self.limits[row]:
                self.done[row] = True
            if self.done[row]:
                break
        return added

    # ------------------------------------------------------------------ results

    def generations(self) -> list[Generation]:
        """One :class:`Generation` per row (prompt-major)."""
        out = []
        for row, tokens in enumerate(self.generated):
            reason = self.reasons[row]
            if reason == "eos":
                tokens = tokens[:-1]
            out.append(
                make_generation(
                    list(tokens),
                    reason,
                    tokenizer=self.tokenizer,
                    prompt_ids=self.prompts[self.row_prompt[row]],
                    stop=self.config.stop,
                    tracker=None if self.trackers is None else self.trackers[row],
                )
            )
        return out


def make_drafter(config: GenerationConfig, draft: nn.Module | Drafter | None) -> Drafter | None:
    """The drafter a request asks for: a draft model (or a drafter made already), prompt
    lookup, or None (plain decoding)."""
    if isinstance(draft, ModelDrafter | PromptLookup):
        return draft
    if draft is not None and config.prompt_lookup:
        raise ConfigError("give a draft model or prompt lookup, not both")
    if draft is not None:
        return ModelDrafter(draft)
    if config.prompt_lookup:
        return PromptLookup(config.prompt_lookup)
    return None


def check_speculation(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    drafter: Drafter,
    *,
    tokenizer: Tokenizer | None,
) -> None:
    """Raise ConfigError for a speculative request that cannot run."""
    validate_request(model, prompts, config, tokenizer=tokenizer)
    if config.num_beams > 1:
        raise ConfigError("speculative decoding runs greedy or sampled decoding, not beam search")
    if drafter.model is not None:
        ours, theirs = vocab_size_of(model), vocab_size_of(drafter.model)
        if ours != theirs:
            raise ConfigError(
                f"the draft model's vocabulary ({theirs} tokens) differs from the model's "
                f"({ours}); a drafter must share the model's tokenizer"
            )


def drafter_module(drafter: Drafter) -> nn.Module:
    """The drafter's model (an empty module for prompt lookup), to put in eval mode."""
    return nn.Identity() if drafter.model is None else drafter.model


def speculative_generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    drafter: Drafter,
    *,
    draft_tokens: int = 4,
    tokenizer: Tokenizer | None = None,
    eos_id: int | None = None,
) -> tuple[list[list[Generation]], SpeculationStats]:
    """Continue each prompt with speculative decoding; the results of :func:`generate` (greedy:
    the same tokens; sampling: the same distribution) and the drafting counts.

    Args:
        model: the target, any language model of the contract.
        drafter: :class:`ModelDrafter` (a model over the same tokenizer) or
            :class:`PromptLookup`.
        draft_tokens: K, tokens drafted per round.
    """
    check_speculation(model, prompts, config, drafter, tokenizer=tokenizer)
    if not prompts:
        return [], SpeculationStats()
    eos_id = resolve_eos(eos_id, tokenizer)
    with eval_mode(model), eval_mode(drafter_module(drafter)), torch.inference_mode():
        run = SpeculativeRun(
            model,
            drafter,
            prompts,
            config,
            draft_tokens=draft_tokens,
            tokenizer=tokenizer,
            eos_id=eos_id,
        )
        for _ in run:
            pass
        flat = run.generations()
    n = config.num_return_sequences
    return [flat[i * n : (i + 1) * n] for i in range(len(prompts))], run.stats


__all__ = [
    "ModelDrafter",
    "PromptLookup",
    "RollbackRunner",
    "SpeculationStats",
    "SpeculativeRun",
    "check_speculation",
    "drafter_module",
    "make_drafter",
    "speculative_generate",
]
