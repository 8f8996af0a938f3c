"""Extractive baselines for SciTLDR-A, scored by the same ROUGE code as ``rnn2gpt eval``.

- lead-1: the abstract's first sentence (the classic news/abstract baseline).
- lead-1 cut to N words: the same, cut to the length of an average TL;DR.

    python benchmarks/summarization_baseline.py --data-dir ../shared/data/scitldr [--split test]

Prints a Markdown table of ROUGE-1/2/L F1 (x100, best over the references of each paper, as
``rnn2gpt eval --task summarization`` scores a model).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rnn2gpt.data.parallel import read_jsonl_pairs, read_lines
from rnn2gpt.evaluation.bleu_rouge import rouge


def first_sentences(path: Path) -> list[str]:
    """The first sentence of each record's ``source`` list (records in file order)."""
    firsts = []
    for line in read_lines(path):
        if not line.strip():
            continue
        source = json.loads(line)["source"]
        firsts.append((source[0] if isinstance(source, list) and source else str(source)).strip())
    return firsts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder with {train,dev,test}.jsonl.gz")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    path = Path(args.data_dir) / f"{args.split}.jsonl.gz"
    split = read_jsonl_pairs(path, "source", "target")
    lead = first_sentences(path)
    assert len(lead) == len(split.references)
    tldr_words = round(statistics.mean(len(r.split()) for refs in split.references for r in refs))
    systems = {
        "lead-1": lead,
        f"lead-1, first {tldr_words} words": [" ".join(s.split()[:tldr_words]) for s in lead],
    }
    print(f"{path}: {len(lead)} papers, mean TL;DR {tldr_words} words\n")
    print("| system | ROUGE-1 | ROUGE-2 | ROUGE-L |")
    print("| --- | ---: | ---: | ---: |")
    for name, hypotheses in systems.items():
        scores = rouge(hypotheses, split.references)
        print(
            f"| {name} | {scores['rouge1']:.2f} | {scores['rouge2']:.2f} | {scores['rougeL']:.2f} |"
        )


if __name__ == "__main__":
    main()
