"""The training report: report.md + plots/ in the run's output.dir after training (output.report)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from ..contracts import RunMetrics
from ..evaluation import diagnostics as D
from ..evaluation.report import (
    _examples,
    _plots_md,
    diagnostics_section,
    num,
    plot_coverage_density,
    plot_lengths,
    plot_rouge_bars,
    plot_training_curves,
    protocol_lines,
    score_table,
)
from ..files import write_text
from ..layout import (
    COVERAGE_PNG,
    CURVES_PNG,
    LENGTHS_PNG,
    PLOTS_DIR,
    PREDICTIONS_DIR,
    REFERENCES_FILE,
    REPORT,
    ROUGE_PNG,
)

log = logging.getLogger("llm_summarizer.report")


def _final_predictions(output_dir: Path, step: Optional[int]) -> tuple[list[dict], list[dict]]:
    """(final, base) rows of the run's in-training evaluations, from eval_predictions/."""
    d = output_dir / PREDICTIONS_DIR
    if not d.is_dir():
        return [], []

    def read(p: Path) -> list[dict]:
        try:
            return [json.loads(l) for l in p.read_text(encoding="utf-8").splitlines() if l.strip()]
        except (ValueError, OSError):
            return []

    final = d / "final.jsonl"
    if not final.is_file() and step is not None:
        final = d / f"step-{step}.jsonl"
    if not final.is_file():
        steps = sorted(
            d.glob("step-*.jsonl"), key=lambda p: int(p.stem.split("-")[1]) if p.stem.split("-")[1].isdigit() else -1
        )
        final = steps[-1] if steps else final
    return (read(final) if final.is_file() else []), (read(d / "base.jsonl") if (d / "base.jsonl").is_file() else [])


def _diagnostics_of(rows: list[dict]) -> list[dict]:
    return [r["diagnostics"] for r in rows if isinstance(r.get("diagnostics"), dict)]


def _reference_rows(output_dir: Path) -> list[dict]:
    p = output_dir / PREDICTIONS_DIR / REFERENCES_FILE
    try:
        return [json.loads(l) for l in p.read_text(encoding="utf-8").splitlines() if l.strip()] if p.is_file() else []
    except (ValueError, OSError):
        return []


def write_training_report(cfg, output_dir: Path, metrics: RunMetrics, log_history: list[dict]) -> Optional[Path]:
    """report.md + plots/ in the run's output.dir. Never fails the run: the model is already saved."""
    try:
        return _training_report(cfg, Path(output_dir), metrics, log_history)
    except Exception as e:  # a plot must not cost a finished training run
        log.warning("could not write the training report in %s: %s: %s", output_dir, type(e).__name__, e)
        return None


def _training_report(cfg, output_dir: Path, metrics: RunMetrics, log_history: list[dict]) -> Path:
    plots = output_dir / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    base, final, tr = metrics.base, metrics.final, metrics.train
    before, after = metrics.labels
    final_rows, base_rows = _final_predictions(output_dir, tr.global_step)
    made = {CURVES_PNG: (plot_training_curves(log_history, plots / CURVES_PNG, base), "training curves")}
    if final:
        made[ROUGE_PNG] = (plot_rouge_bars(plots / ROUGE_PNG, final, base, after), f"ROUGE {before} vs {after}")
    if final_rows:
        made[LENGTHS_PNG] = (
            plot_lengths(
                plots / LENGTHS_PNG,
                [r["reference"] for r in final_rows],
                [r["prediction"] for r in final_rows],
                [r["prediction"] for r in base_rows] if base_rows else None,
            ),
            "summary lengths",
        )
    series = {
        "references": _diagnostics_of(_reference_rows(output_dir)),
        "base model": _diagnostics_of(base_rows),
        "fine-tuned": _diagnostics_of(final_rows),
    }  # the plot's legend keys (the base and the trained model, whatever the stage)
    if any(series.values()):
        made[COVERAGE_PNG] = (plot_coverage_density(plots / COVERAGE_PNG, series), "coverage vs density")
    data = metrics.data
    t, lo = cfg.train, cfg.lora
    stage = metrics.stage or {}
    how = (
        f"`{stage.get('started_from')}` trained further with GRPO on the summary reward ({stage.get('trainer')})"
        if metrics.is_grpo
        else f"`{cfg.model.name}` fine-tuned"
    )
    lines = [
        f"# Training report: {cfg.output.run_name}",
        "",
        f"{how} with LoRA (r={lo.r}, alpha={lo.alpha}) on the {cfg.model.backend} backend: "
        f"{tr.global_step} steps, final training loss {num(tr.train_loss)}, "
        f"{num(tr.train_runtime_s, 1)} s of training. Fine-tuned model: `{cfg.model_dir}`.",
        "",
    ]
    if final:
        lines += [
            "## Scores x 100 on generated validation summaries",
            "",
            *score_table(final, base, None, after if base else "model", before),
            "",
        ]
    lines += _plots_md(made)
    lines += diagnostics_section(
        {"references": metrics.references, before: base, after: final},
        (metrics.final_vs_base or {}).get("diagnostics_model_minus_base"),
        warnings=D.warnings(final, base, metrics.references, after, before)
        + (D.gaming_warnings(base, final, metrics.final_vs_base, names=(before, after)) if metrics.is_grpo else []),
    )
    lines += ["## Data", ""]
    for role, s in data.items():
        if isinstance(s, dict):
            lines.append(
                f"- {role}: {s.get('rows')} rows from `{s.get('source')}`, {s.get('truncated', 0)} documents "
                f"truncated, summary tokens mean {(s.get('summary_tokens') or {}).get('mean')}"
            )
    lines += [
        "",
        "## Key settings",
        "",
        f"- learning rate {t.learning_rate} ({t.lr_scheduler_type}), batch {t.per_device_train_batch_size} x "
        f"{t.gradient_accumulation_steps} accumulation, optimizer {t.optim}, seed {t.seed}",
        f"- max_seq_length {cfg.model.max_seq_length}, document truncation `{cfg.data.truncation}`",
        "",
    ]
    if final_rows:
        lines += _examples(final_rows)
    proto = metrics.eval_protocol
    if proto:
        lines += ["## Evaluation protocol", "", *protocol_lines(proto), ""]
    path = output_dir / REPORT
    write_text(path, "\n".join(lines))
    log.info("training report: %s (plots in %s/)", path, plots)
    return path
