"""The metrics of generated summaries against their references: each declared once, here, with everything the
rest of the package needs to compute, bootstrap, log, save and show it. Nothing else lists metric names.

A metric is computed from per-example statistics (`stats`: a tuple of numbers per reference/prediction pair) and
a rule that turns the statistics summed over any set of examples into the score (`combine`):
- a per-summary metric (ROUGE): the statistic is the summary's own score and `combine` is the mean;
- a corpus metric (chrF): the statistics are counts (n-grams matched, in the prediction, in the reference) and the
  score is computed from their sums, as its reference implementation computes a corpus score.
The bootstrap resamples examples and applies the same `combine` to each resample's sums, so an interval means the
same thing for both kinds. Scores are kept between 0 and 1 (shown x 100).

Where each is shown: every metric here is logged during training (`eval_<key>`), saved in metrics.json, printed
by `score` and `evaluate` (with intervals and paired differences), tabled in the reports and the model card, put
in the samples tables of the trackers and returned by the `evaluate` module; `curve` adds it to the report's
training curves, `card_index` to the model card's machine-readable results.

The trainer logs evaluation metrics as `eval_<name>` (transformers' convention: `eval_loss`, `eval_rougeL`);
metrics.json, the model card, the reports and the evaluate command use the plain name (`rougeL`). Config keys
that name a metric (train.metric_for_best_model, train.early_stopping[].metric, tune.metric) take either form;
`eval_name` and `plain_name` convert, and nothing else adds or strips the prefix.

Adding a metric: one `Metric(...)` in `METRICS` (with its `stats` and `combine`), and its test. ROUGE's statistics
come from evaluation/scoring.py (`family="rouge"`: rouge-score scores all its types in one pass, under the run's
tokenizer and sentence split). The statistics of each summary against its document have their own schema in
evaluation/diagnostics.py (STATS: key, label, direction).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

EVAL_PREFIX = "eval_"


def _mean(sums: np.ndarray, n) -> np.ndarray:
    """The mean of a per-summary score: its sum over the examples / their number."""
    return sums[..., 0] / n


@dataclass(frozen=True)
class Metric:
    key: str  # the plain name: metrics.json, tables, the evaluate module; logged as eval_<key>
    label: str  # how people write it
    description: str  # one line: what it measures, for protocols and the card
    stats: Optional[Callable[[str, str], Sequence[float]]] = None  # (reference, prediction) -> statistics
    combine: Callable[[np.ndarray, object], np.ndarray] = _mean  # (statistics summed, examples) -> score
    family: Optional[str] = None  # computed with its family in one pass by evaluation/scoring.py
    measure: str = "F1"  # what the number is, beside the label ("ROUGE-L F1 x 100")
    hub_id: Optional[str] = None  # its name in a model card's `metrics:` list (the Hugging Face metric id)
    higher_is_better: bool = True
    aggregate: str = "mean over examples"  # how the corpus score is made, in words
    curve: bool = False  # a line in the report's training curves
    color: Optional[str] = None  # its colour in the plots (None: matplotlib's next)
    card_index: bool = True  # in the model card's model-index results

    def score(self, stats_sum: Sequence[float], n: int = 1) -> float:
        """The score of statistics summed over `n` examples (one example's own: its statistics, n=1)."""
        return float(self.combine(np.asarray(stats_sum, dtype=float), n))


# ---- chrF: sacrebleu's definition (chrF2: character n-grams of order 1..6, whitespace removed, case kept,
# beta = 2; the corpus score from n-gram counts summed over the examples; sacreBLEU >= 2.0's effective-order rule).
CHRF_ORDER = 6
CHRF_BETA = 2.0


def _char_ngrams(text: str, n: int) -> Counter:
    s = "".join(text.split())
    return Counter(s[i : i + n] for i in range(len(s) - n + 1))


def chrf_stats(reference: str, prediction: str) -> tuple[int, ...]:
    """[prediction n-grams, reference n-grams, matched] for n = 1..6, flattened (18 counts)."""
    out: list[int] = []
    for n in range(1, CHRF_ORDER + 1):
        hyp, ref = _char_ngrams(prediction, n), _char_ngrams(reference, n)
        out += [sum(hyp.values()), sum(ref.values()), sum(min(c, ref[g]) for g, c in hyp.items() if g in ref)]
    return tuple(out)


def chrf_combine(sums: np.ndarray, n=None) -> np.ndarray:
    """chrF from summed counts (any leading shape: one row per bootstrap resample), between 0 and 1."""
    s = np.asarray(sums, dtype=float).reshape(*np.shape(sums)[:-1], CHRF_ORDER, 3)
    hyp, ref, match = s[..., 0], s[..., 1], s[..., 2]
    both = (hyp > 0) & (ref > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(both, match / np.where(hyp > 0, hyp, 1), 0.0)
        rec = np.where(both, match / np.where(ref > 0, ref, 1), 0.0)
    k = both.sum(axis=-1)
    p = np.where(k > 0, prec.sum(axis=-1) / np.maximum(k, 1), 0.0)
    r = np.where(k > 0, rec.sum(axis=-1) / np.maximum(k, 1), 0.0)
    f2 = CHRF_BETA**2
    denom = f2 * p + r
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, (1 + f2) * p * r / np.where(denom > 0, denom, 1), 0.0)


_ROUGE = dict(family="rouge", hub_id="rouge")  # scored together by evaluation/scoring.py

METRICS: tuple[Metric, ...] = (
    Metric("rouge1", "ROUGE-1", "unigram overlap F1 (rouge-score, stemmed)", **_ROUGE, curve=True, color="#1f77b4"),
    Metric("rouge2", "ROUGE-2", "bigram overlap F1 (rouge-score, stemmed)", **_ROUGE, curve=True, color="#9467bd"),
    Metric(
        "rougeL",
        "ROUGE-L",
        "longest common subsequence F1 (rouge-score, stemmed)",
        **_ROUGE,
        curve=True,
        color="#2ca02c",
    ),
    Metric(
        "rougeLsum",
        "ROUGE-Lsum",
        "summary-level longest common subsequence F1, one sentence per line (rouge-score, stemmed)",
        **_ROUGE,
        color="#17becf",
    ),
    Metric(
        "chrF",
        "chrF",
        "character n-gram F-score (sacrebleu's chrF2: orders 1-6, beta 2, whitespace removed, case kept)",
        stats=chrf_stats,
        combine=chrf_combine,
        aggregate="from n-gram counts summed over examples (a corpus score, as sacrebleu computes it)",
        measure="F2",
        hub_id="chrf",
        curve=True,
        color="#8c564b",
    ),
)

BY_KEY: dict[str, Metric] = {m.key: m for m in METRICS}
KEYS: tuple[str, ...] = tuple(m.key for m in METRICS)  # the order they are shown in
LABELS: dict[str, str] = {m.key: m.label for m in METRICS}
CURVES: tuple[str, ...] = tuple(m.key for m in METRICS if m.curve)
PRIMARY = "rougeL"  # the metric a single number stands for: best model, examples ranked, the tune default


def family(name: str) -> tuple[str, ...]:
    """The keys computed together by one scorer ("rouge": the rouge-score types)."""
    return tuple(m.key for m in METRICS if m.family == name)


# what every generation pass records beside its scores (mean summary length in tokens, share cut by
# max_new_tokens, examples scored)
GENERATION_KEYS = ("gen_len_mean", "gen_hit_max_frac", "summary_examples")


def plain_name(name: str) -> str:
    """The plain name of a logged one ("eval_rougeL" -> "rougeL"); a plain name is returned as it is."""
    return name.removeprefix(EVAL_PREFIX)


def eval_name(name: str) -> str:
    """The name the trainer logs a metric under ("rougeL" -> "eval_rougeL"); "eval_rougeL" is returned as it is."""
    return name if name.startswith(EVAL_PREFIX) else EVAL_PREFIX + name


def is_summary_metric(name: str) -> bool:
    """A metric of generated summaries against their references (named either way)."""
    return plain_name(name) in BY_KEY


def higher_is_better(name: str) -> bool:
    """Whether a higher value of a metric is better when nothing says otherwise: a registered metric says so
    itself, every loss is lower-better."""
    m = BY_KEY.get(plain_name(name))
    return m.higher_is_better if m else not plain_name(name).endswith("loss")


def format_scores(block: Optional[dict]) -> str:
    """A block of scores on one line ("rouge1=0.3312 rouge2=0.1101 ..."); "n/a" for none."""
    if not block:
        return "n/a"
    return " ".join(f"{k}={block[k]:.4f}" for k in KEYS if k in block)
