"""llm-summarizer evaluate on the demo run's adapter: scores recomputed here, resume, bad dirs, report."""

import json
import re
import shutil
from pathlib import Path

import pytest

from ..conftest import ROOT, read_jsonl

TEST = ROOT / "data" / "demo" / "test.jsonl"
KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# The protocol as the README states it, written out independently of llm_summarizer.scoring.
_SENT = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9#])")


def rouge_here(reference: str, prediction: str) -> dict:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(KEYS), use_stemmer=True)
    lines = lambda t: "\n".join(s.strip() for p in t.strip().split("\n") for s in _SENT.split(p.strip()) if s.strip())
    s = scorer.score(lines(reference), lines(prediction))
    return {k: s[k].fmeasure for k in KEYS}


def test_metrics_equal_rouge_recomputed_from_predictions_with_base(tiny_run, tmp_path):
    import statistics

    from llm_summarizer.evaluation.evaluate import evaluate_model

    out = tmp_path / "ev"
    res = evaluate_model(tiny_run.model_dir, data=TEST, output=out, limit=12, compare_base=True)
    m = json.loads((out / "metrics.json").read_text())
    refs = {r["id"]: r["summary"] for r in read_jsonl(TEST)[:12]}
    assert res.predictions == out / "predictions.jsonl" and res.base_predictions == out / "predictions_base.jsonl"
    blocks = {"model": read_jsonl(res.predictions), "base": read_jsonl(res.base_predictions)}
    per = {}
    for name, rows in blocks.items():
        assert sorted(r["id"] for r in rows) == sorted(refs), name
        assert all(r["reference"] == refs[r["id"]] for r in rows)
        per[name] = {r["id"]: rouge_here(r["reference"], r["prediction"]) for r in rows}
        block = m["results"][name]
        for k in KEYS:
            values = [per[name][i][k] for i in refs]
            mean = sum(values) / len(values)
            assert block[k]["f1"] == pytest.approx(mean, abs=1e-9), (name, k)
            assert all(r[k] == pytest.approx(per[name][r["id"]][k], abs=1e-9) for r in rows)
            lo, hi = block[k]["ci95"]
            assert lo <= mean <= hi
            # a bootstrap interval of a mean is about +-1.96 standard errors wide
            se = statistics.pstdev(values) / len(values) ** 0.5
            assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.5, abs=1e-9), (name, k, lo, hi, se)
        assert block["hit_max_new_tokens_share"] == pytest.approx(
            sum(r["hit_max_new_tokens"] for r in rows) / len(rows)
        )
        assert block["throughput"]["examples_per_s"] > 0 and block["throughput"]["generated_tokens_per_s"] > 0
    diff = m["results"]["model_minus_base"]
    for k in KEYS:
        d = sum(per["model"][i][k] - per["base"][i][k] for i in refs) / len(refs)
        assert diff[k]["diff"] == pytest.approx(d, abs=1e-9)
        assert diff[k]["ci95"][0] <= d <= diff[k]["ci95"][1]
    # each summary against its document: in the predictions files (documents included, so `score` reads them as
    # they are) and as means with intervals, paired with the base, beside the references' own values
    from llm_summarizer.evaluation import diagnostics as D

    docs = {r["id"]: r["document"] for r in read_jsonl(TEST)[:12]}
    stats = {}
    for name, rows in blocks.items():
        for r in rows:
            assert r["document"] == docs[r["id"]]
            assert r["diagnostics"] == D.example(
                r["prediction"], r["document"], r["reference"], r["hit_max_new_tokens"], "default"
            )
        stats[name] = {r["id"]: r["diagnostics"] for r in rows}
        for k in ("coverage", "density", "novel_2gram", "unsupported_numbers", "length_ratio"):
            s = m["results"][name]["diagnostics"]["stats"][k]
            vals = [stats[name][i][k] for i in refs if stats[name][i][k] is not None]
            assert s["examples"] == len(vals) and s["mean"] == pytest.approx(sum(vals) / len(vals), abs=1e-12)
            assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]
    dd = m["results"]["diagnostics_model_minus_base"]["density"]
    both = [i for i in refs if stats["model"][i]["density"] is not None and stats["base"][i]["density"] is not None]
    assert dd["diff"] == pytest.approx(
        sum(stats["model"][i]["density"] - stats["base"][i]["density"] for i in both) / len(both), abs=1e-12
    )
    assert dd["ci95"][0] <= dd["diff"] <= dd["ci95"][1]
    ref_cov = m["results"]["references"]["diagnostics"]["stats"]["coverage"]["mean"]
    assert ref_cov == pytest.approx(D.means(D.corpus(list(refs.values()), [docs[i] for i in refs]))["coverage"])
    assert m["protocol"]["diagnostics"]["fragments"].startswith("Grusky et al. 2018")
    # the fine-tuned adapter beats its own base clearly, and the paired interval says so
    assert m["results"]["model"]["rougeL"]["f1"] > m["results"]["base"]["rougeL"]["f1"] + 0.3
    assert diff["rougeL"]["ci95"][0] > 0
    p = m["protocol"]
    assert p["use_stemmer"] is True and p["decoding"]["strategy"] == "greedy"
    assert p["tokenizer"] == tiny_run.metrics.eval_protocol["tokenizer"] == "default"  # English data
    assert p["decoding"]["max_new_tokens"] == tiny_run.metrics.eval_protocol["decoding"]["max_new_tokens"]
    assert p["bootstrap"]["resamples"] == 1000 and "summary" in p["reference"]
    # report.md and its plots, training curves included (the model came from a run)
    report = (out / "report.md").read_text()
    assert f"{100 * m['results']['model']['rougeL']['f1']:.2f}" in report
    for png in ("training_curves.png", "rouge_base_vs_finetuned.png", "summary_lengths.png", "coverage_density.png"):
        assert f"](plots/{png})" in report
        assert_png(out / "plots" / png)
    assert "## Beyond ROUGE: each summary against its document" in report and "| change [95% CI] |" in report
    # a rerun finds every prediction written: nothing generated, identical numbers (seeded bootstrap)
    again = evaluate_model(tiny_run.model_dir, data=TEST, output=out, limit=12, compare_base=True, report=False)
    assert (
        again.metrics["generation"]["model"]["generated"] == 0 and again.metrics["generation"]["base"]["generated"] == 0
    )
    assert again.metrics["results"] == m["results"]


def assert_png(p: Path) -> None:
    from PIL import Image

    with Image.open(p) as im:
        assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 300, (p, im.size)
        assert len(im.getcolors(1 << 20) or []) > 20, f"{p} looks blank"


def test_interrupted_evaluation_resumes_without_regenerating(tiny_run, tmp_path, monkeypatch, capsys):
    from llm_summarizer.commands.evaluate import main
    from llm_summarizer.evaluation import evaluate as ev
    from llm_summarizer.evaluation.evaluate import evaluate_model

    real = ev.summarize_texts
    calls: list[list[str]] = []
    stop_after = {"n": 8}

    def counting(loaded, texts, *a, on_done=None, **k):
        calls.append(list(texts))
        finished = []

        def done(i, g):
            if len(finished) == stop_after["n"]:
                raise KeyboardInterrupt  # the process is killed after eight summaries were written
            on_done(i, g)
            finished.append(i)

        return real(loaded, texts, *a, on_done=done, **k)

    monkeypatch.setattr(ev, "summarize_texts", counting)
    out = tmp_path / "ev"
    args = dict(data=TEST, output=out, limit=12, overrides=["eval.batch_size=4"], report=False)
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(tiny_run.model_dir, **args)
    first = (out / "predictions.jsonl").read_text()
    done = read_jsonl(out / "predictions.jsonl")
    assert len(done) == 8 and not (out / "metrics.json").exists()
    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"id": "test-0001", "refer')  # killed in the middle of writing a line
    calls.clear()
    stop_after["n"] = -1
    res = evaluate_model(tiny_run.model_dir, **args)
    regenerated = [t for c in calls for t in c]  # the documents handed to generation: only the 4 not written
    docs_done = {r["document"] for r in read_jsonl(TEST) if r["id"] in {d["id"] for d in done}}
    assert len(regenerated) == 4 and not docs_done & set(regenerated)
    final = (out / "predictions.jsonl").read_text()
    assert final.startswith(first), "finished predictions must be kept as they were"
    ids = [r["id"] for r in read_jsonl(out / "predictions.jsonl")]
    assert len(ids) == len(set(ids)) == 12
    assert res.metrics["generation"]["model"]["reused"] == 8 and res.metrics["generation"]["model"]["generated"] == 4
    # the same model copied elsewhere (new path, new modification times) is still the same evaluation
    copy = tmp_path / "copied_model"
    shutil.copytree(tiny_run.model_dir, copy, copy_function=shutil.copyfile)
    calls.clear()
    res = evaluate_model(copy, **args)
    assert calls == [] and res.metrics["generation"]["model"]["reused"] == 12
    # other decoding settings never get mixed into the same predictions file
    capsys.readouterr()
    rc = main(
        [
            "--model",
            str(tiny_run.model_dir),
            "--data",
            str(TEST),
            "--output",
            str(out),
            "--limit",
            "12",
            "--no-report",
            "eval.max_new_tokens=5",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "holds predictions of a different evaluation" in err and "decoding" in err
    assert (out / "predictions.jsonl").read_text() == final


def test_predictions_are_reused_only_while_they_still_match(tiny_run, tmp_path, capsys, caplog):
    """A rerun reuses earlier predictions only when the model's weights, the data rows' content, the prompt and the
    generation settings are those they were made with; a damaged record reuses nothing (said in one line, the old
    file kept); a hand-edited predictions file is checked row by row; repeated ids get names that cannot collide."""
    from llm_summarizer.commands.evaluate import main

    rows = read_jsonl(TEST)[:6]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ev"
    args = ["--model", str(tiny_run.model_dir), "--data", str(data), "--output", str(out), "--no-report"]
    assert main(args) == 0
    first = (out / "predictions.jsonl").read_text()
    # 1. the data edited in place (same path, every reference replaced): refused, nothing touched
    data.write_text("".join(json.dumps({**r, "summary": "Something else entirely."}) + "\n" for r in rows))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds predictions of a different evaluation (differs in: data_rows)" in err and "Traceback" not in err
    assert (out / "predictions.jsonl").read_text() == first
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # 2. the record cut off, then another budget: nothing reused, the old predictions kept aside
    (out / "eval_settings.json").write_text((out / "eval_settings.json").read_text()[:40])
    caplog.clear()
    with caplog.at_level("WARNING", logger="llm_summarizer"):
        assert main(args + ["eval.max_new_tokens=5"]) == 0
    said = [m for m in caplog.messages if "cannot be matched" in m]
    assert len(said) == 1 and "none is reused; kept as predictions.unverified-1.jsonl" in said[0]
    assert (out / "predictions.unverified-1.jsonl").read_text() == first
    m = json.loads((out / "metrics.json").read_text())
    assert m["generation"]["model"] == {**m["generation"]["model"], "reused": 0, "generated": 6}
    assert m["protocol"]["decoding"]["max_new_tokens"] == 5
    assert all(r["new_tokens"] <= 5 for r in read_jsonl(out / "predictions.jsonl"))
    # 3. a hand-edited row: one message naming the line and the key
    edited = read_jsonl(out / "predictions.jsonl")
    for key, value, says in (
        ("prediction", None, "key prediction is null; expected a string"),
        ("prediction", 7, "key prediction is 7; expected a string"),
        ("reference", None, "key reference is null; expected a string"),
        ("gen_seconds", "slow", 'key gen_seconds is "slow"; expected a number'),
    ):
        bad = [dict(r) for r in edited]
        bad[2][key] = value
        (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
        capsys.readouterr()
        assert main(args + ["eval.max_new_tokens=5"]) == 2
        err = capsys.readouterr().err
        assert f"predictions.jsonl, line 3: {says}" in err and "Traceback" not in err, err
    # 4. repeated ids: unique, stable names that no row of the data uses
    dup = tmp_path / "dup.jsonl"
    dup.write_text("".join(json.dumps({**r, "id": i}) + "\n" for r, i in zip(rows, ["a", "a", "a#2", "b", "b", "a"])))
    out2 = tmp_path / "ev2"
    assert main(["--model", str(tiny_run.model_dir), "--data", str(dup), "--output", str(out2), "--no-report"]) == 0
    assert [r["id"] for r in read_jsonl(out2 / "predictions.jsonl")] != []
    got = sorted(r["id"] for r in read_jsonl(out2 / "predictions.jsonl"))
    assert got == sorted(["a", "a#3", "a#2", "b", "b#2", "a#4"])


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_bad_model_directories_are_one_clear_message(tiny_run, tmp_path, capsys):
    from llm_summarizer.commands.evaluate import main

    def run(model, *extra):
        capsys.readouterr()
        rc = main(["--model", str(model), "--data", str(TEST), "--output", str(tmp_path / "out"), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, err
        return err

    assert "directory not found" in run(tmp_path / "nope")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(tiny_run.model_dir / "adapter_config.json", no_weights)
    assert "no adapter weights" in run(no_weights)
    moved = tmp_path / "moved_base"
    shutil.copytree(tiny_run.model_dir, moved)
    ac = json.loads((moved / "adapter_config.json").read_text())
    ac["base_model_name_or_path"] = str(tmp_path / "gone" / "base")
    (moved / "adapter_config.json").write_text(json.dumps(ac))
    before = _tree(moved)
    err = run(moved)
    assert "base model" in err and "not found" in err and "--base" in err
    # --base points the adapter at its base; the user's directory is not modified
    real_base = json.loads((tiny_run.model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    rc = main(
        [
            "--model",
            str(moved),
            "--base",
            real_base,
            "--data",
            str(TEST),
            "--output",
            str(tmp_path / "ok"),
            "--limit",
            "2",
            "--no-report",
        ]
    )
    assert rc == 0 and len(read_jsonl(tmp_path / "ok" / "predictions.jsonl")) == 2
    assert _tree(moved) == before
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    (bert / "model.safetensors").write_bytes(b"")
    assert "not a causal language model" in run(bert)
    no_full = tmp_path / "merged_no_weights"
    no_full.mkdir()
    (no_full / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert "no weights" in run(no_full)
    assert "data file not found" in run(tiny_run.model_dir, "--data", str(tmp_path / "missing.jsonl"))
    assert not (tmp_path / "out").exists()


def test_tiny_run_leaves_report_and_plots(tiny_run):
    out = tiny_run.output_dir
    report = (out / "report.md").read_text()
    final, base = tiny_run.metrics.final, tiny_run.metrics.base
    assert f"| ROUGE-L | {100 * base['rougeL']:.2f} | {100 * final['rougeL']:.2f} |" in report
    refs = tiny_run.metrics.references
    assert (
        f"| {100 * refs['coverage']:.1f}% | {100 * base['coverage']:.1f}% | {100 * final['coverage']:.1f}% |" in report
    )
    assert len(read_jsonl(out / "eval_predictions" / "references.jsonl")) == tiny_run.metrics.final["summary_examples"]
    for png in ("training_curves.png", "rouge_base_vs_finetuned.png", "summary_lengths.png", "coverage_density.png"):
        assert f"](plots/{png})" in report
        assert_png(out / "plots" / png)
