"""Scores with confidence intervals: ROUGE means with percentile-bootstrap 95% intervals over resampled
examples, and model-minus-base differences with a *paired* bootstrap (the same resampled examples for both).
The statistics of diagnostics.py get the same treatment, each over the examples that have a value.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..metric_names import ROUGE_KEYS
from . import diagnostics
from .scoring import Protocol, score_corpus


def _bootstrap_means(values, idx_batches):
    """Means of `values` (n, k) over each resample of example indices; (B, k)."""
    return np.concatenate([values[idx].mean(axis=1) for idx in idx_batches], axis=0)


def _resamples(n: int, samples: int, seed: int, batch: int = 100):
    """The resampled index sets, regenerated identically for each use (same seed = paired)."""
    rng = np.random.default_rng(seed)
    left = samples
    while left > 0:
        b = min(batch, left)
        yield rng.integers(0, n, size=(b, n))
        left -= b


def _interval(boot) -> list:
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return [[float(a), float(b)] for a, b in zip(lo, hi)]


def _words(text: str) -> int:
    return len(text.split())


def _length_stats(xs: list[int]) -> dict:
    if not xs:
        return {}
    s = sorted(xs)
    return {
        "mean": round(sum(s) / len(s), 2),
        "median": s[len(s) // 2],
        "p95": s[min(len(s) - 1, int(len(s) * 0.95))],
        "min": s[0],
        "max": s[-1],
    }


def score_block(rows: list[dict], samples: int, seed: int, protocol: Optional[Protocol] = None) -> dict:
    """ROUGE means with bootstrap 95% intervals, lengths, truncation share and throughput."""
    means, per = score_corpus([r["reference"] for r in rows], [r["prediction"] for r in rows], protocol)
    values = np.array([[p[k] for k in ROUGE_KEYS] for p in per], dtype=float)
    ci = _interval(_bootstrap_means(values, _resamples(len(rows), samples, seed)))
    n = len(rows)
    seconds = sum(float(r.get("gen_seconds") or 0.0) for r in rows)
    new_tokens = sum(int(r.get("new_tokens") or 0) for r in rows)
    block = {k: {"f1": float(means[k]), "ci95": ci[i]} for i, k in enumerate(ROUGE_KEYS)}
    block.update(
        {
            "examples": n,
            "lengths_words": {
                "prediction": _length_stats([_words(r["prediction"]) for r in rows]),
                "reference": _length_stats([_words(r["reference"]) for r in rows]),
            },
            "generated_tokens_mean": round(new_tokens / n, 2),
            "hit_max_new_tokens_share": sum(bool(r.get("hit_max_new_tokens")) for r in rows) / n,
            "truncated_input_share": sum(bool(r.get("truncated_input")) for r in rows) / n,
            "empty_predictions": sum(1 for r in rows if not r["prediction"].strip()),
            "throughput": {
                "examples_per_s": round(n / seconds, 3) if seconds else None,
                "generated_tokens_per_s": round(new_tokens / seconds, 2) if seconds else None,
                "generation_seconds": round(seconds, 2),
            },
        }
    )
    return block


def paired_difference(
    rows: list[dict], base_rows: list[dict], samples: int, seed: int, protocol: Optional[Protocol] = None
) -> dict:
    """model - base per ROUGE type, with a paired bootstrap: the same resampled examples for both."""
    _, per_m = score_corpus([r["reference"] for r in rows], [r["prediction"] for r in rows], protocol)
    _, per_b = score_corpus([r["reference"] for r in base_rows], [r["prediction"] for r in base_rows], protocol)
    d = np.array([[m[k] - b[k] for k in ROUGE_KEYS] for m, b in zip(per_m, per_b)], dtype=float)
    boot = _bootstrap_means(d, _resamples(len(rows), samples, seed))
    ci = _interval(boot)
    return {
        k: {
            "diff": float(d[:, i].mean()),
            "ci95": ci[i],
            "share_of_resamples_not_better": float((boot[:, i] <= 0).mean()),
        }
        for i, k in enumerate(ROUGE_KEYS)
    }


def diagnostics_block(per: list[dict], samples: int, seed: int) -> dict:
    """Each statistic's mean over the examples that have a value, with its bootstrap 95% interval and how many
    examples it is over (mean and interval None when none has one); `notes` counts why values are missing."""
    out = {}
    for k in diagnostics.DIAGNOSTIC_KEYS:
        v = np.array(diagnostics.values(per, k), dtype=float)
        if not len(v):
            out[k] = {"mean": None, "ci95": None, "examples": 0}
            continue
        ci = _interval(_bootstrap_means(v[:, None], _resamples(len(v), samples, seed)))[0]
        out[k] = {"mean": float(v.mean()), "ci95": ci, "examples": int(len(v))}
    return {"stats": out, "notes": diagnostics.note_counts(per)}


def paired_diagnostics(per: list[dict], base_per: list[dict], samples: int, seed: int) -> dict:
    """model - base of each statistic over the examples where both have a value, paired bootstrap 95% interval."""
    out = {}
    for k in diagnostics.DIAGNOSTIC_KEYS:
        d = np.array(
            [m[k] - b[k] for m, b in zip(per, base_per) if m.get(k) is not None and b.get(k) is not None], dtype=float
        )
        if not len(d):
            out[k] = {"diff": None, "ci95": None, "examples": 0}
            continue
        ci = _interval(_bootstrap_means(d[:, None], _resamples(len(d), samples, seed)))[0]
        out[k] = {"diff": float(d.mean()), "ci95": ci, "examples": int(len(d))}
    return out


def block_means(block: Optional[dict]) -> dict:
    """{key: mean} of a diagnostics_block (what the words and warnings read)."""
    return {k: v.get("mean") for k, v in ((block or {}).get("stats") or {}).items()}
