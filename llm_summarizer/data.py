"""Summarization data: read sources, validate rows, format prompts, enforce token budgets.

Flow: `load_raw_splits(cfg)` reads train/validation/test (local files or the hub) into lists of
{id, document, summary} after dropping bad rows; `Formatter` turns a row into token ids where only
the summary (plus EOS) carries loss and the document is cut to fit `max_seq_length`;
`tokenize_splits` runs that over every split with `datasets.map` (batched, multi-process, cached).

Preview what training would see:

    python -m llm_summarizer.data --config configs/demo.yaml
    python -m llm_summarizer.data --config configs/demo.yaml --output /tmp/processed --examples 2
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import random
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import Config, DataSection, SourceSpec, UserError

log = logging.getLogger("llm_summarizer.data")

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
# (document column, summary column) pairs found automatically, in order of preference.
COLUMN_PAIRS = [
    ("document", "summary"), ("article", "highlights"), ("dialogue", "summary"), ("text", "summary"),
    ("article", "summary"), ("source", "summary"), ("abstract", "tldr"), ("transcript", "summary"),
    ("content", "summary"), ("input", "output"), ("source", "target"), ("src", "tgt"), ("text", "target"),
]
ID_COLUMNS = ("id", "idx", "uid", "example_id", "doc_id")
MAX_SHOWN_ROWS = 5


class DataError(UserError):
    pass


# ---------------------------------------------------------------------------------------------
# Reading


def _files_of(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"data file not found: {path}. Check the path in data.train / data.validation / data.test.")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
        if not files:
            raise DataError(f"data directory {path} holds no {', '.join(SUPPORTED_SUFFIXES)} files")
        return files
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise DataError(f"data file {path}: unsupported format '{path.suffix}'; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    return [path]


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"data file {path} is empty")
    if b"\x00" in raw[:8192] and path.suffix.lower() != ".parquet":
        raise DataError(f"data file {path} looks binary (NUL bytes), not {path.suffix} text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"data file {path}, line {line}: not valid UTF-8 (byte offset {e.start}); "
                        f"re-save the file as UTF-8") from None


def _read_jsonl(path: Path) -> list[dict]:
    text = _read_text(path)
    rows = []
    lines = text.split("\n")
    last = max((i for i, l in enumerate(lines) if l.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            hint = " (the last line looks cut off: was the file fully written?)" if i == last else ""
            raise DataError(f"data file {path}, line {i + 1}: invalid JSON: {e.msg}{hint}") from None
        if not isinstance(obj, dict):
            raise DataError(f"data file {path}, line {i + 1}: expected a JSON object per line, got {type(obj).__name__}")
        rows.append(obj)
    return rows


def _read_json(path: Path) -> list[dict]:
    text = _read_text(path)
    try:
        obj = json.loads(text)
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
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    try:
        for row in reader:
            if None in row:
                raise DataError(f"data file {path}, line {reader.line_num}: more fields than the header has "
                                f"({len(reader.fieldnames or [])}); check quoting")
            rows.append(row)
    except csv.Error as e:
        raise DataError(f"data file {path}, line {reader.line_num}: {e}") from None
    if reader.fieldnames is None:
        raise DataError(f"data file {path} is empty")
    return rows


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty")
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"data file {path}: not a readable parquet file ({type(e).__name__}: {e})") from None


def read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".csv":
        return _read_delimited(path, ",")
    if suffix == ".tsv":
        return _read_delimited(path, "\t")
    return _read_parquet(path)


def _read_hub(spec: SourceSpec, role: str) -> list[dict]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError("reading a hub dataset needs the 'datasets' package") from None
    split = spec.split or role
    try:
        ds = datasets.load_dataset(spec.name, spec.config, split=split, streaming=spec.streaming)
    except Exception as e:
        raise DataError(
            f"data.{role}: could not load hub dataset '{spec.name}' (split '{split}'): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. Without network access, use local files "
            f"(data.{role}=path/to/{role}.jsonl) with a local model (model.name=/path/to/local/model), "
            f"or the offline demo: configs/demo.yaml"
        ) from None
    if spec.streaming:
        out = []
        for i, row in enumerate(ds):
            if spec.limit and i >= spec.limit:
                break
            out.append(dict(row))
        return out
    if spec.limit:
        ds = ds.select(range(min(spec.limit, len(ds))))
    return ds.to_list()


@dataclass
class RawSplit:
    role: str
    source: str
    rows: list[dict]  # {"id", "document", "summary"}
    read: int = 0
    dropped: Counter = field(default_factory=Counter)
    dropped_examples: dict = field(default_factory=dict)  # reason -> first row indices
    columns: tuple = ()


def _pick_columns(columns: list[str], data: DataSection, where: str) -> tuple[str, str, Optional[str]]:
    cols = set(columns)
    doc, summ = data.document_column, data.summary_column
    missing = [c for c in (doc, summ, data.id_column) if c is not None and c not in cols]
    if missing:
        raise DataError(f"{where}: column(s) {', '.join(repr(m) for m in missing)} not found; the file has "
                        f"columns: {', '.join(columns) or '(none)'}. Set data.document_column / data.summary_column.")
    if doc is None or summ is None:
        for d, s in COLUMN_PAIRS:
            if (doc or d) == d and (summ or s) == s and d in cols and s in cols:
                doc, summ = d, s
                break
        else:
            raise DataError(
                f"{where}: could not find the document and summary columns among: {', '.join(columns) or '(none)'}. "
                f"Set data.document_column and data.summary_column.")
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
        doc, summ, id_col = _pick_columns(columns, data, f"data file {f}")
        if chosen is None:
            chosen = (doc, summ, id_col)
            log.info("data.%s: %s: document column '%s', summary column '%s'%s", role, source, doc, summ,
                     f", id column '{id_col}'" if id_col else "")
        for r in rows:
            if spec.limit and index >= spec.limit:
                break
            rid = r.get(id_col) if id_col else None
            split.rows.append({"id": str(rid) if rid is not None else f"{role}-{index}",
                               "document": r.get(doc), "summary": r.get(summ), "_file": str(f), "_row": index})
            index += 1
    split.columns = chosen or ()
    split.read = len(split.rows)
    return split


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
    doc, summ, id_col = _pick_columns(columns, data, f"{role} dataset ({source})")
    split = RawSplit(role=role, source=source, rows=[], columns=(doc, summ, id_col))
    for i, r in enumerate(rows):
        rid = r.get(id_col) if id_col else None
        split.rows.append({"id": str(rid) if rid is not None else f"{role}-{i}", "document": r.get(doc),
                           "summary": r.get(summ), "_file": source, "_row": i})
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
        raise DataError(f"data.{split.role} ({split.source}): bad rows: " + "; ".join(parts)
                        + ". Fix them, or set data.on_bad_rows=drop to skip them.")
    for reason, rows in bad.items():
        split.dropped[reason] += len(rows)
        split.dropped_examples[reason] = [x["_row"] for x in rows[:MAX_SHOWN_ROWS]]
        log.warning("data.%s: dropped %d row(s): %s (first rows: %s)", split.role, len(rows),
                    reason.replace("_", " "), split.dropped_examples[reason])
    split.rows = kept
    return split


def _size(n_total: int, size) -> int:
    if isinstance(size, float):
        return int(round(n_total * size))
    return int(size)


def load_raw_splits(cfg: Config) -> dict[str, RawSplit]:
    d = cfg.data
    if d.train is None:
        raise DataError("data.train is not set: give a file, directory or hub dataset, "
                        "e.g. data.train=data/demo/train.jsonl")
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
            idx = order[taken: taken + n]
            taken += n
            splits[role] = RawSplit(role=role, source=f"{train.source} (held out: {n} rows, split_seed {d.split_seed})",
                                    rows=[train.rows[i] for i in sorted(idx)], read=n, columns=train.columns)
        keep = sorted(order[taken:])
        train.rows = [train.rows[i] for i in keep]
        if len(train.rows) == 0:
            raise DataError(f"data.train: no rows left after holding out validation/test; lower data.validation_size / data.test_size")
    if not splits["train"].rows:
        raise DataError(f"data.train ({splits['train'].source}): no usable rows (dropped: {dict(splits['train'].dropped)})")
    return splits


# ---------------------------------------------------------------------------------------------
# Formatting and token budgets

_DOC = "\u2063DOCUMENT\u2063"
_SUM = "\u2063SUMMARY\u2063"


def ensure_pad_token(tokenizer) -> None:
    """Give the tokenizer a pad token distinct from EOS when the vocabulary has one to spare.

    With pad == EOS some collators mask every EOS as padding and the model never learns to stop.
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for cand in ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|PAD_TOKEN|>",
                 "<|reserved_special_token_0|>", "<|vision_pad|>", "<unk>", "<|unk|>"):
        if cand in vocab and vocab[cand] != tokenizer.eos_token_id:
            tokenizer.pad_token = cand
            return
    if tokenizer.pad_token_id is None:
        # Last resort; labels come from the completion mask, so EOS still carries loss.
        tokenizer.pad_token = tokenizer.eos_token
        log.warning("tokenizer has no spare token for padding; padding with EOS (loss still covers EOS)")


def apply_named_template(tokenizer, name: str):
    """Set one of Unsloth's named chat templates (chatml, llama-3, qwen-2.5, ...) on the tokenizer."""
    from unsloth.chat_templates import CHAT_TEMPLATES, get_chat_template

    if name not in CHAT_TEMPLATES:
        raise UserError(f"data.template: unknown chat template {name!r}; known: auto, plain, "
                        + ", ".join(sorted(CHAT_TEMPLATES)))
    return get_chat_template(tokenizer, chat_template=name)


class Formatter:
    """Renders one example into prompt ids and completion ids under the token budget."""

    def __init__(self, tokenizer, data: DataSection, max_seq_length: int):
        self.tok = tokenizer
        self.data = data
        self.max_seq_length = max_seq_length
        self.use_chat = data.template != "plain" and bool(getattr(tokenizer, "chat_template", None))
        if data.template not in ("auto", "plain") and not self.use_chat:
            raise UserError(f"data.template={data.template!r} but the tokenizer has no chat template after applying it")
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise UserError("the tokenizer has no EOS token; the model could not learn where a summary ends")
        pre, post = self._prompt_text(_DOC).split(_DOC)
        self.pre_ids = self._enc(pre, first=True)
        self.post_ids = self._enc(post)
        c_pre, c_post = self._completion_text(_SUM).split(_SUM)
        self.c_pre, self.c_post = c_pre, c_post
        self.stop_ids = sorted({self.eos_id, *self._end_of_turn_ids()})
        self.ellipsis_ids = self._enc(" ... ")

    # text rendering -------------------------------------------------------------------------
    def user_text(self, document: str) -> str:
        return self.data.prompt_template.format(instruction=self.data.instruction, document=document)

    def _prompt_text(self, document: str) -> str:
        if self.use_chat:
            return self.tok.apply_chat_template([{"role": "user", "content": self.user_text(document)}],
                                                tokenize=False, add_generation_prompt=True)
        return self.user_text(document) + self.data.plain_response_prefix

    def _completion_text(self, summary: str) -> str:
        if not self.use_chat:
            return summary
        msgs = [{"role": "user", "content": self.user_text("x")}]
        prompt = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        full = self.tok.apply_chat_template(msgs + [{"role": "assistant", "content": summary}], tokenize=False)
        if not full.startswith(prompt):
            raise UserError("the chat template renders the prompt differently with and without the answer; "
                            "set data.template to a named template (e.g. chatml) or 'plain'")
        return full[len(prompt):]

    def _end_of_turn_ids(self) -> list[int]:
        ids = []
        for t in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"):
            if t in self.c_post:
                tid = self.tok.convert_tokens_to_ids(t)
                if isinstance(tid, int) and tid >= 0:
                    ids.append(tid)
        return ids

    def _enc(self, text: str, first: bool = False) -> list[int]:
        if not text:
            return []
        # Chat templates write BOS themselves; for plain prompts let the tokenizer add it.
        add = first and not self.use_chat
        return list(self.tok(text, add_special_tokens=add)["input_ids"])

    # ids --------------------------------------------------------------------------------------
    def completion_ids(self, summary: str) -> list[int]:
        ids = self._enc(self.c_pre + summary.strip() + self.c_post.rstrip())
        # EOS exactly once, at the end (a chat template may already end the turn with it).
        while ids and ids[-1] == self.eos_id:
            ids.pop()
        return ids + [self.eos_id]

    @property
    def template_tokens(self) -> int:
        return len(self.pre_ids) + len(self.post_ids)

    def doc_budget(self, n_completion: int) -> int:
        return self.max_seq_length - self.template_tokens - n_completion

    def fit_document(self, doc_ids: list[int], budget: int) -> tuple[Optional[list[int]], str]:
        """Return (ids, status) with status 'ok', 'truncated' or a drop reason."""
        if budget < 1:
            return None, "summary_too_long"
        if len(doc_ids) <= budget:
            return doc_ids, "ok"
        policy = self.data.truncation
        if policy == "drop":
            return None, "document_too_long"
        if policy == "head_tail" and budget > len(self.ellipsis_ids) + 2:
            keep = budget - len(self.ellipsis_ids)
            head = (keep + 1) // 2
            return doc_ids[:head] + self.ellipsis_ids + doc_ids[len(doc_ids) - (keep - head):], "truncated"
        return doc_ids[:budget], "truncated"

    def prompt_ids(self, document: str, n_completion: int = 0) -> tuple[Optional[list[int]], str]:
        doc_ids = self._enc(document)
        fitted, status = self.fit_document(doc_ids, self.doc_budget(n_completion))
        if fitted is None:
            return None, status
        return self.pre_ids + fitted + self.post_ids, status

    def example(self, document: str, summary: str) -> tuple[Optional[dict], str]:
        comp = self.completion_ids(summary)
        prompt, status = self.prompt_ids(document, len(comp))
        if prompt is None:
            return None, status
        return {"input_ids": prompt + comp, "completion_mask": [0] * len(prompt) + [1] * len(comp),
                "prompt_len": len(prompt)}, status

    def generation_prompt(self, document: str, max_new_tokens: int) -> tuple[list[int], bool]:
        """Prompt ids for generation: the document is cut so prompt + max_new_tokens fit."""
        budget = self.doc_budget(max_new_tokens)
        doc_ids = self._enc(document)
        if budget < 1:
            budget = 1
        fitted = doc_ids[:budget] if len(doc_ids) > budget else doc_ids
        if len(doc_ids) > budget and self.data.truncation == "head_tail" and budget > len(self.ellipsis_ids) + 2:
            fitted, _ = self.fit_document(doc_ids, budget)
        return self.pre_ids + fitted + self.post_ids, len(doc_ids) > budget

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.pre_ids, self.post_ids, self.c_pre, self.c_post, self.stop_ids,
                             self.max_seq_length, self.data.truncation, self.eos_id], sort_keys=True).encode())
        h.update(json.dumps(sorted(self.tok.get_vocab().items())[:50000:97]).encode())
        return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Tokenizing splits


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
            return {"min": s[0], "mean": round(sum(s) / len(s), 1), "p50": s[len(s) // 2],
                    "p95": s[min(len(s) - 1, int(len(s) * 0.95))], "max": s[-1]}

        return {"source": self.source, "rows_read": self.rows_read, "rows": self.rows_kept,
                "dropped": dict(self.dropped), "dropped_first_rows": self.dropped_examples,
                "truncated": self.truncated, "prompt_tokens": stats(self.prompt_tokens),
                "summary_tokens": stats(self.completion_tokens)}


def _num_proc(data: DataSection, n_rows: int) -> Optional[int]:
    if n_rows < 2000:
        return None
    n = data.num_proc or min(8, os.cpu_count() or 1)
    return n if n > 1 else None


def _tokenize_batch(batch, formatter: Formatter):
    out = {"input_ids": [], "completion_mask": [], "prompt_len": [], "status": []}
    for doc, summ in zip(batch["document"], batch["summary"]):
        ex, status = formatter.example(doc, summ)
        out["status"].append(status)
        if ex is None:
            out["input_ids"].append([])
            out["completion_mask"].append([])
            out["prompt_len"].append(0)
        else:
            out["input_ids"].append(ex["input_ids"])
            out["completion_mask"].append(ex["completion_mask"])
            out["prompt_len"].append(ex["prompt_len"])
    return out


def arrow_column(ds, name: str):
    """A whole column as Arrow, in the dataset's row order: ds[name] goes row by row through datasets'
    formatter (seconds per 100k rows)."""
    return ds.with_format("arrow")[name]


def token_lengths(ds, column: str = "input_ids") -> list[int]:
    import pyarrow.compute as pc

    return pc.list_value_length(arrow_column(ds, column)).to_pylist()


def tokenize_split(raw: RawSplit, formatter: Formatter, data: DataSection, cache_dir: Optional[Path] = None):
    """Tokenize one split; returns (datasets.Dataset, SplitStats). Rows that cannot fit are dropped."""
    import datasets

    rows = [{"id": r["id"], "document": r["document"], "summary": r["summary"]} for r in raw.rows]
    key = hashlib.sha256((formatter.fingerprint() + json.dumps(rows, sort_keys=True)).encode()).hexdigest()[:20]
    cached = cache_dir / f"{raw.role}-{key}" if cache_dir is not None and data.cache else None
    if cached is not None and (cached / "dataset_info.json").exists():
        ds = datasets.load_from_disk(str(cached))
        log.info("data.%s: reusing tokenized cache %s", raw.role, cached)
    else:
        ds = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict(
            {"id": [], "document": [], "summary": []})
        ds = ds.map(_tokenize_batch, batched=True, batch_size=256, num_proc=_num_proc(data, len(rows)),
                    fn_kwargs={"formatter": formatter}, desc=f"tokenizing {raw.role}",
                    load_from_cache_file=False)
        if cached is not None:
            tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
            ds.save_to_disk(str(tmp))
            if cached.exists():  # another run wrote the same cache meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, cached)
            ds = datasets.load_from_disk(str(cached))
    status = arrow_column(ds, "status").to_pylist()
    n_tokens = token_lengths(ds)
    prompt_lens = arrow_column(ds, "prompt_len").to_pylist()
    counts = Counter(status)
    stats = SplitStats(role=raw.role, source=raw.source, rows_read=raw.read, rows_kept=0,
                       dropped=dict(raw.dropped), dropped_examples=dict(raw.dropped_examples),
                       truncated=counts.get("truncated", 0))
    for reason in ("summary_too_long", "document_too_long"):
        if counts.get(reason):
            stats.dropped[reason] = counts[reason]
            first = [i for i, s in enumerate(status) if s == reason][:MAX_SHOWN_ROWS]
            stats.dropped_examples[reason] = [raw.rows[i]["_row"] for i in first]
            log.warning("data.%s: dropped %d row(s) that do not fit max_seq_length=%d: %s (first rows: %s)",
                        raw.role, counts[reason], formatter.max_seq_length, reason.replace("_", " "),
                        stats.dropped_examples[reason])
    keep = [i for i, s in enumerate(status) if s in ("ok", "truncated")]
    if len(keep) != len(ds):
        ds = ds.select(keep)
    if stats.truncated:
        log.info("data.%s: truncated the document of %d row(s) to fit max_seq_length=%d (policy %s)",
                 raw.role, stats.truncated, formatter.max_seq_length, data.truncation)
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
    ensure_pad_token(tokenizer)
    formatter = Formatter(tokenizer, cfg.data, cfg.model.max_seq_length)
    splits, stats = {}, {}
    for role, r in raw.items():
        ds, st = tokenize_split(r, formatter, cfg.data, cache_dir)
        splits[role], stats[role] = ds, st
    if stats["train"].rows_kept == 0:
        raise DataError(f"data.train: every row was dropped ({stats['train'].dropped}); raise model.max_seq_length "
                        f"(now {cfg.model.max_seq_length}) or change data.truncation")
    return PreparedData(splits=splits, stats=stats, formatter=formatter)


# ---------------------------------------------------------------------------------------------
# Preview command


def _histogram(values: list[int], bins: int = 8, width: int = 30) -> list[str]:
    if not values:
        return ["    (no rows)"]
    lo, hi = min(values), max(values)
    step = max(1, -(-(hi - lo + 1) // bins))
    counts = Counter((v - lo) // step for v in values)
    top = max(counts.values())
    lines = []
    for b in range(0, (hi - lo) // step + 1):
        c = counts.get(b, 0)
        lines.append(f"    {lo + b * step:>6}-{lo + (b + 1) * step - 1:<6} {'#' * max(1 if c else 0, round(c / top * width)):<{width}} {c}")
    return lines


def render_marked(tokenizer, input_ids: list[int], completion_mask: list[int]) -> str:
    """The example as text, with the loss-carrying tokens inside [[...]]."""
    out, cur, in_loss = [], [], False
    for tid, m in zip(input_ids, completion_mask):
        if bool(m) != in_loss and cur:
            text = tokenizer.decode(cur, skip_special_tokens=False)
            out.append(f"[[{text}]]" if in_loss else text)
            cur = []
        in_loss = bool(m)
        cur.append(tid)
    if cur:
        text = tokenizer.decode(cur, skip_special_tokens=False)
        out.append(f"[[{text}]]" if in_loss else text)
    return "".join(out)


def preview_text(prepared: PreparedData, tokenizer, n_examples: int = 1) -> str:
    lines = []
    for role, st in prepared.stats.items():
        s = st.summary()
        lines.append(f"== {role}: {s['rows']} rows (read {s['rows_read']}) from {s['source']}")
        if s["dropped"]:
            for reason, n in s["dropped"].items():
                lines.append(f"   dropped {n} row(s): {reason.replace('_', ' ')} (first rows: {s['dropped_first_rows'].get(reason)})")
        lines.append(f"   truncated documents: {s['truncated']} (policy {prepared.formatter.data.truncation}, "
                     f"max_seq_length {prepared.formatter.max_seq_length})")
        for name, key in (("prompt tokens", "prompt_tokens"), ("summary tokens (incl. EOS)", "summary_tokens")):
            if s[key]:
                lines.append(f"   {name}: " + ", ".join(f"{k} {v}" for k, v in s[key].items()))
        if st.prompt_tokens:
            lines.append("   total tokens per example:")
            lines.extend(_histogram([p + c for p, c in zip(st.prompt_tokens, st.completion_tokens)]))
    train = prepared.splits["train"]
    mode = "chat template" if prepared.formatter.use_chat else "plain text"
    for i in range(min(n_examples, len(train))):
        ex = train[i]
        lines.append(f"\n== example {i} (train, id {ex['id']}; {mode}; loss-carrying tokens in [[...]]):")
        lines.append(render_marked(tokenizer, ex["input_ids"], ex["completion_mask"]))
    return "\n".join(lines)


def write_processed(prepared: PreparedData, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for role, ds in prepared.splits.items():
        p = out_dir / f"{role}.jsonl"
        with open(p, "w", encoding="utf-8") as f:
            for ex in ds:
                f.write(json.dumps({k: ex[k] for k in ("id", "document", "summary", "input_ids", "completion_mask")},
                                   ensure_ascii=False) + "\n")
        written.append(p)
    (out_dir / "data_stats.json").write_text(json.dumps(prepared.report(), indent=2))
    written.append(out_dir / "data_stats.json")
    return written


def main(argv=None) -> int:
    import argparse

    from .cli import run_cli

    ap = argparse.ArgumentParser(prog="python -m llm_summarizer.data", description="Show what training would see.")
    ap.add_argument("--config", required=True, help="YAML config file")
    ap.add_argument("--output", help="write processed splits as JSONL to this directory")
    ap.add_argument("--examples", type=int, default=1, help="rendered examples to show")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.max_seq_length=512")

    def go(args, cfg):
        from .model import load_tokenizer

        raw = load_raw_splits(cfg)
        tokenizer = load_tokenizer(cfg, raw)
        prepared = prepare(cfg, tokenizer, raw)
        print(preview_text(prepared, tokenizer, args.examples))
        if args.output:
            for p in write_processed(prepared, Path(args.output)):
                print(f"wrote {p}")
        return 0

    return run_cli(ap, go, argv)


if __name__ == "__main__":
    raise SystemExit(main())
