"""Evaluate a saved model on a split: ROUGE with bootstrap confidence intervals, optionally against its base.

    llm-summarizer evaluate --model fine_tuned/demo --data data/demo/test.jsonl
    llm-summarizer evaluate --model fine_tuned/demo --data data/demo/test.jsonl --compare-base
    llm-summarizer evaluate --model fine_tuned/demo                  # data.test of the model's config.yaml
    llm-summarizer evaluate --model fine_tuned/demo-merged-16bit --data data/demo --split validation
    llm-summarizer evaluate --model fine_tuned/my-run --data knkarthick/dialogsum --split test --limit 500
    llm-summarizer evaluate --model fine_tuned/demo --data data/demo/test.jsonl eval.num_beams=4 eval.batch_size=32

--model is any saved model directory: a LoRA adapter (its base is loaded from adapter_config.json, or
--base) or a merged model. --data is anything the training data pipeline reads: a JSONL/JSON/CSV/TSV/
parquet file, a directory (the file named after --split when there is one), or a hub dataset name.
Writes to --output (default evaluations/<model>/<split>/):

    predictions.jsonl        id, document, reference, prediction, per-example ROUGE and statistics, generated
                             tokens (appended as batches finish: rerunning an interrupted evaluation generates
                             only the rest; `llm-summarizer score` reads it as it is)
    predictions_base.jsonl   the same for the base model, with --compare-base
    metrics.json             ROUGE-1/2/L/Lsum F1 with bootstrap 95% intervals, lengths, truncation share,
                             throughput, the base model and the paired difference, and the protocol; the
                             statistics of each summary against its document (copying, numbers and names not
                             in the document, repetition, length, endings) with intervals, and the references'
                             own values against their documents
    report.md, plots/*.png   the same as pictures (coverage vs density of each summary included)

Decoding and prompt settings come from the model's config.yaml; `key=value` arguments override them.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Optional

from ..contracts import RunMetrics
from ..layout import METRICS_FILE, PREDICTIONS
from . import boot

log = logging.getLogger("llm_summarizer.evaluate")

PROG = "llm-summarizer evaluate"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = boot.parser(prog, __doc__)
    ap.add_argument("--model", required=True, help="saved model directory (LoRA adapter or merged model)")
    ap.add_argument("--data", help="file, directory or hub dataset; default: data.<split> of the model's config.yaml")
    ap.add_argument(
        "--split", default="test", help="split name (default test): the hub split, or <split>.* in a directory"
    )
    ap.add_argument("--output", help="output directory (default evaluations/<model>/<split>/)")
    ap.add_argument("--limit", type=int, help="evaluate only the first N rows")
    ap.add_argument("--compare-base", action="store_true", help="also evaluate the base model; paired differences")
    ap.add_argument("--backend", choices=["unsloth", "transformers"], help="default: the backend of the model's config")
    ap.add_argument("--base", help="base model of an adapter (or of a merged model, for --compare-base)")
    ap.add_argument("--no-report", action="store_true", help="skip report.md and the plots")
    ap.add_argument(
        "--to-training-run",
        action="store_true",
        help="add the scores to the W&B / MLflow run that trained the model (named in its metrics.json; W&B goes "
        "offline when no server answers). MLflow writes to the store you give (--mlflow-tracking-uri or "
        "$MLFLOW_TRACKING_URI), never to an address read from the model folder. Default: no tracker is written",
    )
    ap.add_argument(
        "--mlflow-tracking-uri", help="with --to-training-run: your MLflow store (default $MLFLOW_TRACKING_URI)"
    )
    ap.add_argument("--no-tracking", action="store_true", help="(the default now; kept for older scripts)")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. eval.batch_size=32 eval.num_beams=4")
    return ap


def _print_summary(m: dict, out: Path, report: Optional[Path]) -> None:
    r = m["results"]
    print(
        f"\n== llm_summarizer: evaluation of {m['model']['path']} on {m['data']['split']} "
        f"({m['data']['source']}), {m['data']['examples']} examples, x 100 [95% CI]"
    )
    # after the arguments are checked: the scorers load only for a valid command
    from ..evaluation.scores import score_lines, statistics_lines

    for line in score_lines(r, ("model", "base"), "model_minus_base"):
        print(line)
    t = r["model"]["throughput"]
    print(
        f"   stopped at max_new_tokens: {100 * r['model']['hit_max_new_tokens_share']:.1f}%   "
        f"inputs truncated: {100 * r['model']['truncated_input_share']:.1f}%   "
        f"throughput: {t['examples_per_s']} examples/s, {t['generated_tokens_per_s']} generated tokens/s"
    )
    print("   each summary against its document (mean per summary; model - base: paired bootstrap 95% interval):")
    for line in statistics_lines(r, ("model", "base"), "model_minus_base"):
        print(line)
    print(f"   wrote: {out / PREDICTIONS}, {out / METRICS_FILE}" + (f", {report} (+ plots/)" if report else ""))


def run(args, _cfg) -> int:
    boot.ml_stack(boot.saved_model_backend(args.model, args.backend))
    # after the arguments are checked: the ML stack loads only for a valid command
    from ..evaluation.evaluate import evaluate_model

    res = evaluate_model(
        args.model,
        args.data,
        args.split,
        args.output,
        args.limit,
        args.compare_base,
        args.backend,
        args.base,
        args.overrides,
        report=not args.no_report,
    )
    _print_summary(res.metrics, res.output_dir, res.report)
    if args.to_training_run:
        to_training_run(Path(args.model), res, args.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    return 0


def to_training_run(model_dir: Path, res, mlflow_uri: Optional[str]) -> None:
    """--to-training-run: the scores (and for W&B a predictions table) into the W&B / MLflow run that trained the
    model, when its metrics.json names one. The model folder names the run, never where to write: MLflow goes to
    `mlflow_uri`, the user's own store. A tracker that fails says so; the evaluation is written either way."""
    # the model folder's reader: a damaged metrics.json was named when the model loaded and is left out here too
    from ..models.directory import read_metrics

    training = read_metrics(model_dir) or RunMetrics()
    tracking = training.tracking or {}
    if not any(isinstance(run, dict) and run.get("run_id") for run in tracking.values()):
        return
    # the tracking layer imports transformers: only after the evaluation, when the model names a run
    from ..tracking.trackers import TRACKERS, evaluation_logger

    for name in TRACKERS:
        if not (tracking.get(name) or {}).get("run_id"):
            continue
        try:
            log_evaluation = evaluation_logger(name)
        except ImportError:
            log.warning(
                "the model was trained with a %s run, but %s is not installed here: scores not added to it", name, name
            )
            continue
        if log_evaluation is None:
            continue
        if name == "mlflow" and not mlflow_uri:
            log.warning(
                "the model was trained with an MLflow run, but no MLflow store was given (--mlflow-tracking-uri or "
                "$MLFLOW_TRACKING_URI): scores not added to it (the address in the model folder is not used)"
            )
            continue
        try:
            info = log_evaluation(training, res, mlflow_uri) if name == "mlflow" else log_evaluation(training, res)
        except Exception as e:  # noqa: BLE001 - the tracker must not undo a finished evaluation
            log.warning(
                "could not add the scores to the %s run that trained the model (%s: %s); they are in %s",
                name,
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
                res.output_dir,
            )
            continue
        if info and info.get("sync_command"):
            print(f"   W&B: added to run {info['run_id']} offline; upload with: {info['sync_command']}")
        elif info and name == "wandb":
            print(f"   W&B: added to {info.get('url') or info['run_id']}")
        elif info:
            print(f"   MLflow: added to run {info['run_id']} ({info['tracking_uri']})")


def main(argv=None, prog: str = PROG) -> int:
    return boot.run_command(build_parser(prog), run, argv)
