"""Documents to summarize, from what a user points at: files, directories, a column of a table, or stdin.

Tables (.jsonl .json .csv .tsv .parquet) give one document per row, from the given column or the first
of the usual names (document, text, article, dialogue, ...). Other files are read as plain UTF-8 text.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..untrusted import clean_text
from .readers import ID_COLUMNS, MAX_DOCUMENT_BYTES, read_bounded, read_file

log = logging.getLogger("llm_summarizer.data")


TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
DOCUMENT_COLUMNS = ("document", "text", "article", "dialogue", "content", "input", "source", "transcript", "src")
DEFAULT_GLOBS = ("*.txt", "*.md")


@dataclass
class Item:
    source: str  # file path, "stdin", or "file.jsonl"
    id: Optional[str]  # row id for tables
    text: str

    @property
    def name(self) -> str:
        return f"{self.source}#{self.id}" if self.id is not None else self.source


def _read_plain(p: Path) -> str:
    raw = read_bounded(p, MAX_DOCUMENT_BYTES, "document", UserError)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not valid UTF-8 (byte offset {e.start}); re-save it as UTF-8") from None


def _table_items(p: Path, column: Optional[str]) -> list[Item]:
    rows = read_file(p)
    if not rows:
        raise UserError(f"{p}: holds no rows")
    columns = list(dict.fromkeys(k for r in rows[:1000] for k in r))
    col = column or next((c for c in DOCUMENT_COLUMNS if c in columns), None)
    if col is None or col not in columns:
        what = f"column {column!r} not found" if column else "no document column found"
        raise UserError(f"{p}: {what}; the file has columns: {', '.join(columns) or '(none)'}. Pass --column NAME")
    id_col = next((c for c in ID_COLUMNS if c in columns), None)
    items, skipped = [], []
    for i, r in enumerate(rows):
        v = r.get(col)
        if not isinstance(v, str) or not v.strip():
            skipped.append(i)
            continue
        rid = r.get(id_col) if id_col else None
        items.append(Item(str(p), str(rid) if rid is not None else str(i), v))
    if skipped:
        log.warning(
            "%s: skipped %d row(s) whose %r is empty or not text (first rows: %s)", p, len(skipped), col, skipped[:5]
        )
    return items


def collect_items(inputs: list[str], column: Optional[str] = None, globs=DEFAULT_GLOBS, stdin=None) -> list[Item]:
    """The documents to summarize, in order; UserError for anything unreadable."""
    stdin = stdin or sys.stdin
    if not inputs:
        if stdin.isatty():
            raise UserError("nothing to summarize: give a file or a directory, or pipe text into standard input")
        inputs = ["-"]
    items: list[Item] = []
    for name in inputs:
        if name == "-":
            text = stdin.read(MAX_DOCUMENT_BYTES + 1)
            if len(text) > MAX_DOCUMENT_BYTES:
                raise UserError(
                    f"standard input holds more than {MAX_DOCUMENT_BYTES >> 20} MiB, the most read as one "
                    f"document; write it to files and pass them"
                )
            if not text.strip():
                raise UserError("no text on standard input; pass a file or a directory, or pipe text in")
            items.append(Item("stdin", None, text))
            continue
        p = Path(os.path.expanduser(name))
        if not p.exists():
            raise UserError(f"{name}: file or directory not found")
        if p.is_dir():
            files = sorted({f for g in globs for f in p.glob(g) if f.is_file()})
            if not files:
                raise UserError(f"{name}: no {' or '.join(globs)} files in this directory")
            for f in files:
                text = _read_plain(f)
                if text.strip():
                    items.append(Item(str(f), None, text))
                else:
                    log.warning("%s is empty; skipped", f)
        elif p.suffix.lower() in TABLE_SUFFIXES:
            items.extend(_table_items(p, column))
        else:
            text = _read_plain(p)
            if not text.strip():
                log.warning("%s is empty; skipped", p)
                continue
            items.append(Item(str(p), None, text))
    if not items:
        raise UserError("nothing to summarize: every input was empty")
    replaced = 0
    for it in items:
        it.text, n = clean_text(it.text)
        replaced += n
    if replaced:
        log.warning(
            "%d character(s) could not be encoded (lone surrogates, NUL) and were replaced (U+FFFD, a space)", replaced
        )
    return items
