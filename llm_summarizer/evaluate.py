"""Evaluate a saved model on a split: ROUGE with bootstrap confidence intervals, optionally against its base.

    python -m llm_summarizer.evaluate --model fine_tuned/demo --data data/demo/test.jsonl
    python -m llm_summarizer.evaluate --model fine_tuned/demo --data data/demo/test.jsonl --compare-base
    python -m llm_summarizer.evaluate --model fine_tuned/demo                  # data.test of the model's config.yaml
    python -m llm_summarizer.evaluate --model fine_tuned/demo-merged-16bit --data data/demo --split validation
    python -m llm_summarizer.evaluate --model fine_tuned/my-run --data knkarthick/dialogsum --split test --limit 500
    python -m llm_summarizer.evaluate --model fine_tuned/demo --data data/demo/test.jsonl eval.num_beams=4 eval.batch_size=32

--model is any saved model directory: a LoRA adapter (its base is loaded from adapter_config.json, or
--base) or a merged model. --data is anything the training data pipeline reads: a JSONL/JSON/CSV/TSV/
parquet file, a directory (the file named after --split when there is one), or a hub dataset name.
Writes to --output (default evaluations/<model>/<split>/):

    predictions.jsonl        id, reference, prediction, per-example ROUGE, generated tokens (appended as
                             batches finish: rerunning an interrupted evaluation generates only the rest)
    predictions_base.jsonl   the same for the base model, with --compare-base
    metrics.json             ROUGE-1/2/L/Lsum F1 with bootstrap 95% intervals, lengths, truncation share,
                             throughput, the base model and the paired difference, and the protocol
    report.md, plots/*.png   the same as pictures

Decoding and prompt settings come from the model's config.yaml; `key=value` arguments override them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import ROUGE_KEYS, Config, SourceSpec, UserError

log = logging.getLogger("llm_summarizer.evaluate")

PREDICTIONS = "predictions.jsonl"
BASE_PREDICTIONS = "predictions_base.jsonl"
METRICS = "metrics.json"
SETTINGS = "eval_settings.json"


@dataclass
class EvalResult:
    output_dir: Path
    metrics: dict
    predictions: Path
    base_predictions: Optional[Path] = None
    report: Optional[Path] = None


# ---------------------------------------------------------------------------------------------
# The examples


def _source_spec(data) -> SourceSpec:
    from pydantic import ValidationError

    from .config import _coerce_source

    if isinstance(data, SourceSpec):
        return data
    try:
        return SourceSpec.model_validate(_coerce_source(str(data) if isinstance(data, os.PathLike) else data))
    except ValidationError as e:
        raise UserError(f"--data {data!r}: {e.errors()[0]['msg']}") from None


def _split_file(directory: Path, split: str) -> Optional[Path]:
    from .data import SUPPORTED_SUFFIXES

    for suffix in SUPPORTED_SUFFIXES:
        p = directory / f"{split}{suffix}"
        if p.is_file():
            return p
    return None


def load_eval_rows(cfg: Config, data=None, split: str = "test", limit: Optional[int] = None):
    """(rows [{id, document, summary}], source description, summary column) for the evaluation."""
    from . import data as D

    if data is None:
        if split not in ("train", "validation", "test"):
            raise UserError(f"--split {split!r}: without --data the split must be train, validation or test "
                            f"(read from the model's config.yaml)")
        spec = getattr(cfg.data, split)
        if spec is not None:  # read only this split (a hub train split can be large)
            split_raw = D.validate_rows(D.read_source(spec, split, cfg.data), cfg.data.on_bad_rows)
        else:  # held out of train by the seeded split training used
            if cfg.data.train is None:
                raise UserError(f"the model's config.yaml names no data.{split}; pass --data SOURCE")
            raw = D.load_raw_splits(cfg)
            if split not in raw:
                raise UserError(f"the model's config.yaml has no data.{split} (and no {split}_size carved from "
                                f"train); pass --data SOURCE")
            split_raw = raw[split]
    else:
        spec = _source_spec(data)
        if spec.path is not None:
            p = Path(os.path.expanduser(spec.path))
            if p.is_dir() and _split_file(p, split) is not None:
                spec = spec.model_copy(update={"path": str(_split_file(p, split))})
        elif spec.split is None:
            spec = spec.model_copy(update={"split": split})
        split_raw = D.validate_rows(D.read_source(spec, split, cfg.data), cfg.data.on_bad_rows)
    rows = split_raw.rows[:limit] if limit else split_raw.rows
    if not rows:
        raise UserError(f"--data {data or 'data.' + split}: no usable rows to evaluate (dropped: {dict(split_raw.dropped)})")
    summary_col = split_raw.columns[1] if len(split_raw.columns) > 1 else "summary"
    return _unique_ids(rows), split_raw.source, summary_col


def _unique_ids(rows: list[dict]) -> list[dict]:
    # Resuming matches predictions to rows by id, so ids must be unique.
    seen: Counter = Counter()
    out = []
    for r in rows:
        seen[r["id"]] += 1
        rid = r["id"] if seen[r["id"]] == 1 else f"{r['id']}#{seen[r['id']]}"
        out.append({"id": rid, "document": r["document"], "summary": r["summary"]})
    dup = sum(1 for v in seen.values() if v > 1)
    if dup:
        log.warning("%d id(s) occur more than once in the data; repeats are numbered id#2, id#3, ...", dup)
    return out


# ---------------------------------------------------------------------------------------------
# Resumable generation


def read_predictions(path: Path) -> dict[str, dict]:
    """Rows already written, by id. A torn last line (the process was killed mid-write) is dropped and
    the file rewritten without it, so appending continues cleanly."""
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    rows: dict[str, dict] = {}
    last = max((i for i, l in enumerate(lines) if l.strip()), default=-1)
    torn = False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "id" not in row or "prediction" not in row:
                raise ValueError("not a prediction row")
        except ValueError:
            if i == last:
                torn = True
                log.warning("%s: dropping a cut-off last line (the previous run stopped while writing it)", path)
                continue
            raise UserError(f"{path}, line {i + 1}: not a prediction row; delete the file to evaluate from scratch") from None
        rows.setdefault(str(row["id"]), row)
    if torn or (text and not text.endswith("\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.values()), encoding="utf-8")
        os.replace(tmp, path)
    return rows


@dataclass
class GenStats:
    reused: int
    generated: int
    seconds: float


def generate_missing(loaded, model, rows: list[dict], path: Path, max_new_tokens: int, label: str) -> GenStats:
    """Generate the rows not yet in `path`, appending each batch (flushed) as soon as it is done."""
    from .inference import summarize_texts
    from .scoring import score_pair

    done = read_predictions(path)
    todo = [r for r in rows if r["id"] not in done]
    reused = len(rows) - len(todo)
    if reused:
        log.info("%s: %d of %d predictions already in %s; generating the other %d", label, reused, len(rows),
                 path, len(todo))
    # Longest documents first, so each batch holds similar lengths (less padding).
    todo.sort(key=lambda r: -len(r["document"]))
    bs = loaded.cfg.eval.batch_size
    t_all = time.perf_counter()
    next_log = time.perf_counter() + 30
    with open(path, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), bs):
            chunk = todo[start: start + bs]
            t0 = time.perf_counter()
            gens = summarize_texts(loaded, [r["document"] for r in chunk], max_new_tokens, batch_size=bs, model=model)
            share = (time.perf_counter() - t0) / len(chunk)
            for r, g in zip(chunk, gens):
                f.write(json.dumps({"id": r["id"], "reference": r["summary"], "prediction": g.text,
                                    **score_pair(r["summary"], g.text), "new_tokens": g.new_tokens,
                                    "hit_max_new_tokens": g.hit_max, "truncated_input": g.truncated_input,
                                    "gen_seconds": round(share, 6)}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            if time.perf_counter() > next_log:
                log.info("%s: %d/%d generated", label, start + len(chunk), len(todo))
                next_log = time.perf_counter() + 30
    return GenStats(reused, len(todo), time.perf_counter() - t_all)


# ---------------------------------------------------------------------------------------------
# Scores with confidence intervals


def _bootstrap_means(values, idx_batches):
    """Means of `values` (n, k) over each resample of example indices; (B, k)."""
    import numpy as np

    return np.concatenate([values[idx].mean(axis=1) for idx in idx_batches], axis=0)


def _resamples(n: int, samples: int, seed: int, batch: int = 100):
    """The resampled index sets, regenerated identically for each use (same seed = paired)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    left = samples
    while left > 0:
        b = min(batch, left)
        yield rng.integers(0, n, size=(b, n))
        left -= b


def _interval(boot) -> list:
    import numpy as np

    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return [[float(a), float(b)] for a, b in zip(lo, hi)]


def _words(text: str) -> int:
    return len(text.split())


def _length_stats(xs: list[int]) -> dict:
    if not xs:
        return {}
    s = sorted(xs)
    return {"mean": round(sum(s) / len(s), 2), "median": s[len(s) // 2], "p95": s[min(len(s) - 1, int(len(s) * 0.95))],
            "min": s[0], "max": s[-1]}


def score_block(rows: list[dict], samples: int, seed: int) -> dict:
    """ROUGE means with bootstrap 95% intervals, lengths, truncation share and throughput."""
    import numpy as np

    from .scoring import score_corpus

    means, per = score_corpus([r["reference"] for r in rows], [r["prediction"] for r in rows])
    values = np.array([[p[k] for k in ROUGE_KEYS] for p in per], dtype=float)
    ci = _interval(_bootstrap_means(values, _resamples(len(rows), samples, seed)))
    n = len(rows)
    seconds = sum(float(r.get("gen_seconds") or 0.0) for r in rows)
    new_tokens = sum(int(r.get("new_tokens") or 0) for r in rows)
    block = {k: {"f1": float(means[k]), "ci95": ci[i]} for i, k in enumerate(ROUGE_KEYS)}
    block.update({
        "examples": n,
        "lengths_words": {"prediction": _length_stats([_words(r["prediction"]) for r in rows]),
                          "reference": _length_stats([_words(r["reference"]) for r in rows])},
        "generated_tokens_mean": round(new_tokens / n, 2),
        "hit_max_new_tokens_share": sum(bool(r.get("hit_max_new_tokens")) for r in rows) / n,
        "truncated_input_share": sum(bool(r.get("truncated_input")) for r in rows) / n,
        "empty_predictions": sum(1 for r in rows if not r["prediction"].strip()),
        "throughput": {"examples_per_s": round(n / seconds, 3) if seconds else None,
                       "generated_tokens_per_s": round(new_tokens / seconds, 2) if seconds else None,
                       "generation_seconds": round(seconds, 2)},
    })
    return block


def paired_difference(rows: list[dict], base_rows: list[dict], samples: int, seed: int) -> dict:
    """model - base per ROUGE type, with a paired bootstrap: the same resampled examples for both."""
    import numpy as np

    from .scoring import score_corpus

    _, per_m = score_corpus([r["reference"] for r in rows], [r["prediction"] for r in rows])
    _, per_b = score_corpus([r["reference"] for r in base_rows], [r["prediction"] for r in base_rows])
    d = np.array([[m[k] - b[k] for k in ROUGE_KEYS] for m, b in zip(per_m, per_b)], dtype=float)
    boot = _bootstrap_means(d, _resamples(len(rows), samples, seed))
    ci = _interval(boot)
    return {k: {"diff": float(d[:, i].mean()), "ci95": ci[i],
                "share_of_resamples_not_better": float((boot[:, i] <= 0).mean())} for i, k in enumerate(ROUGE_KEYS)}


# ---------------------------------------------------------------------------------------------
# Settings, protocol, output


def _file_digest(p: Path, whole_below: int = 256 << 20, chunk: int = 1 << 20, samples: int = 16) -> str:
    """sha256 of the whole file when small (adapters), else of its size and evenly spaced 1 MiB chunks:
    a retrained model is noticed, a copied one (new path, new modification time) is the same model."""
    import hashlib

    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        if size <= whole_below:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
        else:
            for i in range(samples):
                f.seek((size - chunk) * i // (samples - 1))
                h.update(f.read(chunk))
    return h.hexdigest()


def _weights_fingerprint(path: Path) -> list:
    """The weight files by content, so evaluating a copy of a model resumes, and a retrained one does not."""
    from .inference import ADAPTER_WEIGHTS, FULL_WEIGHTS

    names = [n for n in ADAPTER_WEIGHTS + FULL_WEIGHTS if (path / n).is_file()]
    shards = sorted(p.name for pat in ("model-*.safetensors", "pytorch_model-*.bin") for p in path.glob(pat))
    return [[name, _file_digest(path / name)] for name in names + shards]


def _decoding(ev, max_new_tokens: int, source: str, stop_ids, tokenizer) -> dict:
    d = {"strategy": "sampling" if ev.do_sample else ("beam search" if ev.num_beams > 1 else "greedy"),
         "num_beams": ev.num_beams, "do_sample": ev.do_sample, "max_new_tokens": max_new_tokens,
         "max_new_tokens_source": source,
         "stop_tokens": [tokenizer.convert_ids_to_tokens(i) for i in stop_ids],
         "batching": f"batches of {ev.batch_size}, left padding"}
    if ev.do_sample:
        d.update(temperature=ev.temperature, top_p=ev.top_p, seed=ev.sample_seed)
    return d


def _prompt(cfg: Config, formatter) -> dict:
    return {"template": "the tokenizer's chat template" if formatter.use_chat else "plain text",
            "data.template": cfg.data.template, "instruction": cfg.data.instruction,
            "prompt_template": cfg.data.prompt_template, "max_seq_length": cfg.model.max_seq_length,
            "document_truncation": f"{cfg.data.truncation}: the document is cut (in tokens) so that the prompt "
                                   f"plus max_new_tokens fit max_seq_length, the rule used in training"}


def settings_for(loaded, source: str, split: str, max_new_tokens: int, max_new_source: str) -> dict:
    cfg = loaded.cfg
    return {"model": str(loaded.info.path.resolve()), "weights": _weights_fingerprint(loaded.info.path),
            "base_model": loaded.info.base, "backend": loaded.backend, "dtype": loaded.dtype,
            "quantized": loaded.quantized, "data": source, "split": split,
            "decoding": _decoding(cfg.eval, max_new_tokens, max_new_source, loaded.formatter.stop_ids, loaded.tokenizer),
            "prompt": _prompt(cfg, loaded.formatter)}


def check_settings(out: Path, settings: dict) -> None:
    """Reuse predictions only from the same evaluation; never mix two into one file."""
    p = out / SETTINGS
    has_preds = (out / PREDICTIONS).exists() or (out / BASE_PREDICTIONS).exists()
    if p.is_file():
        try:
            old = json.loads(p.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if old is not None:
            # the model is known by its weights' content: a moved or copied model directory is the same model
            differs = sorted(k for k in set(old) | set(settings) if k != "model" and old.get(k) != settings.get(k))
            if differs and has_preds:
                raise UserError(f"--output {out} holds predictions of a different evaluation (differs in: "
                                f"{', '.join(differs)}); choose another --output, or delete {out} to start over")
    elif has_preds:
        raise UserError(f"--output {out} holds predictions but no {SETTINGS}, so they cannot be matched to this "
                        f"evaluation; choose another --output, or delete {out} to start over")
    from .artifacts import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(p, settings)


def default_output(info, split: str) -> Path:
    return Path("evaluations") / info.name / split


def _ordered(rows: list[dict], path: Path) -> list[dict]:
    have = read_predictions(path)
    return [have[r["id"]] for r in rows]


def _fmt_block(b: dict) -> str:
    return "  ".join(f"{k} {100 * b[k]['f1']:.2f} [{100 * b[k]['ci95'][0]:.2f}, {100 * b[k]['ci95'][1]:.2f}]"
                     for k in ROUGE_KEYS)


def _print_summary(m: dict, out: Path, report: Optional[Path]) -> None:
    r = m["results"]
    print(f"\n== llm_summarizer: evaluation of {m['model']['path']} on {m['data']['split']} "
          f"({m['data']['source']}), {m['data']['examples']} examples, F1 x 100 [95% CI]")
    print(f"   model:        {_fmt_block(r['model'])}")
    if "base" in r:
        print(f"   base:         {_fmt_block(r['base'])}")
        d = r["model_minus_base"]
        print("   model - base: " + "  ".join(
            f"{k} {100 * d[k]['diff']:+.2f} [{100 * d[k]['ci95'][0]:+.2f}, {100 * d[k]['ci95'][1]:+.2f}]" for k in ROUGE_KEYS))
    t = r["model"]["throughput"]
    print(f"   stopped at max_new_tokens: {100 * r['model']['hit_max_new_tokens_share']:.1f}%   "
          f"inputs truncated: {100 * r['model']['truncated_input_share']:.1f}%   "
          f"throughput: {t['examples_per_s']} examples/s, {t['generated_tokens_per_s']} generated tokens/s")
    print(f"   wrote: {out / PREDICTIONS}, {out / METRICS}" + (f", {report} (+ plots/)" if report else ""))


def evaluate_model(model, data=None, split: str = "test", output=None, limit: Optional[int] = None,
                   compare_base: bool = False, backend: Optional[str] = None, base: Optional[str] = None,
                   overrides: Optional[list[str]] = None, report: bool = True) -> EvalResult:
    """Evaluate a saved model directory; the Python face of `python -m llm_summarizer.evaluate`."""
    import gc

    from . import inference
    from .artifacts import package_versions, write_json
    from .scoring import PROTOCOL

    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    # 1. The model directory, checked from its files before anything heavy.
    info = inference.describe_model_dir(model, base)
    if compare_base and info.kind == "merged" and not info.base:
        raise UserError(f"--compare-base: {info.path} is a merged model that does not record its base model "
                        f"(export_info.json base_model); pass --base /path/to/base/model")
    cfg = inference.model_config(info, overrides)
    if (backend or cfg.model.backend) == "unsloth":
        from .model import import_unsloth

        import_unsloth()  # before the data pipeline imports transformers
    # 2. The examples, validated like training data.
    rows, source, summary_col = load_eval_rows(cfg, data, split, limit)
    out = Path(output) if output else default_output(info, split)
    # 3. The model, and the settings that decide whether earlier predictions can be reused.
    loaded = inference.load_for_generation(model, backend, base, overrides, info=info)
    max_new, max_new_source = inference.default_max_new_tokens(loaded)
    check_settings(out, settings_for(loaded, source, split, max_new, max_new_source))
    # 4. Generate what is missing, for the model and (with --compare-base) its base.
    stats = {"model": generate_missing(loaded, loaded.model, rows, out / PREDICTIONS, max_new, "model")}
    if compare_base:
        if info.kind == "adapter":
            with loaded.base_model() as base_model:
                stats["base"] = generate_missing(loaded, base_model, rows, out / BASE_PREDICTIONS, max_new, "base")
        else:
            base_loaded = inference.load_base_for_generation(loaded)
            loaded.model = None
            gc.collect()
            stats["base"] = generate_missing(base_loaded, base_loaded.model, rows, out / BASE_PREDICTIONS, max_new, "base")
            del base_loaded
    # 5. Scores with bootstrap intervals (paired for the difference), in the data's order.
    ev = cfg.eval
    model_rows = _ordered(rows, out / PREDICTIONS)
    results = {"model": score_block(model_rows, ev.bootstrap_samples, ev.bootstrap_seed)}
    base_rows = None
    if compare_base:
        base_rows = _ordered(rows, out / BASE_PREDICTIONS)
        results["base"] = score_block(base_rows, ev.bootstrap_samples, ev.bootstrap_seed)
        results["model_minus_base"] = paired_difference(model_rows, base_rows, ev.bootstrap_samples, ev.bootstrap_seed)
    settings = json.loads((out / SETTINGS).read_text(encoding="utf-8"))
    metrics = {
        "model": loaded.describe(),
        "data": {"source": source, "split": split, "examples": len(rows), "limit": limit},
        "results": results,
        "protocol": {**PROTOCOL, "split": split, "source": source, "examples": len(rows),
                     "reference": f"the dataset's '{summary_col}' column (one reference per example)",
                     "decoding": settings["decoding"], "prompt": settings["prompt"],
                     "precision": loaded.dtype + (f", base loaded {loaded.quantized}" if loaded.quantized else ""),
                     "bootstrap": {"resamples": ev.bootstrap_samples, "seed": ev.bootstrap_seed,
                                   "interval": "95% percentile interval of the mean over resampled examples",
                                   "paired": "model, base and their difference use the same resampled examples"}},
        "generation": {k: {"reused": s.reused, "generated": s.generated, "seconds": round(s.seconds, 2)}
                       for k, s in stats.items()},
        "versions": package_versions(),
    }
    write_json(out / METRICS, metrics)
    # 6. The report.
    report_path = None
    if report:
        from .report import find_log_history, write_eval_report

        report_path = write_eval_report(out, metrics, model_rows, base_rows, find_log_history(info),
                                        train_metrics=info.metrics)
    _print_summary(metrics, out, report_path)
    return EvalResult(out, metrics, out / PREDICTIONS, out / BASE_PREDICTIONS if compare_base else None, report_path)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m llm_summarizer.evaluate", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n")[2:]))
    ap.add_argument("--model", required=True, help="saved model directory (LoRA adapter or merged model)")
    ap.add_argument("--data", help="file, directory or hub dataset; default: data.<split> of the model's config.yaml")
    ap.add_argument("--split", default="test", help="split name (default test): the hub split, or <split>.* in a directory")
    ap.add_argument("--output", help="output directory (default evaluations/<model>/<split>/)")
    ap.add_argument("--limit", type=int, help="evaluate only the first N rows")
    ap.add_argument("--compare-base", action="store_true", help="also evaluate the base model; paired differences")
    ap.add_argument("--backend", choices=["unsloth", "transformers"], help="default: the backend of the model's config")
    ap.add_argument("--base", help="base model of an adapter (or of a merged model, for --compare-base)")
    ap.add_argument("--no-report", action="store_true", help="skip report.md and the plots")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. eval.batch_size=32 eval.num_beams=4")
    return ap


def main(argv=None) -> int:
    from .cli import run_cli

    def go(args, _cfg):
        evaluate_model(args.model, args.data, args.split, args.output, args.limit, args.compare_base,
                       args.backend, args.base, args.overrides, report=not args.no_report)
        return 0

    return run_cli(build_parser(), go, argv)


if __name__ == "__main__":
    raise SystemExit(main())
