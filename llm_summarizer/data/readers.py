"""Reading summarization data: local files (JSONL, JSON, CSV, TSV, parquet, a directory of them) or a
hub dataset, into rows of {id, document, summary} with the columns found automatically or named in the config.

Every problem with a file (missing, empty, binary, not UTF-8, a cut-off last line, a row with more fields
than the header, missing columns) is one `DataError` naming the file, the line and what to do.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import datasets
import pyarrow.parquet as pq

from ..config import DataSection, SourceSpec
from ..errors import DataError
from ..untrusted import clean_text

log = logging.getLogger("llm_summarizer.data")


SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


# (document column, summary column) pairs found automatically, in order of preference.
COLUMN_PAIRS = [
    ("document", "summary"),
    ("article", "highlights"),
    ("dialogue", "summary"),
    ("text", "summary"),
    ("article", "summary"),
    ("source", "summary"),
    ("abstract", "tldr"),
    ("transcript", "summary"),
    ("content", "summary"),
    ("input", "output"),
    ("source", "target"),
    ("src", "tgt"),
    ("text", "target"),
]


ID_COLUMNS = ("id", "idx", "uid", "example_id", "doc_id")


MAX_SHOWN_ROWS = 5


def _files_of(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"data file not found: {path}. Check the path in data.train / data.validation / data.test.")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
        if not files:
            raise DataError(f"data directory {path} holds no {', '.join(SUPPORTED_SUFFIXES)} files")
        return files
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"data file {path}: unsupported format '{path.suffix}'; use one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    return [path]


MAX_DATA_FILE_BYTES = 8 << 30  # a data file is read whole into memory: a larger one is split or put on the hub
MAX_DOCUMENT_BYTES = 64 << 20  # one document to summarize (about 15 million words)


def read_bounded(path: Path, limit: int, what: str, error=DataError) -> bytes:
    """The bytes of a file, refused before they are read when it is binary (NUL bytes in its first 8 KiB) or larger
    than `limit` (also what a device such as /dev/urandom would stream without end)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
            if b"\x00" in head:
                raise error(f"{what} {path} looks binary (NUL bytes), not text")
            rest = f.read(max(0, limit - len(head)) + 1)
    except OSError as e:
        raise error(f"{what} {path} cannot be read ({e.strerror or type(e).__name__}); check its permissions") from None
    if len(head) + len(rest) > limit:
        size = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"
        raise error(f"{what} {path} is larger than {size}, the most read at once; split it into smaller files")
    return head + rest


def _read_text(path: Path) -> str:
    raw = read_bounded(path, MAX_DATA_FILE_BYTES, "data file")
    if not raw.strip():
        raise DataError(f"data file {path} is empty")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"data file {path}, line {line}: not valid UTF-8 (byte offset {e.start}); re-save the file as UTF-8"
        ) from None


def _json(text: str, path: Path, line: int):
    """json.loads, with nesting too deep for Python's parser (a RecursionError) reported as bad data."""
    try:
        return json.loads(text)
    except RecursionError:
        raise DataError(
            f"data file {path}, line {line}: JSON nested too deeply to read (thousands of levels); an "
            f"example is a flat object of text fields"
        ) from None


def _read_jsonl(path: Path) -> list[dict]:
    text = _read_text(path)
    rows = []
    lines = text.split("\n")
    last = max((i for i, l in enumerate(lines) if l.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = _json(line, path, i + 1)
        except json.JSONDecodeError as e:
            hint = " (the last line looks cut off: was the file fully written?)" if i == last else ""
            raise DataError(f"data file {path}, line {i + 1}: invalid JSON: {e.msg}{hint}") from None
        if not isinstance(obj, dict):
            raise DataError(
                f"data file {path}, line {i + 1}: expected a JSON object per line, got {type(obj).__name__}"
            )
        rows.append(obj)
    return rows


def _read_json(path: Path) -> list[dict]:
    text = _read_text(path)
    try:
        obj = _json(text, path, 1)
    except json.JSONDecodeError as e:
        # A .json file that is really JSON lines is common; accept it.
        if e.msg == "Extra data":
            return _read_jsonl(path)
        raise DataError(f"data file {path}, line {e.lineno}: invalid JSON: {e.msg}") from None
    if isinstance(obj, dict):
        # {"data": [...]} or {"train": [...]}; or column-oriented {"document": [...], "summary": [...]}
        lists = {k: v for k, v in obj.items() if isinstance(v, list)}
        if len(lists) == 1 and all(isinstance(r, dict) for r in next(iter(lists.values()))):
            obj = next(iter(lists.values()))
        elif lists and len(lists) == len(obj) and len({len(v) for v in lists.values()}) == 1:
            keys = list(lists)
            obj = [dict(zip(keys, vals)) for vals in zip(*lists.values())]
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise DataError(f"data file {path}: expected a list of objects (or JSON lines), one per example")
    return obj


def _read_delimited(path: Path, delimiter: str) -> list[dict]:
    text = _read_text(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    # strict: an unterminated quote is an error naming its line, not a field that swallows the rest of the file
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows = []
    try:
        for row in reader:
            if None in row:
                raise DataError(
                    f"data file {path}, line {reader.line_num}: more fields than the header has "
                    f"({len(reader.fieldnames or [])}); check quoting"
                )
            rows.append(row)
    except csv.Error as e:
        raise DataError(f"data file {path}, line {reader.line_num}: {e}") from None
    if reader.fieldnames is None:
        raise DataError(f"data file {path} is empty")
    return rows


def _read_parquet(path: Path) -> list[dict]:
    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty")
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"data file {path}: not a readable parquet file ({type(e).__name__}: {e})") from None


def read_file(path: Path) -> list[dict]:
    """A table's rows, its text made encodable (untrusted.clean_text: lone surrogates, NUL; said in one line)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _read_jsonl(path)
    elif suffix == ".json":
        rows = _read_json(path)
    elif suffix == ".csv":
        rows = _read_delimited(path, ",")
    elif suffix == ".tsv":
        rows = _read_delimited(path, "\t")
    else:
        rows = _read_parquet(path)
    return clean_rows(rows, str(path))


def clean_rows(rows: list[dict], where: str) -> list[dict]:
    """Every text value of the rows through clean_text (keys too); one line says how many characters and rows."""
    changed, chars = 0, 0
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            continue
        fixed, n = {}, 0
        for k, v in row.items():
            k2, a = clean_text(k) if isinstance(k, str) else (k, 0)
            v2, b = clean_text(v) if isinstance(v, str) else (v, 0)
            fixed[k2], n = v2, n + a + b
        if n:
            rows[i], changed, chars = fixed, changed + 1, chars + n
    if chars:
        log.warning(
            "%s: %d character(s) in %d row(s) could not be encoded (lone surrogates, NUL) and were replaced (U+FFFD, "
            "a space)",
            where,
            chars,
            changed,
        )
    return rows


def _read_hub(spec: SourceSpec, role: str) -> list[dict]:
    split = spec.split or role
    try:
        ds = datasets.load_dataset(spec.name, spec.config, split=split, streaming=spec.streaming)
    except Exception as e:
        raise DataError(
            f"data.{role}: could not load hub dataset '{spec.name}' (split '{split}'): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. Without network access, use local files "
            f"(data.{role}=path/to/{role}.jsonl) with a local model (model.name=/path/to/local/model), "
            f"or the ready configs that read local data: --config demo, --config tiny"
        ) from None
    if spec.streaming:
        out = []
        for i, row in enumerate(ds):
            if spec.limit and i >= spec.limit:
                break
            out.append(dict(row))
        return clean_rows(out, f"data.{role} {spec.name}")
    if spec.limit:
        ds = ds.select(range(min(spec.limit, len(ds))))
    return clean_rows(ds.to_list(), f"data.{role} {spec.name}")


@dataclass
class RawSplit:
    role: str
    source: str
    rows: list[dict]  # {"id", "document", "summary"}
    read: int = 0
    dropped: Counter = field(default_factory=Counter)
    dropped_examples: dict = field(default_factory=dict)  # reason -> first row indices
    columns: tuple = ()


def pick_columns(columns: list[str], data: DataSection, where: str) -> tuple[str, str, Optional[str]]:
    cols = set(columns)
    doc, summ = data.document_column, data.summary_column
    missing = [c for c in (doc, summ, data.id_column) if c is not None and c not in cols]
    if missing:
        raise DataError(
            f"{where}: column(s) {', '.join(repr(m) for m in missing)} not found; the file has "
            f"columns: {', '.join(columns) or '(none)'}. Set data.document_column / data.summary_column."
        )
    if doc is None or summ is None:
        for d, s in COLUMN_PAIRS:
            if (doc or d) == d and (summ or s) == s and d in cols and s in cols:
                doc, summ = d, s
                break
        else:
            raise DataError(
                f"{where}: could not find the document and summary columns among: {', '.join(columns) or '(none)'}. "
                f"Set data.document_column and data.summary_column."
            )
    id_col = data.id_column or next((c for c in ID_COLUMNS if c in cols), None)
    return doc, summ, id_col


def read_source(spec: SourceSpec, role: str, data: DataSection) -> RawSplit:
    if spec.path is not None:
        path = Path(os.path.expanduser(spec.path))
        files = _files_of(path)
        per_file = [(f, read_file(f)) for f in files]
        source = str(path)
    else:
        per_file = [(Path(f"hub:{spec.name}"), _read_hub(spec, role))]
        source = f"hub:{spec.name}" + (f"/{spec.config}" if spec.config else "") + f"[{spec.split or role}]"
    split = RawSplit(role=role, source=source, rows=[])
    chosen = None
    index = 0
    for f, rows in per_file:
        if not rows:
            raise DataError(f"data file {f} holds no rows")
        columns = list(dict.fromkeys(k for r in rows[:1000] for k in r))
        doc, summ, id_col = pick_columns(columns, data, f"data file {f}")
        if chosen is None:
            chosen = (doc, summ, id_col)
            log.info(
                "data.%s: %s: document column '%s', summary column '%s'%s",
                role,
                source,
                doc,
                summ,
                f", id column '{id_col}'" if id_col else "",
            )
        for r in rows:
            if spec.limit and index >= spec.limit:
                break
            rid = r.get(id_col) if id_col else None
            split.rows.append(
                {
                    "id": str(rid) if rid is not None else f"{role}-{index}",
                    "document": r.get(doc),
                    "summary": r.get(summ),
                    "_file": str(f),
                    "_row": index,
                }
            )
            index += 1
    split.columns = chosen or ()
    split.read = len(split.rows)
    return split
