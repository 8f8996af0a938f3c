"""BLEU and ROUGE for translation and summarization, computed by the reference libraries.

- :func:`bleu`: corpus BLEU from ``sacrebleu`` on detokenized text (its default 13a tokenizer),
  reported with sacrebleu's signature so scores are comparable with published ones.
- :func:`rouge`: ROUGE-1/2/L F1 (x100) from Google's ``rouge-score`` (with stemming), averaged
  over sentences; with several references per hypothesis the best-scoring one counts.

Both libraries are imported only when called (optional dependencies).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError

_HINT = "install it with `pip install {}` (or `pip install rnn2gpt[eval]`)"


def _import(module: str, package: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ConfigError(
            f"{package} is needed for this metric; " + _HINT.format(package)
        ) from None


def _reference_streams(
    hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> list[list[str]]:
    """References as per-hypothesis lists -> sacrebleu's streams (one list per reference slot)."""
    if len(hypotheses) != len(references):
        raise ConfigError(
            f"{len(hypotheses)} hypotheses but {len(references)} references; give one (list of) "
            "reference(s) per hypothesis"
        )
    per_item = [[r] if isinstance(r, str) else list(r) for r in references]
    slots = max((len(r) for r in per_item), default=1)
    # sacrebleu takes references slot by slot; a missing reference is None (skipped).
    return [[r[k] if k < len(r) else None for r in per_item] for k in range(slots)]  # type: ignore[misc]


def bleu(
    hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> dict[str, Any]:
    """Corpus BLEU: -> dict(bleu (0-100), signature, precisions, brevity_penalty, sys_len, ref_len).

    references: one string per hypothesis, or a list of references per hypothesis.
    """
    sacrebleu = _import("sacrebleu", "sacrebleu")
    metric = sacrebleu.metrics.BLEU()
    score = metric.corpus_score(list(hypotheses), _reference_streams(hypotheses, references))
    return {
        "bleu": float(score.score),
        "signature": str(metric.get_signature()),
        "precisions": [float(p) for p in score.precisions],
        "brevity_penalty": float(score.bp),
        "sys_len": int(score.sys_len),
        "ref_len": int(score.ref_len),
    }


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(
    hypotheses: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    use_stemmer: bool = True,
) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (0-100) over hypotheses: -> dict(rouge1, rouge2, rougeL)."""
    rouge_scorer = _import("rouge_score.rouge_scorer", "rouge-score")
    if len(hypotheses) != len(references):
        raise ConfigError(
            f"{len(hypotheses)} hypotheses but {len(references)} references; give one (list of) "
            "reference(s) per hypothesis"
        )
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hyp, refs in zip(hypotheses, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if len(refs) == 1:
            scores = scorer.score(refs[0], hyp)
        else:
            scores = scorer.score_multi(refs, hyp)
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    count = max(len(hypotheses), 1)
    return {key: 100.0 * value / count for key, value in totals.items()}


__all__ = ["ROUGE_TYPES", "bleu", "rouge"]
