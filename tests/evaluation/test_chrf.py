"""chrF, added through the metric registry alone (llm_summarizer/metrics.py): its values are sacrebleu's, and it
reaches every place a metric of generated summaries is shown without any other file naming it."""

import json

import pytest

from llm_summarizer.evaluation.report import score_table
from llm_summarizer.evaluation.scores import ScoreSettings, score_predictions
from llm_summarizer.evaluation.scoring import score_all, score_pair
from llm_summarizer.metrics import BY_KEY, KEYS, chrf_stats
from tests.conftest import run_cli

# sacrebleu 2.6.0's CHRF() (chrF2, defaults): sentence_score(hyp, [ref]).score / 100, and corpus_score of all five
PAIRS = [
    ("The cat sat on the mat.", "the cat is on the mat", 0.52952458731294094),
    ("A quick brown fox jumps over the lazy dog", "A fast brown fox leaps over a lazy dog.", 0.45558338507533584),
    ("Die Katze schläft auf dem Sofa.", "Die Katze schläft.", 0.5858622109685193),
    ("我们今天去公园散步。", "我们去公园。", 0.19289819376026273),
    ("short", "", 0.0),
]
SACREBLEU_CORPUS = 0.472368236254283


@pytest.mark.parametrize("reference, prediction, expected", PAIRS)
def test_sentence_chrf_is_sacrebleus(reference, prediction, expected):
    assert score_pair(reference, prediction)["chrF"] == pytest.approx(expected, abs=1e-12)


def test_corpus_chrf_sums_the_counts_as_sacrebleu_does():
    s = score_all([r for r, _, _ in PAIRS], [p for _, p, _ in PAIRS])
    assert s.means["chrF"] == pytest.approx(SACREBLEU_CORPUS, abs=1e-12)
    # not the mean of the sentence scores: the corpus score is made from the summed n-gram counts
    assert abs(s.means["chrF"] - sum(e for *_, e in PAIRS) / len(PAIRS)) > 0.01


def test_chrf_by_hand():
    # "abd" against "abc": 1-grams 2 of 3 match, 2-grams 1 of 2, 3-grams 0 of 1, no longer ones (not counted):
    # mean precision = mean recall = (2/3 + 1/2 + 0) / 3 = 7/18, and F-beta of equal P and R is that value
    assert BY_KEY["chrF"].score(chrf_stats("abc", "abd")) == pytest.approx(7 / 18)
    assert chrf_stats("a b", "ab") == chrf_stats("ab", "ab")  # whitespace is not part of any n-gram
    assert BY_KEY["chrF"].score(chrf_stats("Same text.", "Same text.")) == 1.0
    assert BY_KEY["chrF"].score(chrf_stats("abc", "xyz")) == 0.0


def test_chrf_is_scored_bootstrapped_and_tabled_with_the_others(tmp_path):
    rows = [
        {"id": str(i), "reference": r, "prediction": p, "document": r + " " + p} for i, (r, p, _) in enumerate(PAIRS)
    ]
    base = [{**r, "prediction": r["reference"][:6]} for r in rows]
    res = score_predictions(rows, ScoreSettings.defaults(), base, generated=False).results
    lo, hi = res["model"]["chrF"]["ci95"]
    assert res["model"]["chrF"]["f1"] == pytest.approx(SACREBLEU_CORPUS)
    assert lo <= res["model"]["chrF"]["f1"] <= hi and lo < hi
    d = res["model_minus_base"]["chrF"]
    assert d["diff"] == pytest.approx(res["model"]["chrF"]["f1"] - res["base"]["chrF"]["f1"])
    assert d["ci95"][0] <= d["diff"] <= d["ci95"][1]
    assert any(line.startswith("| chrF |") for line in score_table(res["model"], res["base"], res["model_minus_base"]))
    assert KEYS[-1] == "chrF"


def test_chrf_in_the_score_command(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"reference": r, "prediction": p}) + "\n" for r, p, _ in PAIRS), encoding="utf-8")
    out = tmp_path / "s.json"
    r = run_cli("score", f, "--base", f, "--output", out)
    assert r.returncode == 0, r.stderr
    assert f"chrF {100 * SACREBLEU_CORPUS:.2f} [" in r.stdout and "chrF +0.00 [+0.00, +0.00]" in r.stdout
    saved = json.loads(out.read_text(encoding="utf-8"))["results"]
    assert saved["model"]["chrF"]["f1"] == pytest.approx(SACREBLEU_CORPUS)
    assert saved["file_minus_base"]["chrF"]["diff"] == 0.0


def test_chrf_in_training_metrics_report_and_card(tiny_run):
    """The shared tiny run: chrF logged at each evaluation (the curves and every tracker read the log), in
    metrics.json, the training report and the model card."""
    assert any("eval_chrF" in h for h in tiny_run.log_history)
    metrics = json.loads((tiny_run.model_dir / "metrics.json").read_text(encoding="utf-8"))
    assert 0.0 <= metrics["final"]["chrF"] <= 1.0 and "chrF" in metrics["base"]
    assert "chrF" in metrics["final_vs_base"]["model_minus_base"]
    assert "| chrF |" in (tiny_run.output_dir / "report.md").read_text(encoding="utf-8")
    card = (tiny_run.model_dir / "README.md").read_text(encoding="utf-8")
    assert "| chrF |" in card and "type: chrF" in card


def test_chrf_in_evaluate_with_its_interval(tiny_run, tmp_path):
    from llm_summarizer.evaluation.evaluate import evaluate_model

    data = tmp_path / "test.jsonl"
    data.write_text(
        "".join(json.dumps({"document": r + " " + p, "summary": r}) + "\n" for r, p, _ in PAIRS[:4]), encoding="utf-8"
    )
    res = evaluate_model(tiny_run.model_dir, data=data, output=tmp_path / "ev", compare_base=True)
    r = res.metrics["results"]
    lo, hi = r["model"]["chrF"]["ci95"]
    assert lo <= r["model"]["chrF"]["f1"] <= hi
    assert set(r["model_minus_base"]["chrF"]) >= {"diff", "ci95"}
    assert "| chrF |" in (tmp_path / "ev" / "report.md").read_text(encoding="utf-8")
