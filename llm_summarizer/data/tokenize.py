"""Tokenizing whole splits under the token budget: batched `datasets.map`, several processes for large
splits, cached by content + formatter fingerprint, with per-split statistics read from Arrow columns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import datasets
import pyarrow.compute as pc

from .. import progress
from ..config import Config, DataSection
from ..errors import DataError
from ..files import atomic_directory
from ..stats import percentile
from .prompt import Formatter
from .readers import MAX_SHOWN_ROWS, RawSplit

log = logging.getLogger("llm_summarizer.data")


@dataclass
class SplitStats:
    role: str
    source: str
    rows_read: int
    rows_kept: int
    dropped: dict
    dropped_examples: dict
    truncated: int
    prompt_tokens: list = field(default_factory=list, repr=False)
    completion_tokens: list = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        def stats(xs):
            if not xs:
                return {}
            s = sorted(xs)
            return {
                "min": s[0],
                "mean": round(sum(s) / len(s), 1),
                "p50": percentile(s, 0.5),
                "p95": percentile(s, 0.95),
                "max": s[-1],
            }

        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows": self.rows_kept,
            "dropped": dict(self.dropped),
            "dropped_first_rows": self.dropped_examples,
            "truncated": self.truncated,
            "prompt_tokens": stats(self.prompt_tokens),
            "summary_tokens": stats(self.completion_tokens),
        }


def _num_proc(data: DataSection, n_rows: int) -> Optional[int]:
    if n_rows < 2000:
        return None
    n = data.num_proc or min(8, os.cpu_count() or 1)
    return n if n > 1 else None


def _tokenize_batch(batch, formatter: Formatter):
    out = {"input_ids": [], "completion_mask": [], "prompt_len": [], "status": []}
    for ex, status in formatter.examples(batch["document"], batch["summary"]):
        out["status"].append(status)
        out["input_ids"].append(ex["input_ids"] if ex else [])
        out["completion_mask"].append(ex["completion_mask"] if ex else [])
        out["prompt_len"].append(ex["prompt_len"] if ex else 0)
    return out


# what datasets.map infers for the tokenized columns (input_ids as int32), also for an empty split
FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "document": datasets.Value("string"),
        "summary": datasets.Value("string"),
        "input_ids": datasets.List(datasets.Value("int32")),
        "completion_mask": datasets.List(datasets.Value("int64")),
        "prompt_len": datasets.Value("int64"),
        "status": datasets.Value("string"),
    }
)


def _tokenize_all(rows: list[dict], formatter: Formatter, role: str, chunk: int = 1000) -> dict:
    cols = {
        "id": [r["id"] for r in rows],
        "document": [r["document"] for r in rows],
        "summary": [r["summary"] for r in rows],
        "input_ids": [],
        "completion_mask": [],
        "prompt_len": [],
        "status": [],
    }
    with progress.bar(len(rows), f"tokenizing {role}", "row") as bar:
        for i in range(0, len(rows), chunk):
            part = _tokenize_batch(
                {"document": cols["document"][i : i + chunk], "summary": cols["summary"][i : i + chunk]}, formatter
            )
            for k in ("input_ids", "completion_mask", "prompt_len", "status"):
                cols[k].extend(part[k])
            bar.update_to(min(len(rows), i + chunk))
    return cols


def arrow_column(ds, name: str):
    """A whole column as Arrow, in the dataset's row order: ds[name] goes row by row through datasets'
    formatter (seconds per 100k rows)."""
    return ds.with_format("arrow")[name]


def token_lengths(ds, column: str = "input_ids") -> list[int]:
    return pc.list_value_length(arrow_column(ds, column)).to_pylist()


def tokenize_split(raw: RawSplit, formatter: Formatter, data: DataSection, cache_dir: Optional[Path] = None):
    """Tokenize one split; returns (datasets.Dataset, SplitStats). Rows that cannot fit are dropped."""
    rows = [{"id": r["id"], "document": r["document"], "summary": r["summary"]} for r in raw.rows]
    key = hashlib.sha256((formatter.fingerprint() + json.dumps(rows, sort_keys=True)).encode()).hexdigest()[:20]
    cached = cache_dir / f"{raw.role}-{key}" if cache_dir is not None and data.cache else None
    if cached is not None and (cached / "dataset_info.json").exists():
        ds = datasets.load_from_disk(str(cached))
        log.info("data.%s: reusing tokenized cache %s", raw.role, cached)
    else:
        num_proc = _num_proc(data, len(rows))
        if num_proc:  # large splits: datasets.map over several processes
            ds = datasets.Dataset.from_list(rows).map(
                _tokenize_batch,
                batched=True,
                batch_size=1000,
                num_proc=num_proc,
                fn_kwargs={"formatter": formatter},
                desc=f"tokenizing {raw.role}",
                load_from_cache_file=False,
                new_fingerprint=key,
            )
        else:  # one process: the columns built directly, one Arrow conversion (no per-batch map machinery)
            ds = datasets.Dataset.from_dict(_tokenize_all(rows, formatter, raw.role), features=FEATURES)
        if cached is not None:
            # a full disk mid-write leaves no half-written cache to be mistaken for one; another run that wrote
            # the same cache meanwhile keeps its copy
            with atomic_directory(cached, keep_existing=True) as tmp:
                ds.save_to_disk(str(tmp))
            ds = datasets.load_from_disk(str(cached))
    status = arrow_column(ds, "status").to_pylist()
    n_tokens = token_lengths(ds)
    prompt_lens = arrow_column(ds, "prompt_len").to_pylist()
    counts = Counter(status)
    stats = SplitStats(
        role=raw.role,
        source=raw.source,
        rows_read=raw.read,
        rows_kept=0,
        dropped=dict(raw.dropped),
        dropped_examples=dict(raw.dropped_examples),
        truncated=counts.get("truncated", 0),
    )
    for reason in ("summary_too_long", "document_too_long"):
        if counts.get(reason):
            stats.dropped[reason] = counts[reason]
            first = [i for i, s in enumerate(status) if s == reason][:MAX_SHOWN_ROWS]
            stats.dropped_examples[reason] = [raw.rows[i]["_row"] for i in first]
            log.warning(
                "data.%s: dropped %d row(s) that do not fit max_seq_length=%d: %s (first rows: %s)",
                raw.role,
                counts[reason],
                formatter.max_seq_length,
                reason.replace("_", " "),
                stats.dropped_examples[reason],
            )
    keep = [i for i, s in enumerate(status) if s in ("ok", "truncated")]
    if len(keep) != len(ds):
        ds = ds.select(keep)
    if stats.truncated:
        log.info(
            "data.%s: truncated the document of %d row(s) to fit max_seq_length=%d (policy %s)",
            raw.role,
            stats.truncated,
            formatter.max_seq_length,
            data.truncation,
        )
    stats.rows_kept = len(ds)
    stats.prompt_tokens = [prompt_lens[i] for i in keep]
    stats.completion_tokens = [n_tokens[i] - prompt_lens[i] for i in keep]
    return ds, stats


@dataclass
class PreparedData:
    splits: dict  # role -> datasets.Dataset with id, document, summary, input_ids, completion_mask, prompt_len
    stats: dict  # role -> SplitStats
    formatter: Formatter

    def report(self) -> dict:
        return {role: s.summary() for role, s in self.stats.items()}


def prepare(cfg: Config, tokenizer, raw: dict[str, RawSplit], cache_dir: Optional[Path] = None) -> PreparedData:
    formatter = Formatter(tokenizer, cfg.data, cfg.model.max_seq_length)
    splits, stats = {}, {}
    for role, r in raw.items():
        ds, st = tokenize_split(r, formatter, cfg.data, cache_dir)
        splits[role], stats[role] = ds, st
    if stats["train"].rows_kept == 0:
        raise DataError(
            f"data.train: every row was dropped ({stats['train'].dropped}); raise model.max_seq_length "
            f"(now {cfg.model.max_seq_length}) or change data.truncation"
        )
    return PreparedData(splits=splits, stats=stats, formatter=formatter)
