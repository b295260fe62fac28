"""evaluation/bootstrap.py: the intervals and paired differences reported beside every score. Computed on real
ROUGE scores of small hand-made rows; the expected values come from the per-example scores, not from the code."""

from __future__ import annotations

import math
import statistics

import pytest

from llm_summarizer.evaluation import diagnostics
from llm_summarizer.evaluation.bootstrap import (
    block_means,
    diagnostics_block,
    paired_diagnostics,
    paired_difference,
    score_block,
)
from llm_summarizer.evaluation.scoring import Protocol, score_pair
from llm_summarizer.metrics import family

ROUGE_KEYS = family("rouge")  # the means over examples (chrF, a corpus score, is tested in test_chrf.py)

P = Protocol()
WORDS = "the council approved a new budget for schools roads and parks after a long debate on taxes".split()


def rows_with_overlap(n: int = 40) -> list[dict]:
    """References of 8-16 words; predictions share a varying part of them, plus words of their own."""
    rows = []
    for i in range(n):
        ref = WORDS[i % 5 : i % 5 + 8 + i % 9]
        keep = ref[: (i * 7) % len(ref) + 1]
        rows.append({"reference": " ".join(ref), "prediction": " ".join(keep + ["meanwhile", "officials"][: i % 3])})
    return rows


def per_example(rows, key):
    return [score_pair(r["reference"], r["prediction"], P)[key] for r in rows]


def test_each_interval_holds_the_mean_of_the_examples_scores():
    rows = rows_with_overlap()
    block = score_block(rows, samples=500, seed=1, protocol=P)
    for k in ROUGE_KEYS:
        mean = statistics.fmean(per_example(rows, k))
        lo, hi = block[k]["ci95"]
        assert block[k]["f1"] == pytest.approx(mean, abs=1e-12)
        assert lo < mean < hi, k


def test_the_interval_is_a_95_percent_interval_of_the_mean():
    # the percentile bootstrap of a mean is close to mean +- 1.96 standard errors for 40 examples
    rows = rows_with_overlap()
    block = score_block(rows, samples=4000, seed=3, protocol=P)
    s = per_example(rows, "rouge1")
    half = 1.96 * statistics.pstdev(s) / math.sqrt(len(s))
    lo, hi = block["rouge1"]["ci95"]
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.08)  # a 90% interval would be 16% narrower
    assert (lo + hi) / 2 == pytest.approx(statistics.fmean(s), abs=half * 0.2)


def test_a_seed_gives_the_same_intervals_and_another_seed_other_ones():
    rows = rows_with_overlap()
    a, b = score_block(rows, 300, 7, P), score_block(rows, 300, 7, P)
    assert a == b
    c = score_block(rows, 300, 8, P)
    assert [c[k]["ci95"] for k in ROUGE_KEYS] != [a[k]["ci95"] for k in ROUGE_KEYS]
    assert [c[k]["f1"] for k in ROUGE_KEYS] == [a[k]["f1"] for k in ROUGE_KEYS]  # the means do not depend on it


def test_more_resamples_than_one_batch_are_all_used():
    # 250 resamples come in batches of 100, 100 and 50: another number of them gives another interval
    rows = rows_with_overlap()
    assert score_block(rows, 250, 1, P)["rouge1"]["ci95"] != score_block(rows, 200, 1, P)["rouge1"]["ci95"]


def test_one_example_has_a_zero_width_interval_at_its_score():
    rows = [{"reference": "the budget was approved", "prediction": "the budget passed"}]
    block = score_block(rows, 100, 0, P)
    for k in ROUGE_KEYS:
        f1 = score_pair(rows[0]["reference"], rows[0]["prediction"], P)[k]
        assert block[k]["f1"] == pytest.approx(f1) and block[k]["ci95"] == [pytest.approx(f1)] * 2
    assert block["examples"] == 1


def test_the_rest_of_the_block_describes_the_rows():
    rows = [
        {
            "reference": "one two three four",
            "prediction": "one two",
            "gen_seconds": 1.0,
            "new_tokens": 3,
            "hit_max_new_tokens": True,
            "truncated_input": False,
        },
        {"reference": "five six", "prediction": "  ", "gen_seconds": 3.0, "new_tokens": 5},
        {
            "reference": "seven eight nine",
            "prediction": "seven eight nine ten eleven",
            "gen_seconds": 0.0,
            "new_tokens": 0,
            "truncated_input": True,
        },
    ]
    block = score_block(rows, 50, 0, P)
    assert block["examples"] == 3 and block["empty_predictions"] == 1
    assert block["lengths_words"]["prediction"] == {"mean": 2.33, "median": 2, "p95": 5, "min": 0, "max": 5}
    assert block["lengths_words"]["reference"] == {"mean": 3.0, "median": 3, "p95": 4, "min": 2, "max": 4}
    assert block["hit_max_new_tokens_share"] == pytest.approx(1 / 3)
    assert block["truncated_input_share"] == pytest.approx(1 / 3)
    assert block["generated_tokens_mean"] == pytest.approx(2.67)
    assert block["throughput"] == {"examples_per_s": 0.75, "generated_tokens_per_s": 2.0, "generation_seconds": 4.0}


def test_without_timings_there_is_no_throughput():
    block = score_block([{"reference": "a b", "prediction": "a b"}], 10, 0, P)
    assert block["throughput"] == {"examples_per_s": None, "generated_tokens_per_s": None, "generation_seconds": 0.0}


# -- paired differences --------------------------------------------------------------------------------------------


def test_the_same_predictions_differ_by_exactly_zero():
    rows = rows_with_overlap()
    diff = paired_difference(rows, [dict(r) for r in rows], 500, 0, P)
    for k in ROUGE_KEYS:
        assert diff[k] == {"diff": 0.0, "ci95": [0.0, 0.0], "share_of_resamples_not_better": 1.0}


def test_a_model_better_on_every_example_is_better_in_every_resample():
    base = rows_with_overlap()
    model = [{"reference": r["reference"], "prediction": r["reference"]} for r in base]  # perfect summaries
    diff = paired_difference(model, base, 500, 0, P)
    for k in ROUGE_KEYS:
        expected = statistics.fmean(1.0 - s for s in per_example(base, k))
        assert diff[k]["diff"] == pytest.approx(expected)
        assert 0 < diff[k]["ci95"][0] < diff[k]["diff"] < diff[k]["ci95"][1]
        assert diff[k]["share_of_resamples_not_better"] == 0.0
    worse = paired_difference(base, model, 500, 0, P)  # the other way round: the negative, every resample not better
    assert worse["rouge1"]["diff"] == pytest.approx(-diff["rouge1"]["diff"])
    assert worse["rouge1"]["share_of_resamples_not_better"] == 1.0


def test_pairing_removes_the_spread_between_examples():
    # the model writes one more right word on every example: a small gain on each, next to examples whose scores
    # spread far more. Unpaired, the two intervals overlap; paired, the gain is clear.
    base = [{"reference": " ".join(WORDS[:10]), "prediction": " ".join(WORDS[:k])} for k in range(1, 10)]
    model = [{"reference": r["reference"], "prediction": " ".join(WORDS[: k + 1])} for k, r in enumerate(base, 1)]
    gains = [m - b for m, b in zip(per_example(model, "rouge1"), per_example(base, "rouge1"))]
    diff = paired_difference(model, base, 500, 0, P)["rouge1"]
    lo, hi = diff["ci95"]
    assert 0 < min(gains) <= lo < hi <= max(gains)
    assert diff["share_of_resamples_not_better"] == 0.0
    m_lo, m_hi = score_block(model, 500, 0, P)["rouge1"]["ci95"]
    b_lo, b_hi = score_block(base, 500, 0, P)["rouge1"]["ci95"]
    assert m_lo < b_hi  # the unpaired intervals overlap


# -- the statistics beside ROUGE -----------------------------------------------------------------------------------

DOCS = [
    "The city council approved a budget of 12 million dollars for schools on Monday after a long debate.",
    "Heavy rain flooded roads in the north; officials closed two bridges and opened shelters for residents.",
    "A new library opened downtown with 40000 books and a children's reading room funded by donations.",
]
SUMMARIES = [
    "The council approved a 12 million dollar school budget.",
    "Rain flooded northern roads and 3 bridges closed, said Mayor Smith.",
    "",
]


def test_diagnostics_block_means_and_intervals_over_the_examples_with_a_value():
    per = diagnostics.corpus(SUMMARIES, DOCS, references=SUMMARIES[:2] + ["A library opened."])
    block = diagnostics_block(per, 200, 0)
    stats = block["stats"]
    assert set(stats) == set(diagnostics.DIAGNOSTIC_KEYS)
    values = diagnostics.values(per, "unsupported_numbers")
    assert values == [0.0, 1.0]  # the empty summary has no value; the second invents "3"
    assert stats["unsupported_numbers"] == {"mean": 0.5, "ci95": [0.0, 1.0], "examples": 2}
    for k, s in stats.items():
        if s["examples"]:
            assert s["ci95"][0] <= s["mean"] <= s["ci95"][1], k
    assert stats["cut_by_max_new_tokens"] == {"mean": None, "ci95": None, "examples": 0}  # no flags given
    assert block["notes"] == {"empty summary": 1}
    assert block_means(block)["unsupported_numbers"] == 0.5 and block_means(None) == {}


def test_paired_diagnostics_of_identical_summaries_is_zero_and_counts_the_pairs_with_values():
    per = diagnostics.corpus(SUMMARIES, DOCS)
    same = paired_diagnostics(per, diagnostics.corpus(SUMMARIES, DOCS), 100, 0)
    assert same["novel_1gram"] == {"diff": 0.0, "ci95": [0.0, 0.0], "examples": 2}
    assert same["length_ratio"] == {"diff": None, "ci95": None, "examples": 0}  # no references


def test_paired_diagnostics_sees_a_copying_model():
    base = diagnostics.corpus(SUMMARIES[:2], DOCS[:2])
    copying = diagnostics.corpus([d.split(";")[0] for d in DOCS[:2]], DOCS[:2])  # summaries copied from the documents
    d = paired_diagnostics(copying, base, 100, 0)
    assert d["novel_1gram"]["diff"] < 0 and d["novel_1gram"]["ci95"][1] < 0
    assert d["novel_1gram"]["diff"] == pytest.approx(-statistics.fmean(diagnostics.values(base, "novel_1gram")))
