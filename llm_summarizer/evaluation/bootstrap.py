"""Scores with confidence intervals: ROUGE means with percentile-bootstrap 95% intervals over resampled
examples, and model-minus-base differences with a *paired* bootstrap (the same resampled examples for both).
The statistics of diagnostics.py get the same treatment, each over the examples that have a value.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..metrics import BY_KEY, KEYS, _mean
from ..stats import percentile
from . import diagnostics
from .scoring import Protocol, score_all


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


def _bootstrap_scores(stats: np.ndarray, combine, samples: int, seed: int) -> np.ndarray:
    """A metric's score on each resample: its statistics summed over the resampled examples, combined; (B,)."""
    n = len(stats)
    return np.concatenate([combine(stats[idx].sum(axis=1), n) for idx in _resamples(n, samples, seed)], axis=0)


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
        "median": percentile(s, 0.5),
        "p95": percentile(s, 0.95),
        "min": s[0],
        "max": s[-1],
    }


def score_block(rows: list[dict], samples: int, seed: int, protocol: Optional[Protocol] = None) -> dict:
    """ROUGE means with bootstrap 95% intervals, lengths, truncation share and throughput."""
    sc = score_all([r["reference"] for r in rows], [r["prediction"] for r in rows], protocol)
    ci = {k: _interval(_bootstrap_scores(sc.stats[k], BY_KEY[k].combine, samples, seed)[:, None])[0] for k in KEYS}
    n = len(rows)
    seconds = sum(float(r.get("gen_seconds") or 0.0) for r in rows)
    new_tokens = sum(int(r.get("new_tokens") or 0) for r in rows)
    block = {k: {"f1": float(sc.means[k]), "ci95": ci[k]} for k in KEYS}
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
    """model - base of each metric, with a paired bootstrap: the same resampled examples for both. A per-summary
    metric's difference is the mean of the examples' differences; a corpus metric's, the difference of the two
    corpus scores on each resample."""
    m = score_all([r["reference"] for r in rows], [r["prediction"] for r in rows], protocol)
    b = score_all([r["reference"] for r in base_rows], [r["prediction"] for r in base_rows], protocol)
    out = {}
    for k in KEYS:
        combine = BY_KEY[k].combine
        if combine is _mean:
            d = m.stats[k][:, 0] - b.stats[k][:, 0]
            diff, boot = float(d.mean()), _bootstrap_means(d[:, None], _resamples(len(rows), samples, seed))[:, 0]
        else:
            diff = float(m.means[k] - b.means[k])
            boot = _bootstrap_scores(m.stats[k], combine, samples, seed) - _bootstrap_scores(
                b.stats[k], combine, samples, seed
            )
        out[k] = {
            "diff": diff,
            "ci95": _interval(boot[:, None])[0],
            "share_of_resamples_not_better": float((boot <= 0).mean()),
        }
    return out


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
