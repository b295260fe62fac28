"""llm-summarizer summarize with the demo run's adapter: a file, stdin, a JSONL column, a directory."""

import io
import json
import logging

import pytest

from ..conftest import ROOT, read_jsonl
from ..evaluation.test_evaluate import rouge_here

TEST = ROOT / "data" / "demo" / "test.jsonl"


@pytest.fixture
def logs():
    """Everything llm_summarizer logs during the test (its logger does not propagate to the root)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("llm_summarizer")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


def summarize_main(*args) -> int:
    from llm_summarizer.commands.summarize import main

    return main([str(a) for a in args])


def test_file_stdin_and_jsonl_column_give_the_same_summaries(tiny_run, tmp_path, capsys, monkeypatch):
    rows = read_jsonl(TEST)[:6]
    doc = tmp_path / "article.txt"
    doc.write_text(rows[0]["document"])
    capsys.readouterr()
    assert summarize_main("--model", tiny_run.model_dir, doc) == 0
    from_file = capsys.readouterr().out.strip()
    assert from_file and "\n" not in from_file

    monkeypatch.setattr("sys.stdin", io.StringIO(rows[0]["document"]))
    assert summarize_main("--model", tiny_run.model_dir) == 0
    assert capsys.readouterr().out.strip() == from_file

    table = tmp_path / "news.jsonl"
    table.write_text("".join(json.dumps({"uid": r["id"], "text": r["document"]}) + "\n" for r in rows))
    out = tmp_path / "summaries.jsonl"
    assert summarize_main("--model", tiny_run.model_dir, table, "--column", "text", "--output", out) == 0
    got = read_jsonl(out)
    assert [g["id"] for g in got] == [r["id"] for r in rows]
    assert got[0]["summary"] == from_file
    # they are real summaries of these documents, not just text: close to the references
    mean_l = sum(rouge_here(r["summary"], g["summary"])["rougeL"] for r, g in zip(rows, got)) / len(rows)
    assert mean_l > 0.5, [g["summary"] for g in got]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary output left"


def test_directory_and_long_input_says_it_was_truncated(tiny_run, tmp_path, capsys, logs):
    doc = read_jsonl(TEST)[1]["document"]
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.txt").write_text(doc)
    (d / "b.md").write_text(" ".join([doc] * 15))
    (d / "ignored.bin").write_bytes(b"\x00\x01")
    capsys.readouterr()
    assert summarize_main("--model", tiny_run.model_dir, d, "eval.long_documents=truncate") == 0
    out = capsys.readouterr().out
    blocks = [b for b in out.split("== ") if b.strip()]
    assert [b.splitlines()[0] for b in blocks] == [str(d / "a.txt"), str(d / "b.md")]
    assert all(len(b.strip().splitlines()) == 2 for b in blocks), out
    text = logs.getvalue()
    assert "b.md" in text and "tokens, cut to" in text and "data.truncation=head" in text
    assert "a.txt:" not in text  # only the long one is reported


WINDOW = "eval.max_window_tokens=256"  # the tiny model's training length (its config reads 8k)


def test_a_long_document_is_chunked_with_its_tree_in_the_json_output(tiny_run, tmp_path, capsys, logs):
    rows = read_jsonl(TEST)[:14]
    meeting = tmp_path / "meeting.txt"
    meeting.write_text("\n".join(r["document"] for r in rows))  # far over the tiny model's 256-token window
    short = tmp_path / "short.txt"
    short.write_text(rows[0]["document"])
    out = tmp_path / "s.jsonl"
    assert summarize_main("--model", tiny_run.model_dir, meeting, short, "--output", out, WINDOW) == 0
    long_row, short_row = read_jsonl(out)
    assert long_row["method"] == "chunked" and long_row["summary"] and not long_row["truncated_input"]
    tree = long_row["chunks"]
    text = meeting.read_text()
    first = tree["rounds"][0]
    assert len(first) == tree["windows"] >= 3 and first[0]["span"][0] == 0 and first[-1]["span"][1] == len(text)
    assert long_row["summary"] == tree["rounds"][-1][0]["summary"] and tree["how"] in logs.getvalue()
    # the cost said before it started, and what it took after
    said = logs.getvalue()
    assert f"{tree['windows']} windows of at most {tree['window_tokens']} tokens (map_reduce), at most" in said
    assert f"summarize: {tree['generations'] + 1} generations in" in said  # the windows, the merges, the short one
    assert short_row["method"] == "whole" and "chunks" not in short_row
    # the same document summarized alone, and cut instead of chunked
    assert summarize_main("--model", tiny_run.model_dir, meeting, "--format", "jsonl", WINDOW) == 0
    assert json.loads(capsys.readouterr().out)["summary"] == long_row["summary"]  # deterministic
    assert (
        summarize_main("--model", tiny_run.model_dir, meeting, "--format", "jsonl", "eval.long_documents=truncate") == 0
    )
    cut = json.loads(capsys.readouterr().out)
    assert cut["method"] == "truncated" and cut["truncated_input"] and "chunks" not in cut


def test_long_document_refusals_come_before_any_output(tiny_run, tmp_path, capsys):
    ok = tmp_path / "a.txt"
    ok.write_text(read_jsonl(TEST)[0]["document"])
    big = tmp_path / "b.txt"
    big.write_text(("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20000)[: 1 << 20])  # 1 MiB
    out = tmp_path / "out.jsonl"
    capsys.readouterr()
    assert summarize_main("--model", tiny_run.model_dir, ok, big, "--output", out, WINDOW) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    assert f"{big}: " in captured.err and "windows of at most" in captured.err and "eval.max_chunks=256" in captured.err
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))  # nothing written, no temporary file
    assert (
        summarize_main("--model", tiny_run.model_dir, ok, "model.max_seq_length=40", "eval.max_window_tokens=64") == 2
    )
    err = capsys.readouterr().err
    assert "leaves no room for a document: the prompt takes" in err and "eval.max_window_tokens" in err


def test_input_errors_are_one_message(tiny_run, tmp_path, capsys, monkeypatch):
    def err_of(*args):
        capsys.readouterr()
        rc = summarize_main("--model", tiny_run.model_dir, *args)
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, err
        return err

    monkeypatch.setattr("sys.stdin", io.StringIO("   \n"))
    assert "no text on standard input" in err_of()
    assert "file or directory not found" in err_of(tmp_path / "missing.txt")
    table = tmp_path / "t.jsonl"
    table.write_text(json.dumps({"body": "some text", "id": 1}) + "\n")
    err = err_of(table)
    assert "no document column found" in err and "body" in err and "--column" in err


def test_a_hub_id_as_model_comes_from_the_hub_cache_or_says_how_to_get_it(tiny_run, tmp_path, capsys, monkeypatch):
    import shutil

    doc = tmp_path / "article.txt"
    doc.write_text(read_jsonl(TEST)[0]["document"])
    capsys.readouterr()
    assert summarize_main("--model", tiny_run.model_dir, doc) == 0
    local = capsys.readouterr().out.strip()
    # the hub's cache layout, as `hf download you/summarizer` leaves it; the hub itself is out of reach
    cache = tmp_path / "hub-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--you--summarizer"
    shutil.copytree(tiny_run.model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    assert summarize_main("--model", "you/summarizer", doc) == 0
    assert capsys.readouterr().out.strip() == local
    # a hub id that is nowhere: one message naming it and the download command, exit 2
    assert summarize_main("--model", "you/not-there", doc) == 2
    err = capsys.readouterr().err
    assert "--model you/not-there: not a local folder" in err and "hf download you/not-there" in err


def test_length_sorted_batches_give_the_texts_of_dataset_order_batches(tiny_run):
    """Generation groups prompts by length (less padding) and returns the summaries in the documents' order:
    the same texts as batching in the given order, for documents of very different lengths."""
    from llm_summarizer.models.generation import GenerationRequest, generate
    from llm_summarizer.models.loading import load_for_generation

    loaded = load_for_generation(tiny_run.model_dir)
    rows = read_jsonl(TEST)[:12]
    docs = [r["document"] if i % 3 else r["document"][:80] for i, r in enumerate(rows)]  # short and long mixed
    args = (loaded.formatter, docs, loaded.cfg.eval, 24, loaded.backend)
    by_length = generate(loaded.model, loaded.tokenizer, GenerationRequest(*args, batch_size=4, sort_by_length=True))
    in_order = generate(loaded.model, loaded.tokenizer, GenerationRequest(*args, batch_size=4, sort_by_length=False))
    one_by_one = generate(loaded.model, loaded.tokenizer, GenerationRequest(*args, batch_size=1))
    assert [g.text for g in by_length] == [g.text for g in in_order] == [g.text for g in one_by_one]
    assert len({g.text for g in by_length}) > 1  # not one text for every document


def test_long_documents_log_progress_and_time_left_where_no_bar_is_shown(monkeypatch, caplog):
    """In a log (no bar): a line at most every 30 s with the generations so far of those planned, seconds each and
    the time left at that rate, counted on across groups of documents (the clock is described, not this one's)."""
    import logging

    from llm_summarizer.commands import summarize
    from llm_summarizer.progress import bar

    monkeypatch.setenv("LLM_SUMMARIZER_PROGRESS", "off")
    now = [100.0]
    progress = summarize._Progress(bar, planned=40, exact=False, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="llm_summarizer.summarize"):
        progress.group()
        for done in range(1, 11):  # 10 generations, 2 s each
            now[0] += 2
            progress(done, 12)
        progress.group()  # the next group of documents counts on
        for done in range(1, 11):
            now[0] += 2
            progress(done, 14)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["summarize: 15 of at most 40 generations in 30 s (2.0 s each): at most about 50 s left"]
    # refine's count is exact; with a bar shown (or nothing chunked) no line is logged
    caplog.clear()
    progress = summarize._Progress(bar, planned=100, exact=True, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="llm_summarizer.summarize"):
        now[0] += 120
        progress(10, 10)
    assert caplog.records[0].getMessage().endswith("(12.0 s each): about 18 min left")
    monkeypatch.setenv("LLM_SUMMARIZER_PROGRESS", "on")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="llm_summarizer.summarize"):
        shown = summarize._Progress(bar, planned=100, exact=True, clock=lambda: now[0])
        now[0] += 120
        shown(10, 10)
        shown.close()
        silent = summarize._Progress(bar, planned=None, clock=lambda: now[0])
        now[0] += 120
        silent(1, 1)
    assert not caplog.records
