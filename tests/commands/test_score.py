"""llm-summarizer score: any predictions file, the evaluation's protocol, paired differences, clear errors."""

import csv
import json
import re

import pytest

from tests.conftest import run_cli


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


REFS = [
    "the cat sat on the mat",
    "a storm closed the harbour for two days",
    "prices rose three percent in may",
    "the team won the final after extra time",
]


def test_score_a_file_and_pair_it_with_a_base(tmp_path):
    good = _jsonl(tmp_path / "ours.jsonl", [{"id": i, "reference": r, "prediction": r} for i, r in enumerate(REFS)])
    # the base's rows in another order: matched by id, not position
    weak = [{"id": i, "reference": r, "prediction": r.split()[0]} for i, r in enumerate(REFS)][::-1]
    base = _jsonl(tmp_path / "base.jsonl", weak)
    out = tmp_path / "scores.json"
    r = run_cli("score", good, "--base", base, "--output", out, "--bootstrap-samples", "200")
    assert r.returncode == 0, r.stderr
    assert "4 examples" in r.stdout and "tokenizer default" in r.stdout
    m = json.loads(out.read_text())
    assert m["results"]["model"]["rougeL"]["f1"] == 1.0
    assert m["results"]["base"]["rouge1"]["f1"] < 0.4
    d = m["results"]["file_minus_base"]["rouge1"]
    assert d["diff"] > 0.5 and d["ci95"][0] > 0
    assert m["protocol"]["tokenizer"] == "default" and m["protocol"]["bootstrap"]["resamples"] == 200


def test_score_csv_with_named_columns_in_russian(tmp_path):
    p = tmp_path / "preds.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["gold", "summary"])
        w.writerow(["Компания снизила цены", "Компания снизила цены"])
        w.writerow(["Шторм закрыл порт", "Шторм закрыл порт"])
    out = tmp_path / "s.json"
    r = run_cli("score", p, "--reference-column", "gold", "--prediction-column", "summary", "--output", out)
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    assert m["protocol"]["tokenizer"] == "unicode" and m["results"]["model"]["rouge1"]["f1"] == 1.0
    # forcing rouge-score's ASCII tokenizer scores the same identical summaries 0, with a warning
    r = run_cli("score", p, "--reference-column", "gold", "--prediction-column", "summary", "--tokenizer", "default")
    assert r.returncode == 0 and "rouge1 0.00" in r.stdout
    assert "2 of 2 references have no ROUGE token under the default tokenizer" in r.stderr


def test_bad_predictions_files_are_one_message_exit_2(tmp_path):
    p = _jsonl(tmp_path / "p.jsonl", [{"reference": "a b", "prediction": "a"}, {"reference": "c d", "pred": "c"}])
    r = run_cli("score", p)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "p.jsonl row 2: no column 'prediction'" in r.stderr and "--prediction-column" in r.stderr
    r = run_cli("score", tmp_path / "missing.jsonl")
    assert r.returncode == 2 and "missing.jsonl: no such file" in r.stderr
    ok = _jsonl(tmp_path / "ok.jsonl", [{"reference": "a b", "prediction": "a"}])
    other = _jsonl(tmp_path / "other.jsonl", [{"reference": "x y", "prediction": "x"}])
    r = run_cli("score", ok, "--base", other)
    assert r.returncode == 2 and "the reference of row 1" in r.stderr
    empty = _jsonl(tmp_path / "e.jsonl", [{"reference": " ", "prediction": "a"}])
    r = run_cli("score", empty)
    assert r.returncode == 2 and "e.jsonl row 1: the reference ('reference') is empty" in r.stderr


def test_repeated_ids_on_either_side_are_refused_naming_them(tmp_path, capsys):
    """ids a, a, b against a, b, c paired base a twice and dropped c, silently: now one message, either side."""
    from llm_summarizer.commands.score import main

    rows = lambda ids: [{"id": i, "reference": REFS[k], "prediction": REFS[k]} for k, i in enumerate(ids)]
    dup, ok = _jsonl(tmp_path / "dup.jsonl", rows("aab")), _jsonl(tmp_path / "ok.jsonl", rows("abc"))
    for args, says in (
        ([dup, "--base", ok], "dup.jsonl row 2: id 'a' is already row 1's"),
        ([ok, "--base", dup], "--base " + str(dup) + " row 2: id 'a' is already row 1's"),
        ([dup], "dup.jsonl row 2: id 'a' is already row 1's"),
    ):
        capsys.readouterr()
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err


def test_score_measures_each_summary_against_its_document(tmp_path, capsys):
    from llm_summarizer.commands.score import main
    from llm_summarizer.evaluation import diagnostics as D

    docs = [
        "all day long the cat sat on the mat near the door",
        "in May a storm closed the harbour for two days",
        "after a long winter prices rose three percent in may",
        "on sunday the team won the final after extra time",
    ]
    copies = _jsonl(
        tmp_path / "copies.jsonl",
        [{"id": i, "document": d, "reference": r, "prediction": d} for i, (d, r) in enumerate(zip(docs, REFS))],
    )
    # the base file has no documents: measured against the file's own, matched by id
    base = _jsonl(tmp_path / "base.jsonl", [{"id": i, "reference": r, "prediction": r} for i, r in enumerate(REFS)])
    out = tmp_path / "s.json"
    assert main([str(copies), "--base", str(base), "--output", str(out), "--bootstrap-samples", "200"]) == 0
    printed = capsys.readouterr().out
    m = json.loads(out.read_text())["results"]
    stats = m["model"]["diagnostics"]["stats"]
    # a prediction that is its whole document: every word copied in one fragment as long as the document
    assert stats["coverage"]["mean"] == 1.0 and stats["lead_copy"]["mean"] == 1.0
    assert stats["density"]["mean"] == pytest.approx(sum(len(d.split()) for d in docs) / 4)
    assert m["references"]["diagnostics"]["stats"]["coverage"]["mean"] == pytest.approx(
        D.means(D.corpus(REFS, docs))["coverage"]
    )
    assert (
        m["base"]["diagnostics"]["stats"]["coverage"]["mean"]
        == m["references"]["diagnostics"]["stats"]["coverage"]["mean"]
    )  # the base's predictions are the references
    assert m["diagnostics_file_minus_base"]["density"]["diff"] > 0
    assert "each summary against its document" in printed and "file - base" in printed
    assert re.search(r"lead copy +0\.0% +100\.0% +0\.0% +\+100\.00 pts", printed), printed
    # without documents: ROUGE as before, and one line saying what is left out
    assert main([str(base)]) == 0
    printed = capsys.readouterr().out
    assert "no document column" in printed and "coverage" not in printed
    assert main([str(base), "--document-column", "text"]) == 2
    assert "base.jsonl row 1: no column 'text'" in capsys.readouterr().err
