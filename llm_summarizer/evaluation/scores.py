"""Scoring a set of predictions, the one way `score` and `evaluate` both use: every registered metric
(metrics.py) with bootstrap 95% intervals, the statistics of each summary against its document, and with a base
the paired differences; the protocol that says how; and the lines the commands print.

Rows are {id, reference, prediction, document (or None), hit_max_new_tokens (or None)}, plus the generation
figures evaluate's predictions carry (new_tokens, gen_seconds, truncated_input). The defaults of every setting
live in the config schema (EvalSection): `ScoreSettings.defaults()` reads them there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import EvalSection
from ..metrics import KEYS
from . import diagnostics
from .bootstrap import block_means, diagnostics_block, paired_diagnostics, paired_difference, score_block
from .scoring import Protocol, protocol_for, warn_empty_references

GENERATION_FIGURES = ("generated_tokens_mean", "hit_max_new_tokens_share", "truncated_input_share", "throughput")


@dataclass(frozen=True)
class ScoreSettings:
    """How scores are computed (eval.rouge_tokenizer, eval.rouge_lsum_split, eval.bootstrap_samples and
    eval.bootstrap_seed)."""

    tokenizer: str
    lsum_split: str
    bootstrap_samples: int
    seed: int

    @classmethod
    def from_eval(cls, ev: EvalSection) -> "ScoreSettings":
        return cls(ev.rouge_tokenizer, ev.rouge_lsum_split, ev.bootstrap_samples, ev.bootstrap_seed)

    @classmethod
    def defaults(cls) -> "ScoreSettings":
        """The schema's defaults (what `score` uses when no option is given)."""
        return cls.from_eval(EvalSection())


@dataclass
class Scored:
    results: dict  # "model", "base", the difference, "diagnostics_<difference>", "references"
    protocol: Protocol
    statistics: dict  # each example's statistics against its document: "model", "base", "references"


def _statistics(rows: list[dict], tokenizer: str, documents: Optional[list] = None) -> list[dict]:
    """Each prediction against its document (the row's own, else `documents`' at its position), its reference and
    its generation flag (diagnostics.py)."""
    docs = [
        r.get("document") if r.get("document") is not None else (documents[i] if documents else None)
        for i, r in enumerate(rows)
    ]
    return diagnostics.corpus(
        [r["prediction"] for r in rows],
        docs,
        [r["reference"] for r in rows],
        [r.get("hit_max_new_tokens") for r in rows],
        tokenizer,
    )


def score_predictions(
    rows: list[dict],
    settings: ScoreSettings,
    base_rows: Optional[list[dict]] = None,
    difference: str = "model_minus_base",
    generated: bool = True,
    warn: bool = True,
) -> Scored:
    """Every metric of `rows` (and of `base_rows`, the same examples, with the paired differences under
    `difference`), the statistics against the documents (a base without documents is measured against `rows`'),
    and the references' own statistics when every row has its document. `generated=False`: a file says nothing of
    generation, so its figures are left out. `warn`: say how many references have no token (evaluate says it
    before generating)."""
    refs = [r["reference"] for r in rows]
    protocol = protocol_for(refs, settings.tokenizer, settings.lsum_split)
    if warn:
        warn_empty_references(refs, protocol, "")
    n, seed = settings.bootstrap_samples, settings.seed

    def block(rs: list[dict]) -> dict:
        b = score_block(rs, n, seed, protocol)
        if not generated:
            for k in GENERATION_FIGURES:
                b.pop(k, None)
        return b

    results = {"model": block(rows)}
    per = {"model": _statistics(rows, protocol.tokenizer)}
    if base_rows is not None:
        results["base"] = block(base_rows)
        results[difference] = paired_difference(rows, base_rows, n, seed, protocol)
        per["base"] = _statistics(base_rows, protocol.tokenizer, [r.get("document") for r in rows])
    for name, p in per.items():
        results[name]["diagnostics"] = diagnostics_block(p, n, seed)
    if base_rows is not None:
        results[f"diagnostics_{difference}"] = paired_diagnostics(per["model"], per["base"], n, seed)
    if all(r.get("document") is not None for r in rows):
        refs_per = diagnostics.corpus(refs, [r["document"] for r in rows], tokenizer=protocol.tokenizer)
        results["references"] = {"diagnostics": diagnostics_block(refs_per, n, seed)}
        per["references"] = refs_per
    return Scored(results, protocol, per)


def scoring_protocol(scored: Scored, settings: ScoreSettings, reference: str, paired: str) -> dict:
    """How the scores were computed, for metrics.json, --output and the reports."""
    return {
        **scored.protocol.describe(),
        "examples": scored.results["model"]["examples"],
        "diagnostics": diagnostics.protocol(scored.protocol.tokenizer),
        "reference": reference,
        "bootstrap": {
            "resamples": settings.bootstrap_samples,
            "seed": settings.seed,
            "interval": "95% percentile interval of the corpus score over resampled examples",
            **({"paired": paired} if paired else {}),
        },
    }


def interval_line(block: dict) -> str:
    """Each metric x 100 with its interval, on one line ("rouge1 31.20 [28.10, 34.40]  ...")."""
    return "  ".join(
        f"{k} {100 * block[k]['f1']:.2f} [{100 * block[k]['ci95'][0]:.2f}, {100 * block[k]['ci95'][1]:.2f}]"
        for k in KEYS
        if k in block
    )


def difference_line(diff: dict) -> str:
    """Each metric's paired difference x 100 with its interval, on one line."""
    return "  ".join(
        f"{k} {100 * diff[k]['diff']:+.2f} [{100 * diff[k]['ci95'][0]:+.2f}, {100 * diff[k]['ci95'][1]:+.2f}]"
        for k in KEYS
        if k in diff
    )


def score_lines(results: dict, names: tuple[str, str], difference: str) -> list[str]:
    """The scores as the commands print them: the model's line, the base's and the difference (names: how the two
    are called, e.g. ("model", "base") or ("file", "base")), the labels in one column."""
    a, b = names
    width = len(f"{a} - {b}: ")
    lines = [f"   {a + ':':<{width}}{interval_line(results['model'])}"]
    if "base" in results:
        lines.append(f"   {b + ':':<{width}}{interval_line(results['base'])}")
        lines.append(f"   {f'{a} - {b}:':<{width}}{difference_line(results[difference])}")
    return lines


def statistics_lines(results: dict, names: tuple[str, str], difference: str, base_first: bool = True) -> list[str]:
    """The statistics of each summary against its document: the references' column, then the base's and the
    model's (or the model's and the base's), with the paired difference's interval (diagnostics.lines)."""
    a, b = names
    columns = {
        a: block_means(results["model"].get("diagnostics")),
        b: block_means((results.get("base") or {}).get("diagnostics")),
    }
    order = (b, a) if base_first else (a, b)
    return diagnostics.lines(
        {"references": block_means((results.get("references") or {}).get("diagnostics"))}
        | {k: columns[k] for k in order},
        results.get(f"diagnostics_{difference}"),
        f"{a} - {b}",
    )
