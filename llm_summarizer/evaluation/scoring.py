"""ROUGE as published summarization results compute it: rouge-score, Porter stemming, F1.

ROUGE-Lsum treats newlines as sentence boundaries (rouge-score's convention), so both texts get one
sentence per line first; the splitter is a plain regex on sentence-final punctuation followed by whitespace
and a capital letter, digit or opening quote (no downloads; "e.g. the" stays one sentence).
"""

from __future__ import annotations

import re
from functools import lru_cache

from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENT_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9#])")

PROTOCOL = {
    "package": "rouge-score",
    "measure": "F1 (fmeasure)",
    "use_stemmer": True,
    "tokenizer": "rouge-score default (lowercase, non-alphanumerics to spaces)",
    "rougeLsum_sentence_split": "newlines, and . ! ? followed by whitespace and a capital, digit or opening quote",
    "aggregation": "mean over examples",
}


def split_sentences(text: str) -> str:
    """One sentence per line, for ROUGE-Lsum; existing newlines are kept as boundaries."""
    lines = []
    for para in text.strip().split("\n"):
        para = para.strip()
        if para:
            lines.extend(s.strip() for s in _SENT_END.split(para) if s.strip())
    return "\n".join(lines)


@lru_cache(maxsize=1)
def _scorer():
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def score_pair(reference: str, prediction: str) -> dict[str, float]:
    s = _scorer().score(split_sentences(reference), split_sentences(prediction))
    return {k: s[k].fmeasure for k in ROUGE_TYPES}


def score_corpus(references: list[str], predictions: list[str]) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Mean F1 per ROUGE type over examples, and the per-example scores."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    per = [score_pair(r, p) for r, p in zip(references, predictions)]
    n = max(1, len(per))
    return {k: sum(x[k] for x in per) / n for k in ROUGE_TYPES}, per
