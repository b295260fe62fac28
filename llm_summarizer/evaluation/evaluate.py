"""evaluate_model(): ROUGE of a saved model on a split, with bootstrap intervals, optionally against its base.

Predictions are appended as batches finish, so an interrupted evaluation generates only the rest; the
files it writes and the options are described with the command (`llm-summarizer evaluate --help`,
llm_summarizer/commands/evaluate.py).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pydantic import ValidationError

from .. import progress
from ..config import Config, SourceSpec, _coerce_source
from ..contracts import EVAL_SETTINGS_SHAPE, read_model_file
from ..data.chunking import applied_overlap
from ..data.readers import SUPPORTED_SUFFIXES, read_source
from ..data.rows import load_raw_splits, validate_rows
from ..environment import package_versions
from ..errors import UserError
from ..files import file_digest, write_json, write_text
from ..layout import BASE_PREDICTIONS, EVAL_SETTINGS, EVALUATIONS_DIR, METRICS_FILE, PREDICTIONS
from ..models.directory import weight_files
from ..models.generation import AdaptiveBatch, check_documents, chunk_window, default_max_new_tokens, summarize_texts
from ..models.generation_record import GenerationRecord
from ..models.loading import load_base_for_generation, load_for_generation, model_config, saved_model
from ..paths import Place, check_places, claim
from ..untrusted import Any, Bool, Int, Map, Num, Obj, Opt, Str, check_shape, loads
from . import diagnostics
from .report import find_log_history, write_eval_report
from .scores import ScoreSettings, score_predictions, scoring_protocol
from .scoring import Protocol, protocol_for, score_pair, warn_empty_references

log = logging.getLogger("llm_summarizer.evaluate")


@dataclass
class EvalResult:
    output_dir: Path
    metrics: dict
    predictions: Path
    base_predictions: Optional[Path] = None
    report: Optional[Path] = None


def _source_spec(data) -> SourceSpec:
    if isinstance(data, SourceSpec):
        return data
    try:
        return SourceSpec.model_validate(_coerce_source(str(data) if isinstance(data, os.PathLike) else data))
    except ValidationError as e:
        raise UserError(f"--data {data!r}: {e.errors()[0]['msg']}") from None


def _split_file(directory: Path, split: str) -> Optional[Path]:
    for suffix in SUPPORTED_SUFFIXES:
        p = directory / f"{split}{suffix}"
        if p.is_file():
            return p
    return None


def load_eval_rows(cfg: Config, data=None, split: str = "test", limit: Optional[int] = None):
    """(rows [{id, document, summary}], source description, summary column) for the evaluation."""
    if data is None:
        if split not in ("train", "validation", "test"):
            raise UserError(
                f"--split {split!r}: without --data the split must be train, validation or test "
                f"(read from the model's config.yaml)"
            )
        spec = getattr(cfg.data, split)
        if spec is not None:  # read only this split (a hub train split can be large)
            split_raw = validate_rows(read_source(spec, split, cfg.data), cfg.data.on_bad_rows)
        else:  # held out of train by the seeded split training used
            if cfg.data.train is None:
                raise UserError(f"the model's config.yaml names no data.{split}; pass --data SOURCE")
            raw = load_raw_splits(cfg)
            if split not in raw:
                raise UserError(
                    f"the model's config.yaml has no data.{split} (and no {split}_size carved from "
                    f"train); pass --data SOURCE"
                )
            split_raw = raw[split]
    else:
        spec = _source_spec(data)
        if spec.path is not None:
            p = Path(os.path.expanduser(spec.path))
            if p.is_dir() and _split_file(p, split) is not None:
                spec = spec.model_copy(update={"path": str(_split_file(p, split))})
        elif spec.split is None:
            spec = spec.model_copy(update={"split": split})
        split_raw = validate_rows(read_source(spec, split, cfg.data), cfg.data.on_bad_rows)
    rows = split_raw.rows[:limit] if limit else split_raw.rows
    if not rows:
        raise UserError(
            f"--data {data or 'data.' + split}: no usable rows to evaluate (dropped: {dict(split_raw.dropped)})"
        )
    summary_col = split_raw.columns[1] if len(split_raw.columns) > 1 else "summary"
    return _unique_ids(rows), split_raw.source, summary_col


def _unique_ids(rows: list[dict]) -> list[dict]:
    """Rows with unique ids (resuming and scoring match predictions to rows by id): a repeated id gets the first free
    name of id#2, id#3, ... that no row of the data uses, the same on every run over the same data."""
    taken = {str(r["id"]) for r in rows}
    seen: Counter = Counter()
    out, renamed = [], 0
    for r in rows:
        rid = str(r["id"])
        seen[rid] += 1
        if seen[rid] > 1:
            k = seen[rid]
            while f"{rid}#{k}" in taken:
                k += 1
            seen[rid] = k
            rid = f"{rid}#{k}"
            taken.add(rid)
            renamed += 1
        out.append({"id": rid, "document": r["document"], "summary": r["summary"]})
    if renamed:
        log.warning("%d row(s) repeat an earlier id; each was given the first free name of id#2, id#3, ...", renamed)
    return out


PREDICTION_ROW = Obj(
    id=Str(10_000),
    prediction=Str(10**7),
    reference=Str(10**7),
    document=Opt(Str(10**8)),
    gen_seconds=Opt(Num(0)),
    new_tokens=Opt(Int()),
    hit_max_new_tokens=Opt(Bool()),
    truncated_input=Opt(Bool()),
    method=Opt(Str(50)),
    diagnostics=Opt(Map(Any())),
).require("id", "prediction", "reference")


def read_predictions(path: Path) -> dict[str, dict]:
    """Rows already written, by id, each checked (a hand-edited file is input like any other: a row of the wrong
    shape is one message naming the line and the key). A torn last line (the process was killed mid-write) is
    dropped and the file rewritten without it, so appending continues cleanly."""
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    lines = text.split("\n")
    rows: dict[str, dict] = {}
    last = max((i for i, l in enumerate(lines) if l.strip()), default=-1)
    torn = False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = loads(line, f"{path}, line {i + 1}")
        except UserError:
            if i == last:
                torn = True
                log.warning("%s: dropping a cut-off last line (the previous run stopped while writing it)", path)
                continue
            raise UserError(
                f"{path}, line {i + 1}: not a prediction row (not JSON); delete the file to evaluate from scratch"
            ) from None
        check_shape(row, PREDICTION_ROW, f"{path}, line {i + 1}")
        if row["id"] in rows:
            raise UserError(
                f"{path}, line {i + 1}: id {row['id']!r} is already on an earlier line; delete the file to evaluate "
                f"from scratch"
            )
        rows[row["id"]] = row
    if torn or (text and not text.endswith("\n")):
        write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.values()))
    return rows


@dataclass
class GenStats:
    reused: int
    generated: int
    seconds: float


def generate_missing(
    loaded, model, rows: list[dict], path: Path, max_new_tokens: int, label: str, protocol: Optional[Protocol] = None
) -> GenStats:
    """Generate the rows not yet in `path`, appending each row (flushed) as soon as its summary is final."""
    done = read_predictions(path)
    todo = [r for r in rows if r["id"] not in done]
    reused = len(rows) - len(todo)
    if reused:
        log.info(
            "%s: %d of %d predictions already in %s; generating the other %d", label, reused, len(rows), path, len(todo)
        )
    # Longest documents first, so each batch holds similar lengths (less padding).
    todo.sort(key=lambda r: -len(r["document"]))
    batch = AdaptiveBatch(loaded.cfg.eval.batch_size)  # an OOM's smaller size holds for the following chunks
    # rows per generation call: continuous batching refills the batch within one; a chunked document is written when
    # its last merge round ends, so an interruption loses at most one group's long documents
    group = batch.size * 8
    names = [f"{label} row id {r['id']}" for r in todo]
    check_documents(loaded, [r["document"] for r in todo], max_new_tokens, names)  # refusals before any generation
    tokenizer = (protocol or Protocol()).tokenizer
    t_all = time.perf_counter()
    next_log = time.perf_counter() + 30
    with open(path, "a", encoding="utf-8") as f, progress.bar(len(todo), f"evaluate ({label})", "summary") as b:
        last = [time.perf_counter()]

        def write(r: dict, g) -> None:
            now = time.perf_counter()
            # the document travels with its summary, so `llm-summarizer score` on this file gives the statistics
            # against it too
            diag = diagnostics.example(g.text, r["document"], r["summary"], g.hit_max, tokenizer)
            row = {
                "id": r["id"],
                "document": r["document"],
                "reference": r["summary"],
                "prediction": g.text,
                **score_pair(r["summary"], g.text, protocol),
                "diagnostics": diag,
                "new_tokens": g.new_tokens,
                "hit_max_new_tokens": g.hit_max,
                "truncated_input": g.truncated_input,
                "method": g.method,
                # the time since the previous row was written: the rows' shares add up to the whole
                "gen_seconds": round(now - last[0], 6),
            }
            if g.tree is not None:
                row["chunks"] = g.tree
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            b.update(1)
            last[0] = now

        for start in range(0, len(todo), group):
            part = todo[start : start + group]
            summarize_texts(
                loaded,
                [r["document"] for r in part],
                max_new_tokens,
                model=model,
                batch=batch,
                names=names[start : start + group],
                on_done=lambda i, g, part=part: write(part[i], g),
            )
            if time.perf_counter() > next_log:
                log.info("%s: %d/%d generated", label, min(start + group, len(todo)), len(todo))
                next_log = time.perf_counter() + 30
    return GenStats(reused, len(todo), time.perf_counter() - t_all)


def _weights_fingerprint(path: Path) -> list:
    """The weight files by content, so evaluating a copy of a model resumes, and a retrained one does not."""
    return [[name, file_digest(path / name)] for name in weight_files(path)]


def _prompt(cfg: Config, formatter, window: Optional[int] = None) -> dict:
    return {
        "template": "the tokenizer's chat template" if formatter.use_chat else "plain text",
        "data.template": cfg.data.template,
        "instruction": cfg.data.instruction,
        "prompt_template": cfg.data.prompt_template,
        "max_seq_length": cfg.model.max_seq_length,
        "document_truncation": f"{cfg.data.truncation}: the document is cut (in tokens) so that the prompt "
        f"plus max_new_tokens fit max_seq_length, the rule used in training",
        "long_documents": long_documents(cfg, window),
    }


def long_documents(cfg: Config, window: Optional[int] = None) -> str:
    """What happens to a document over the token budget, in words (eval.long_documents), with the window and the
    overlap as they are applied when `window` (the document tokens a window holds) is known."""
    ev = cfg.eval
    if ev.long_documents != "chunk":
        return "truncate: cut by data.truncation (document_truncation)"
    if window is not None:
        size = f"{window} document tokens" + (f" (eval.chunk_tokens={ev.chunk_tokens})" if ev.chunk_tokens else "")
        overlap = applied_overlap(ev.chunk_overlap, window)
        said = (
            f" (eval.chunk_overlap={ev.chunk_overlap}, at most a quarter of a window)"
            if overlap != ev.chunk_overlap
            else ""
        )
        overlap_text = f"{overlap} tokens of overlap{said}"
    else:
        size = (
            f"{ev.chunk_tokens} tokens"
            if ev.chunk_tokens
            else f"the model's context (at most eval.max_window_tokens={ev.max_window_tokens} with prompt and summary)"
        )
        overlap_text = f"{ev.chunk_overlap} tokens of overlap at most"
    dedup = ", sentences that repeat an earlier one dropped" if ev.dedup_sentences else ""
    if ev.chunk_strategy == "refine":
        prompt = ev.refine_instruction or "its own prompt (models/chunked.py REFINE_INSTRUCTION)"
        return (
            f"chunk (refine): windows of {size} less the summary so far, cut at line and sentence ends, "
            f"{overlap_text}; the first summarized, each next one read with the summary so far under {prompt!r}"
            f"{dedup} (at most {ev.max_chunks} windows per document)"
        )
    merge = ev.merge_instruction or "its own prompt (models/chunked.py MERGE_INSTRUCTION)"
    return (
        f"chunk (map_reduce): windows of {size} cut at line and sentence ends, {overlap_text}, each "
        f"summarized, then the joined summaries in at most {ev.max_merge_rounds} merge rounds under {merge!r}{dedup} "
        f"(at most {ev.max_chunks} windows per document)"
    )


def _digest(obj) -> str:
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
    ).hexdigest()


PROBE = "A probe document: its prompt, token by token, stands for the prompt of every document."


def settings_for(loaded, source: str, split: str, max_new_tokens: int, max_new_source: str, rows: list[dict]) -> dict:
    """What earlier predictions must have been made with to be reused: the model's weights, the data rows (their
    content, not the file's path), the prompt and the generation settings, each as it is or as a digest."""
    cfg, tok = loaded.cfg, loaded.tokenizer
    prompt = _prompt(cfg, loaded.formatter, chunk_window(loaded, max_new_tokens))
    probe = loaded.formatter.generation_prompt(PROBE, max_new_tokens)[0]
    return {
        "model": str(loaded.info.path.resolve()),
        "weights": _weights_fingerprint(loaded.info.path),
        "base_model": loaded.info.base,
        "backend": loaded.backend,
        "dtype": loaded.dtype,
        "quantized": loaded.quantized,
        "data": source,
        "data_rows": _digest([[r["id"], r["document"], r["summary"]] for r in rows]),
        "split": split,
        "decoding": GenerationRecord.made(
            cfg.eval, loaded.backend, max_new_tokens, max_new_source, loaded.formatter, tok
        ).to_dict(),
        "prompt": prompt,
        "prompt_digest": _digest([prompt, getattr(tok, "chat_template", None), probe]),
    }


def check_settings(out: Path, settings: dict) -> None:
    """Reuse predictions only from the same evaluation, never mix two into one file: a sound record that differs is a
    refusal; a damaged, old or missing one means the earlier predictions cannot be matched, so none is reused (they
    are kept aside, said in one line)."""
    p = out / EVAL_SETTINGS
    preds = [f for f in (out / PREDICTIONS, out / BASE_PREDICTIONS) if f.exists()]
    old, why = None, None
    if p.is_file():
        try:
            old = read_model_file(p, EVAL_SETTINGS_SHAPE)
        except UserError as e:
            why = str(e)
    elif preds:
        why = f"there is no {EVAL_SETTINGS} beside them"
    if old is not None:
        # the model is known by its weights' content: a moved or copied model directory is the same model
        differs = sorted(k for k in set(old) | set(settings) if k != "model" and old.get(k) != settings.get(k))
        if differs and preds:
            raise UserError(
                f"--output {out} holds predictions of a different evaluation (differs in: "
                f"{', '.join(differs)}); choose another --output, or delete {out} to start over"
            )
    elif preds:
        kept = [_set_aside(f) for f in preds]
        log.warning(
            "%s: the earlier predictions cannot be matched to this evaluation (%s): none is reused; kept as %s",
            out,
            why,
            ", ".join(k.name for k in kept),
        )
    claim(out, "evaluation")
    write_json(p, settings)


def _set_aside(f: Path) -> Path:
    k = 1
    while (f.parent / f"{f.stem}.unverified-{k}{f.suffix}").exists():
        k += 1
    dest = f.parent / f"{f.stem}.unverified-{k}{f.suffix}"
    os.replace(f, dest)
    return dest


def default_output(info, split: str) -> Path:
    return Path(EVALUATIONS_DIR) / info.name / split


def _ordered(rows: list[dict], path: Path) -> list[dict]:
    have = read_predictions(path)
    return [have[r["id"]] for r in rows]


def evaluate_model(
    model,
    data=None,
    split: str = "test",
    output=None,
    limit: Optional[int] = None,
    compare_base: bool = False,
    backend: Optional[str] = None,
    base: Optional[str] = None,
    overrides: Optional[list[str]] = None,
    report: bool = True,
) -> EvalResult:
    """Evaluate a saved model directory; the Python face of `llm-summarizer evaluate`."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    # 1. The model directory, checked from its files before anything heavy.
    info = saved_model(model, base)
    if compare_base and info.kind == "merged" and not info.base:
        raise UserError(
            f"--compare-base: {info.path} is a merged model that does not record its base model "
            f"(export_info.json base_model); pass --base /path/to/base/model"
        )
    cfg = model_config(info, overrides)
    out = Path(output) if output else default_output(info, split)
    check_places([Place("--output", out, "evaluation")], [("--model", info.path), ("--data", data)])
    # 2. The examples, validated like training data.
    rows, source, summary_col = load_eval_rows(cfg, data, split, limit)
    # the protocol of the per-example scores written with each prediction (said before generating)
    protocol = protocol_for([r["summary"] for r in rows], cfg.eval.rouge_tokenizer, cfg.eval.rouge_lsum_split)
    warn_empty_references([r["summary"] for r in rows], protocol, split)
    # 3. The model, and the settings that decide whether earlier predictions can be reused.
    loaded = load_for_generation(model, backend, base, overrides, info=info)
    max_new, max_new_source = default_max_new_tokens(loaded)
    check_settings(out, settings_for(loaded, source, split, max_new, max_new_source, rows))
    # 4. Generate what is missing, for the model and (with --compare-base) its base.
    stats = {"model": generate_missing(loaded, loaded.model, rows, out / PREDICTIONS, max_new, "model", protocol)}
    if compare_base:
        if info.kind == "adapter":
            with loaded.base_model() as base_model:
                stats["base"] = generate_missing(
                    loaded, base_model, rows, out / BASE_PREDICTIONS, max_new, "base", protocol
                )
        else:
            base_loaded = load_base_for_generation(loaded)
            loaded.model = None
            gc.collect()
            stats["base"] = generate_missing(
                base_loaded, base_loaded.model, rows, out / BASE_PREDICTIONS, max_new, "base", protocol
            )
            del base_loaded

    # 5. Scores with bootstrap intervals (paired for the difference), in the data's order, against the data's own
    # documents and references (predictions written before the files carried the documents count the same).
    def scored_rows(path: Path) -> list[dict]:
        return [{**p, "document": r["document"], "reference": r["summary"]} for r, p in zip(rows, _ordered(rows, path))]

    model_rows = scored_rows(out / PREDICTIONS)
    base_rows = scored_rows(out / BASE_PREDICTIONS) if compare_base else None
    scoring = ScoreSettings.from_eval(cfg.eval)
    scored = score_predictions(model_rows, scoring, base_rows, warn=False)
    results, diag = scored.results, scored.statistics
    settings = read_model_file(out / EVAL_SETTINGS, EVAL_SETTINGS_SHAPE)
    metrics = {
        "model": loaded.describe(),
        "data": {
            "source": source,
            "split": split,
            "examples": len(rows),
            "limit": limit,
            # how each summary was made: the document fit (whole), was cut (truncated) or chunked
            "summaries_by_method": dict(
                Counter(p.get("method") or ("truncated" if p.get("truncated_input") else "whole") for p in model_rows)
            ),
        },
        "results": results,
        "protocol": {
            **scoring_protocol(
                scored,
                scoring,
                f"the dataset's '{summary_col}' column (one reference per example)",
                "model, base and their difference use the same resampled examples",
            ),
            "split": split,
            "source": source,
            "decoding": settings["decoding"],
            "prompt": settings["prompt"],
            "precision": loaded.dtype + (f", base loaded {loaded.quantized}" if loaded.quantized else ""),
        },
        "generation": {
            k: {"reused": s.reused, "generated": s.generated, "seconds": round(s.seconds, 2)} for k, s in stats.items()
        },
        "versions": package_versions(),
    }
    write_json(out / METRICS_FILE, metrics)
    # 6. The report.
    report_path = None
    if report:
        report_path = write_eval_report(
            out, metrics, model_rows, base_rows, find_log_history(info), train_metrics=info.metrics, diagnostics=diag
        )
    return EvalResult(out, metrics, out / PREDICTIONS, out / BASE_PREDICTIONS if compare_base else None, report_path)
