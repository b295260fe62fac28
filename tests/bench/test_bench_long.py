"""scripts/bench_long.py (chunk vs truncate on QMSum; continuous vs static vs plain generate), as a smoke run on the
tiny model: every part runs, the rows render, and the texts of the three batchings agree."""

import importlib.util
import json

import pytest

from ..conftest import ROOT, SHARED_DATA, shared_dataset


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_long", ROOT / "scripts" / "bench_long.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_missing_data_is_one_message_and_nothing_measured(tmp_path, capsys):
    assert bench_module().main(["--data-root", str(tmp_path), "--markdown", ""]) == 2
    assert "is not on this machine" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_on_the_tiny_model(tiny_run, tmp_path):
    shared_dataset("qmsum"), shared_dataset("dialogsum")
    bench = bench_module()
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(
        f"# B\n\n## Long documents\n\n{bench.START}\n{bench.END}\n\n## Floors\n\n"
        "<!-- floors rows: llm-summarizer bench --floors appends below -->\n"
    )
    rc = bench.main(
        [
            "--model",
            str(tiny_run.model_dir),
            "--data-root",
            str(SHARED_DATA),
            "--work",
            str(tmp_path / "w"),
            "--meetings",
            "2",
            "--batching-meetings",
            "1",
            "--rouge-rows",
            "6",
            "--evaluate-rows",
            "6",
            "--bootstrap",
            "100",
            "--busy",
            "1",
            "--markdown",
            str(md),
            "eval.max_new_tokens=6",
            "eval.chunk_tokens=200",
            "eval.max_chunks=2000",
            "model.max_seq_length=256",
        ]
    )
    assert rc == 0
    r = json.loads((tmp_path / "w" / "long.json").read_text())
    q = r["quality"]
    assert set(q["methods"]) == {"head", "head_tail", "chunk"} and len(q["meetings"]) == 2
    chunk, head = q["methods"]["chunk"], q["methods"]["head"]
    assert min(chunk["windows"]) > 10 and chunk["generations"] > head["generations"] == 2
    assert set(q["chunk_minus_head"]) >= {"rouge1", "rouge2", "rougeL"}
    b = r["batching"]
    g = b["rouge_pass"]
    assert g["same_texts_continuous"] == g["same_texts_static"] == g["examples"] == 6
    c = b["chunked"]
    assert c["same_trees_continuous"] == c["same_trees_static"] == 1 and c["generations"] > 10
    assert b["evaluate"]["same_texts"] == 6
    text = md.read_text()
    assert text.count("| chunk (map_reduce, 200-token windows) |") == 1 and "| truncate (head_tail) |" in text
    assert chunk["planned_generations"] >= chunk["generations"] and chunk["diagnostics"]["density"] is not None
    assert "generation, continuous batching (the ROUGE pass" in text and "chunked summarization (1 QMSum" in text
    assert "evaluate (6 DialogSum test rows" in text
    # the batching part ran beside a spinning process, and its rows say so with the threads each side used
    assert b["busy"] == 1 and b["threads"]["ours"] <= b["threads"]["torch"]
    assert text.count("busy: 1 process(es) spinning beside; ours on ") == 3
