"""data/readers.py, called directly: every format gives the same rows, columns are found (or named) as the user
expects, and each bad file is one DataError naming the file, the line and what to do."""

from __future__ import annotations

import csv
import json
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_summarizer.config import DataSection, SourceSpec
from llm_summarizer.data import readers
from llm_summarizer.data.readers import COLUMN_PAIRS, pick_columns, read_bounded, read_file, read_source
from llm_summarizer.errors import DataError, UserError

ROWS = [
    {"id": "a1", "document": "First document, with a comma.", "summary": "First."},
    {"id": "a2", "document": 'Second "quoted" document\nover two lines.', "summary": "Second."},
    {"id": "a3", "document": "Dritte Zeile: Grüße aus Zürich 東京.", "summary": "Third."},
]


def write_jsonl(p: Path, rows, newline="\n") -> Path:
    p.write_bytes("".join(json.dumps(r, ensure_ascii=False) + newline for r in rows).encode("utf-8"))
    return p


def write_delimited(p: Path, rows, delimiter=",") -> Path:
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return p


def read(path, limit=None, **columns):
    return read_source(SourceSpec(path=str(path), limit=limit), "train", DataSection(**columns))


def texts(split) -> list[tuple]:
    return [(r["id"], r["document"], r["summary"]) for r in split.rows]


EXPECTED = [(r["id"], r["document"], r["summary"]) for r in ROWS]


def data_error(path_or_fn, match: str | None = None) -> str:
    with pytest.raises(DataError) as e:
        path_or_fn() if callable(path_or_fn) else read_file(Path(path_or_fn))
    msg = str(e.value)
    if match is not None:
        assert match in msg, msg
    return msg


# -- formats -------------------------------------------------------------------------------------------------------


def make(fmt: str, d: Path) -> Path:
    if fmt == "jsonl":
        return write_jsonl(d / "t.jsonl", ROWS)
    if fmt == "json-list":
        (d / "t.json").write_text(json.dumps(ROWS), encoding="utf-8")
    elif fmt == "json-wrapped":
        (d / "t.json").write_text(json.dumps({"data": ROWS}), encoding="utf-8")
    elif fmt == "json-columns":
        (d / "t.json").write_text(json.dumps({k: [r[k] for r in ROWS] for k in ROWS[0]}), encoding="utf-8")
    elif fmt == "json-lines":  # JSON lines saved as .json
        write_jsonl(d / "t.json", ROWS)
    elif fmt == "csv":
        return write_delimited(d / "t.csv", ROWS)
    elif fmt == "tsv":
        return write_delimited(d / "t.tsv", ROWS, "\t")
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), d / "t.parquet")
        return d / "t.parquet"
    elif fmt == "CSV-upper":
        return write_delimited(d / "T.CSV", ROWS)
    return d / "t.json"


@pytest.mark.parametrize(
    "fmt", ["jsonl", "json-list", "json-wrapped", "json-columns", "json-lines", "csv", "tsv", "parquet", "CSV-upper"]
)
def test_every_format_gives_the_same_rows(tmp_path, fmt):
    p = make(fmt, tmp_path)
    split = read(p)
    assert texts(split) == EXPECTED
    assert split.columns == ("document", "summary", "id") and split.read == 3
    assert [r["_file"] for r in split.rows] == [str(p)] * 3 and [r["_row"] for r in split.rows] == [0, 1, 2]


def test_a_directory_is_read_file_by_file_in_name_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", ROWS[2:])
    write_delimited(tmp_path / "a.csv", [{"text": r["document"], "summary": r["summary"]} for r in ROWS[:2]])
    (tmp_path / "README.md").write_text("not data")
    (tmp_path / "sub.jsonl").mkdir()  # a folder, even with a data suffix, is not a file to read
    split = read(tmp_path)
    assert [r["document"] for r in split.rows] == [r["document"] for r in ROWS]
    # ids continue across files where a file has no id column
    assert [r["id"] for r in split.rows] == ["train-0", "train-1", "a3"]
    assert [Path(r["_file"]).name for r in split.rows] == ["a.csv", "a.csv", "b.jsonl"]
    assert split.columns == ("text", "summary", None)  # the first file's, as logged
    assert split.source == str(tmp_path)


def test_limit_counts_rows_across_files(tmp_path):
    write_jsonl(tmp_path / "1.jsonl", ROWS[:2])
    write_jsonl(tmp_path / "2.jsonl", ROWS)
    assert [r["id"] for r in read(tmp_path, limit=3).rows] == ["a1", "a2", "a1"]
    assert read(tmp_path / "2.jsonl", limit=1).read == 1


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    p = tmp_path / "excel.csv"
    p.write_bytes("\ufeffdocument,summary\r\nA text.,A.\r\n".encode("utf-8"))
    assert texts(read(p)) == [("train-0", "A text.", "A.")]
    j = tmp_path / "bom.jsonl"
    j.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n")
    assert texts(read(j)) == EXPECTED[:1]


def test_windows_line_endings(tmp_path):
    p = tmp_path / "w.csv"
    p.write_bytes(b'document,summary\r\n"Line one\r\nline two",S1\r\nPlain,S2\r\n')
    rows = read_file(p)
    assert rows == [{"document": "Line one\r\nline two", "summary": "S1"}, {"document": "Plain", "summary": "S2"}]
    assert texts(read(write_jsonl(tmp_path / "w.jsonl", ROWS, newline="\r\n"))) == EXPECTED


def test_blank_lines_in_jsonl_are_skipped(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text("\n" + json.dumps(ROWS[0]) + "\n\n   \n" + json.dumps(ROWS[1]) + "\n\n")
    assert [r["id"] for r in read_file(p)] == ["a1", "a2"]


def test_values_are_kept_as_their_type(tmp_path):
    # numbers and nulls reach row validation as they are (it drops or refuses them by name)
    p = write_jsonl(tmp_path / "t.jsonl", [{"idx": 7, "text": "Doc", "target": None}])
    split = read(p)
    assert split.rows[0]["id"] == "7" and split.rows[0]["summary"] is None


# -- columns -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("doc,summ", COLUMN_PAIRS)
def test_each_known_column_pair_is_found(tmp_path, doc, summ):
    p = write_jsonl(tmp_path / "t.jsonl", [{"meta": "m", doc: "the document", summ: "the summary"}])
    split = read(p)
    assert split.columns[:2] == (doc, summ)
    assert (split.rows[0]["document"], split.rows[0]["summary"]) == ("the document", "the summary")


def test_the_earlier_pair_wins_when_several_match():
    assert pick_columns(["summary", "highlights", "article"], DataSection(), "f")[:2] == ("article", "highlights")
    assert pick_columns(["target", "summary", "text"], DataSection(), "f")[:2] == ("text", "summary")


def test_named_columns_are_used(tmp_path):
    assert pick_columns(
        ["body", "tldr", "key"], DataSection(document_column="body", summary_column="tldr", id_column="key"), "f"
    ) == ("body", "tldr", "key")
    # one named, the other found among the pairs that have it
    assert pick_columns(["source", "target", "summary"], DataSection(summary_column="target"), "f")[:2] == (
        "source",
        "target",
    )
    assert pick_columns(
        ["text", "summary", "target"], DataSection(document_column="text", summary_column="target"), "f"
    )[:2] == ("text", "target")


def test_id_columns_are_found_or_numbered(tmp_path):
    assert pick_columns(["document", "summary", "doc_id"], DataSection(), "f")[2] == "doc_id"
    assert pick_columns(["document", "summary"], DataSection(), "f")[2] is None
    assert [r["id"] for r in read(write_jsonl(tmp_path / "t.jsonl", [{"document": "d", "summary": "s"}] * 2)).rows] == [
        "train-0",
        "train-1",
    ]


def test_a_named_column_that_is_missing_names_it_and_the_columns_there(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", ROWS)
    msg = data_error(lambda: read(p, document_column="body", id_column="key"))
    assert msg == (
        f"data file {p}: column(s) 'body', 'key' not found; the file has columns: id, document, summary. "
        f"Set data.document_column / data.summary_column."
    )


def test_no_known_pair_names_the_columns_there(tmp_path):
    p = write_delimited(tmp_path / "t.csv", [{"question": "q", "answer": "a"}])
    data_error(
        lambda: read(p),
        f"data file {p}: could not find the document and summary columns among: question, "
        f"answer. Set data.document_column and data.summary_column.",
    )
    # a named document column with no pair for it
    data_error(lambda: read(p, document_column="question"), "could not find the document and summary columns")


def test_the_columns_are_looked_for_in_more_than_the_first_row(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"document": "d"}, {"document": "d2", "summary": "s2"}])
    assert [r["summary"] for r in read(p).rows] == [None, "s2"]  # the first row's missing summary: dropped later


# -- bad files -----------------------------------------------------------------------------------------------------


def test_missing_unsupported_and_empty_sources(tmp_path):
    data_error(lambda: read(tmp_path / "nope.jsonl"), f"data file not found: {tmp_path / 'nope.jsonl'}")
    (tmp_path / "t.txt").write_text("x")
    data_error(lambda: read(tmp_path / "t.txt"), "unsupported format '.txt'; use one of .jsonl, .json, .csv")
    (tmp_path / "empty").mkdir()
    data_error(lambda: read(tmp_path / "empty"), "holds no .jsonl, .json, .csv, .tsv, .parquet files")


@pytest.mark.parametrize("name,content", [("e.jsonl", b""), ("e.json", b"  \n\n"), ("e.csv", b"\n"), ("e.tsv", b"")])
def test_an_empty_file_is_named(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    assert data_error(tmp_path / name) == f"data file {tmp_path / name} is empty"


def test_a_file_with_no_rows_is_named(tmp_path):
    (tmp_path / "h.csv").write_text("document,summary\n")
    data_error(lambda: read(tmp_path / "h.csv"), f"data file {tmp_path / 'h.csv'} holds no rows")
    (tmp_path / "l.json").write_text("[]")
    data_error(lambda: read(tmp_path / "l.json"), "holds no rows")


def test_invalid_utf8_names_the_line(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + '{"document": "Grüße", "summary": "s"}\n'.encode("latin-1"))
    data_error(p, f"data file {p}, line 2: not valid UTF-8")
    assert "re-save the file as UTF-8" in data_error(p)


def test_a_cut_off_last_jsonl_line_says_so(tmp_path):
    p = tmp_path / "cut.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1])[:25])
    assert data_error(p).endswith("(the last line looks cut off: was the file fully written?)")
    assert f"{p}, line 2: invalid JSON" in data_error(p)


def test_a_bad_line_in_the_middle_is_named_without_the_cut_off_hint(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n{oops\n" + json.dumps(ROWS[1]) + "\n")
    msg = data_error(p, f"data file {p}, line 2: invalid JSON")
    assert "cut off" not in msg


def test_a_jsonl_line_that_is_not_an_object(tmp_path):
    p = tmp_path / "l.jsonl"
    p.write_text(json.dumps(ROWS[0]) + '\n["a", "b"]\n')
    data_error(p, f"data file {p}, line 2: expected a JSON object per line, got list")


@pytest.mark.parametrize(
    "text", ['"just a string"', "[1, 2]", '{"document": "d", "summary": ["s", "t"]}', '{"a": [1], "b": [1, 2]}']
)
def test_json_that_is_not_a_list_of_objects(tmp_path, text):
    p = tmp_path / "x.json"
    p.write_text(text)
    data_error(p, f"data file {p}: expected a list of objects (or JSON lines), one per example")


def test_invalid_json_names_its_line(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('[\n {"document": "d",\n  "summary": }\n]')
    data_error(p, f"data file {p}, line 3: invalid JSON")


def test_json_nested_too_deeply_is_bad_data_not_a_crash(tmp_path):
    deep = "[" * 200_000 + "]" * 200_000
    p = tmp_path / "deep.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n" + deep + "\n")
    data_error(p, f"data file {p}, line 2: JSON nested too deeply to read")
    p = tmp_path / "deep.json"
    p.write_text('{"document": ' + deep + "}")
    data_error(p, f"data file {p}, line 1: JSON nested too deeply to read")


def test_a_row_with_more_fields_than_the_header(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("document,summary\nd1,s1\nd2,s2,extra\n")
    data_error(p, f"data file {p}, line 3: more fields than the header has (2); check quoting")


def test_an_unterminated_quote_is_named_not_read_as_the_rest_of_the_file(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text('document,summary\nd1,s1\n"unterminated,s2\nd3,s3\nd4,s4\n')
    msg = data_error(p)
    assert msg.startswith(f"data file {p}, line ")


def test_parquet_empty_or_not_parquet(tmp_path):
    (tmp_path / "e.parquet").write_bytes(b"")
    assert data_error(tmp_path / "e.parquet") == f"data file {tmp_path / 'e.parquet'} is empty"
    (tmp_path / "t.parquet").write_text("document,summary\nd,s\n")
    data_error(tmp_path / "t.parquet", f"data file {tmp_path / 't.parquet'}: not a readable parquet file")


# -- bounded reading -----------------------------------------------------------------------------------------------


def test_read_bounded_returns_the_bytes_up_to_the_limit(tmp_path):
    p = tmp_path / "f"
    data = b"x" * 10_000  # more than the 8 KiB looked at first
    p.write_bytes(data)
    assert read_bounded(p, 10_000, "data file") == data
    assert read_bounded(p, 1 << 20, "data file") == data


def test_read_bounded_refuses_a_file_over_the_limit(tmp_path):
    p = tmp_path / "big.jsonl"
    p.write_bytes(b"a" * ((1 << 20) + 1))
    assert data_error(lambda: read_bounded(p, 1 << 20, "data file")) == (
        f"data file {p} is larger than 1 MiB, the most read at once; split it into smaller files"
    )


def test_a_data_file_over_the_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_DATA_FILE_BYTES", 1 << 20)
    p = write_jsonl(tmp_path / "t.jsonl", [{"document": "d" * 1000, "summary": "s"}] * 1100)
    data_error(lambda: read(p), f"data file {p} is larger than 1 MiB")


def test_read_bounded_refuses_a_binary_file(tmp_path):
    p = tmp_path / "model.jsonl"
    p.write_bytes(b"PK\x03\x04" + b"\x00" * 20 + b"rest")  # a zip renamed .jsonl
    assert data_error(p) == f"data file {p} looks binary (NUL bytes), not text"


def test_read_bounded_stops_reading_a_stream_without_end(tmp_path):
    # what /dev/urandom or a FIFO fed forever would do: refused after limit bytes, not read into memory
    fifo = tmp_path / "stream.jsonl"
    os.mkfifo(fifo)
    stop = threading.Event()

    def feed():
        try:
            with open(fifo, "wb") as f:
                while not stop.is_set():
                    f.write(b'{"document": "d", "summary": "s"}\n' * 1000)
        except BrokenPipeError:
            pass

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        data_error(lambda: read_bounded(fifo, 1 << 20, "data file"), "is larger than 1 MiB")
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()


def test_read_bounded_raises_the_callers_error_type(tmp_path):
    with pytest.raises(UserError) as e:
        read_bounded(tmp_path, 100, "--input", error=UserError)  # a directory cannot be read as a file
    assert type(e.value) is UserError
    assert str(e.value) == f"--input {tmp_path} cannot be read (Is a directory); check its permissions"
