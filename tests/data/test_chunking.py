"""Cutting long documents into windows (data/chunking.py) and the length report (data/lengths.py)."""

import json
import re
import time

import pytest

from llm_summarizer.config_loading import load_config
from llm_summarizer.data import rows as R
from llm_summarizer.data.chunking import split_windows, token_starts
from llm_summarizer.data.lengths import length_lines, length_report, prepared_report
from llm_summarizer.data.prompt import Formatter

from ..conftest import DEMO, shared_dataset


def words(text: str) -> list[int]:
    """A tokenizer for the rules: one token per word, its leading spaces and line breaks included."""
    return [m.start() for m in re.finditer(r"\s*\S+", text)]


def covered(text, windows):
    assert windows[0].start == 0 and windows[-1].end == len(text)
    for a, b in zip(windows, windows[1:]):
        assert b.start <= a.end and b.start > a.start, (a, b)  # no gap, always moving on


@pytest.fixture(scope="module")
def tokenizer(models_dir):
    from llm_summarizer.models.loading import load_tokenizer

    cfg = load_config("tiny", [f"model.cache_dir={models_dir}"])
    return load_tokenizer(cfg, R.load_raw_splits(cfg))


def test_windows_end_at_turns_fit_the_budget_and_overlap_by_whole_turns():
    turns = [f"Speaker {i % 3}: this is turn {i} . It has two sentences ." for i in range(60)]
    text = "\n".join(turns)
    starts = words(text)
    windows = split_windows(text, starts, budget=50, overlap=12)
    covered(text, windows)
    assert 1 < len(windows) < 1 + len(starts) // 25
    for w in windows:
        assert w.tokens <= 50 and w.tokens == sum(1 for s in starts if w.start <= s < w.end)
    for w in windows[:-1]:
        assert "\n" in text[w.end - 1 : w.end + 1]  # a window ends with a whole turn (the line break on either side)
    for a, b in zip(windows, windows[1:]):
        repeated = sum(1 for s in starts if b.start <= s < a.end)
        assert 0 < repeated <= 12
        assert text[b.start] in "\n " or text[b.start - 1] == "\n"  # it starts again at a turn or a sentence


def test_no_lines_then_sentences_then_words_then_tokens():
    prose = " ".join(f"Sentence number {i} has exactly seven words." for i in range(40))
    w = split_windows(prose, words(prose), 30, 0)
    covered(prose, w)
    assert all(prose[x.end - 1] == "." for x in w[:-1])  # ends at a sentence end
    assert all(x.end == y.start for x, y in zip(w, w[1:]))  # no overlap asked: none
    one_sentence = " ".join(f"word{i}" for i in range(500))  # one giant sentence: cut between words
    w = split_windows(one_sentence, words(one_sentence), 64, 8)
    covered(one_sentence, w)
    assert all(one_sentence[x.end] == " " for x in w[:-1]) and max(x.tokens for x in w) <= 64
    blob = "x" * 4000  # no boundary at all (a base64 blob): cut after the budget's last token
    starts = list(range(0, 4000, 5))
    w = split_windows(blob, starts, 100, 10)
    covered(blob, w)
    assert [x.tokens for x in w] == [100] * 8 and "".join(blob[x.start : x.end] for x in w) == blob


def test_an_early_boundary_does_not_make_a_run_of_tiny_windows():
    text = "Short. " + "y" * 3000  # one sentence end, then nothing
    w = split_windows(text, list(range(0, len(text), 3)), 100, 30)
    covered(text, w)
    assert all(x.tokens >= 50 for x in w[:-1]) and len(w) <= 2 + len(text) // 3 // 75


def test_a_budget_below_one_token_is_refused():
    with pytest.raises(ValueError, match="at least one token"):
        split_windows("some text", words("some text"), 0)


def test_real_tokenizer_windows_reencode_to_their_count_and_fit(tokenizer):
    rows = [json.loads(line) for line in (DEMO / "validation.jsonl").read_text().splitlines()[:30]]
    text = "\n".join(r["document"] for r in rows)
    starts = token_starts(tokenizer, text)
    assert len(starts) == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    windows = split_windows(text, starts, 120, 20)
    covered(text, windows)
    for w in windows:
        assert len(tokenizer(text[w.start : w.end], add_special_tokens=False)["input_ids"]) <= 120


def test_a_one_mib_document_is_cut_in_seconds(tokenizer):
    text = ("lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20000)[: 1 << 20]
    t0 = time.perf_counter()
    windows = split_windows(text, token_starts(tokenizer, text), 300, 32)
    assert time.perf_counter() - t0 < 60
    covered(text, windows)
    assert max(w.tokens for w in windows) <= 300


def test_length_report_percentiles_policies_and_the_length_that_fits_95(tokenizer):
    cfg = load_config("tiny", ["model.max_seq_length=96"])
    f = Formatter(tokenizer, cfg.data, 96)
    rows = [json.loads(line) for line in (DEMO / "train.jsonl").read_text().splitlines()[:200]]
    rows[0] = {**rows[0], "document": " ".join([rows[0]["document"]] * 20)}  # one far over the budget
    r = length_report(f, rows, max_new_tokens=40, chunk_overlap=8)
    docs = sorted(len(tokenizer(x["document"], add_special_tokens=False)["input_ids"]) for x in rows)
    assert r["document_tokens"]["max"] == docs[-1] and r["document_tokens"]["p50"] == docs[100]
    rooms = [f.doc_budget(len(f.completion_ids(x["summary"]))) for x in rows]
    lens = [len(tokenizer(x["document"], add_special_tokens=False)["input_ids"]) for x in rows]
    over = [(d, room) for d, room in zip(lens, rooms) if d > room]
    assert r["over_budget"]["rows"] == len(over) > 0
    assert r["over_budget"]["tokens_lost"] == sum(d - room for d, room in over)
    whole = sorted(f.template_tokens + d + len(f.completion_ids(x["summary"])) for d, x in zip(lens, rows))
    assert r["fit_95"] == whole[190]  # the 95th percentile of 200: rank int(200 * 0.95), stats.percentile's rule
    assert sum(1 for t in whole if t <= r["fit_95"]) >= 190
    g = r["generation"]
    assert g["document_budget"] == 96 - f.template_tokens - 40 and g["chunk_windows"]["max"] >= 10
    # windows as long as the model reads (summarize's window): fewer of them, said with their size
    wide = length_report(
        f, rows, max_new_tokens=40, chunk_overlap=8, window_formatter=Formatter(tokenizer, cfg.data, 512)
    )
    assert wide["generation"]["window_tokens"] == 512 - f.template_tokens - 40
    assert wide["generation"]["chunk_windows"]["max"] < g["chunk_windows"]["max"]
    assert f"windows of {512 - f.template_tokens - 40} document tokens" in "\n".join(length_lines("train", wide))
    text = "\n".join(length_lines("train", r))
    assert f"model.max_seq_length={r['fit_95']} would fit 95%" in text and "data.truncation=head_tail" in text
    # what training logs, from its tokenized split, says the same
    from llm_summarizer.data.tokenize import prepare

    raw = {"train": R.RawSplit("train", "test", [{**x, "id": str(i)} for i, x in enumerate(rows)])}
    prepared = prepare(cfg, tokenizer, raw)
    quick = prepared_report(prepared.formatter, prepared.splits["train"], prepared.stats["train"])
    for k in ("document_tokens", "summary_tokens", "over_budget", "fit_95"):
        assert quick[k] == r[k], k


def test_data_command_prints_the_length_report(tmp_path, models_dir, capsys):
    from llm_summarizer.commands.data import main

    rc = main(
        [
            "--config",
            "tiny",
            f"model.cache_dir={models_dir}",
            "model.max_seq_length=128",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "== train: token lengths against the budget (model.max_seq_length 128" in out
    assert "would fit 95% of the examples whole" in out and "at generation (max_new_tokens" in out
    stats = json.loads((tmp_path / "out" / "data_stats.json").read_text())
    assert set(stats["lengths"]) == {"train", "validation", "test"}
    assert stats["lengths"]["train"]["max_seq_length"] == 128


def test_qmsum_meetings_need_many_windows_at_the_demo_budget(tokenizer):
    data = shared_dataset("qmsum")
    row = json.loads((data / "test.jsonl").read_text().splitlines()[0])
    starts = token_starts(tokenizer, row["document"])
    windows = split_windows(row["document"], starts, 300, 32)
    covered(row["document"], windows)
    doc = row["document"]
    assert len(windows) > 10 and all(doc[w.end] in " \n" or doc[w.end - 1] == "\n" for w in windows[:-1])  # no word cut
    at_turns = sum("\n" in doc[w.end - 1 : w.end + 1] for w in windows[:-1])
    assert at_turns >= 2 * len(windows) // 3  # mostly whole turns; a long turn is cut at a sentence end
