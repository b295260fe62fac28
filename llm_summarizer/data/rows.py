"""Rows that training can use: bad rows dropped (or refused) by reason, and the train/validation/test splits.

`load_raw_splits(cfg)` reads every split named in `cfg.data`, validates its rows, and carves missing
validation/test splits out of train with a seeded shuffle (`data.split_seed`, independent of the training
seed, so changing `train.seed` does not change which rows are held out).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Optional

from ..config import Config, DataSection
from ..errors import DataError
from .readers import MAX_SHOWN_ROWS, RawSplit, pick_columns, read_source

log = logging.getLogger("llm_summarizer.data")


def raw_from_rows(rows, role: str, data: DataSection, source: str = "in-memory") -> RawSplit:
    """A RawSplit from rows already in memory: a datasets.Dataset, a pandas DataFrame or a list of dicts."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns") and not hasattr(rows, "to_list"):
        rows = rows.to_dict(orient="records")  # pandas
    elif hasattr(rows, "to_list"):
        rows = rows.to_list()  # datasets.Dataset
    rows = list(rows)
    if not rows:
        raise DataError(f"{role} dataset ({source}) holds no rows")
    columns = list(dict.fromkeys(k for r in rows[:1000] for k in r))
    doc, summ, id_col = pick_columns(columns, data, f"{role} dataset ({source})")
    split = RawSplit(role=role, source=source, rows=[], columns=(doc, summ, id_col))
    for i, r in enumerate(rows):
        rid = r.get(id_col) if id_col else None
        split.rows.append(
            {
                "id": str(rid) if rid is not None else f"{role}-{i}",
                "document": r.get(doc),
                "summary": r.get(summ),
                "_file": source,
                "_row": i,
            }
        )
    split.read = len(split.rows)
    return validate_rows(split, data.on_bad_rows)


def _bad_reason(value: Any) -> Optional[str]:
    if value is None:
        return "null"
    if not isinstance(value, str):
        return "not_a_string"
    if not value.strip():
        return "empty"
    return None


def validate_rows(split: RawSplit, on_bad_rows: str) -> RawSplit:
    """Drop (or stop on) null, non-string, empty and duplicate-document rows, counting by reason."""
    seen: set[str] = set()
    kept = []
    bad: dict[str, list] = {}
    for r in split.rows:
        reason = None
        for col in ("document", "summary"):
            why = _bad_reason(r[col])
            if why:
                reason = f"{why}_{col}"
                break
        if reason is None:
            key = r["document"]
            if key in seen:
                reason = "duplicate_document"
            seen.add(key)
        if reason:
            bad.setdefault(reason, []).append(r)
        else:
            kept.append(r)
    if bad and on_bad_rows == "error":
        parts = []
        for reason, rows in bad.items():
            where = ", ".join(f"{Path(x['_file']).name} row {x['_row']}" for x in rows[:MAX_SHOWN_ROWS])
            parts.append(f"{len(rows)} row(s) {reason.replace('_', ' ')} (first: {where})")
        raise DataError(
            f"data.{split.role} ({split.source}): bad rows: "
            + "; ".join(parts)
            + ". Fix them, or set data.on_bad_rows=drop to skip them."
        )
    for reason, rows in bad.items():
        split.dropped[reason] += len(rows)
        split.dropped_examples[reason] = [x["_row"] for x in rows[:MAX_SHOWN_ROWS]]
        log.warning(
            "data.%s: dropped %d row(s): %s (first rows: %s)",
            split.role,
            len(rows),
            reason.replace("_", " "),
            split.dropped_examples[reason],
        )
    split.rows = kept
    return split


def _size(n_total: int, size) -> int:
    if isinstance(size, float):
        return int(round(n_total * size))
    return int(size)


def load_raw_splits(cfg: Config) -> dict[str, RawSplit]:
    d = cfg.data
    if d.train is None:
        raise DataError(
            "data.train is not set: give a file, directory or hub dataset, e.g. data.train=data/demo/train.jsonl"
        )
    splits = {"train": validate_rows(read_source(d.train, "train", d), d.on_bad_rows)}
    for role in ("validation", "test"):
        spec = getattr(d, role)
        if spec is not None:
            splits[role] = validate_rows(read_source(spec, role, d), d.on_bad_rows)
    # Carve missing validation/test splits out of train with a seeded shuffle (separate from the
    # training seed, so changing train.seed does not change which rows are held out).
    carve = [(r, getattr(d, f"{r}_size")) for r in ("validation", "test") if r not in splits]
    carve = [(r, s) for r, s in carve if s]
    if carve:
        train = splits["train"]
        order = list(range(len(train.rows)))
        random.Random(d.split_seed).shuffle(order)
        taken = 0
        for role, size in carve:
            n = _size(len(train.rows), size)
            idx = order[taken : taken + n]
            taken += n
            splits[role] = RawSplit(
                role=role,
                source=f"{train.source} (held out: {n} rows, split_seed {d.split_seed})",
                rows=[train.rows[i] for i in sorted(idx)],
                read=n,
                columns=train.columns,
            )
        keep = sorted(order[taken:])
        train.rows = [train.rows[i] for i in keep]
        if len(train.rows) == 0:
            raise DataError(
                "data.train: no rows left after holding out validation/test; "
                "lower data.validation_size / data.test_size"
            )
    if not splits["train"].rows:
        raise DataError(
            f"data.train ({splits['train'].source}): no usable rows (dropped: {dict(splits['train'].dropped)})"
        )
    return splits
