"""report.md with PNG plots, for a training run and for an evaluation.

After training (output.report, on by default) the run's output.dir gets:
    report.md                      headline numbers, the plots, a few examples, the protocol
    plots/training_curves.png      training and validation loss, ROUGE on generated summaries, per step
    plots/rouge_base_vs_finetuned.png
    plots/summary_lengths.png      words per generated summary vs the references
    plots/coverage_density.png     extractive fragment coverage vs density of each summary against its document
                                   (base, fine-tuned, references; as in Grusky et al. 2018's figures)

`python -m llm_summarizer.evaluate` writes the same into its output directory (ROUGE bars then carry
the bootstrap 95% intervals). Plots need matplotlib (`pip install -e ".[report]"`); without it
report.md is still written and says how to get the plots.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from ..config_loading import load_config
from ..contracts import RunMetrics
from ..files import write_text
from ..layout import COVERAGE_PNG, CURVES_PNG, LENGTHS_PNG, PLOTS_DIR, REPORT, ROUGE_PNG
from ..metrics import BY_KEY, CURVES, KEYS, LABELS, PRIMARY, eval_name
from ..rundir import list_checkpoints
from . import diagnostics as D

log = logging.getLogger("llm_summarizer.report")

COLORS = {
    "base": "#9aa5b1",
    "model": "#1f77b4",
    "reference": "#2ca02c",
    "loss": "#d62728",
    "eval_loss": "#ff7f0e",
    **{m.key: m.color for m in BY_KEY.values() if m.color},
}


def _pyplot():
    try:
        # matplotlib (the report extra) only when a plot is drawn; a missing one is a note, not a failure
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt  # after the backend is chosen

    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "font.size": 10,
        }
    )
    return plt


def plot_training_curves(log_history: list[dict], path: Path, base: Optional[dict] = None) -> bool:
    """Loss (train, validation) and validation ROUGE against the training step."""
    plt = _pyplot()
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [h for h in log_history if "eval_loss" in h or eval_name(PRIMARY) in h]
    if plt is None or not (train or evals):
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    if train:
        ax1.plot(*zip(*train), color=COLORS["loss"], lw=1.5, label="training loss")
    ev_loss = [(h["step"], h["eval_loss"]) for h in evals if "eval_loss" in h]
    if ev_loss:
        ax1.plot(*zip(*ev_loss), "o-", color=COLORS["eval_loss"], lw=1.5, ms=4, label="validation loss")
    ax1.set(title="Loss (summary tokens)", xlabel="training step", ylabel="cross-entropy")
    below = dict(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3)
    ax1.legend(**below)
    steps = [h["step"] for h in evals if eval_name(PRIMARY) in h]
    for k in CURVES:
        ys = [100 * h[eval_name(k)] for h in evals if eval_name(k) in h]
        xs, ys = ([0] + steps, [100 * base[k]] + ys) if base and k in base and steps else (steps, ys)
        if ys:
            ax2.plot(xs, ys, "o-", color=COLORS.get(k), lw=1.5, ms=4, label=f"{LABELS[k]} (last {ys[-1]:.1f})")
    ax2.set(
        title="ROUGE on generated validation summaries",
        ylabel="F1 x 100",
        ylim=(0, 100),
        xlabel="training step" + (" (step 0: the base model)" if base and steps else ""),
    )
    if steps:
        ax2.legend(**below)
    else:
        ax2.text(0.5, 0.5, "no ROUGE evaluations logged", ha="center", va="center", transform=ax2.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_rouge_bars(path: Path, model: dict, base: Optional[dict] = None, model_label: str = "fine-tuned") -> bool:
    """Grouped bars per ROUGE type; error bars when the blocks carry 95% intervals (ci95)."""
    plt = _pyplot()
    if plt is None or not model:
        return False
    keys = [k for k in KEYS if k in model]
    series = ([("base model", base, COLORS["base"])] if base else []) + [(model_label, model, COLORS["model"])]
    x = np.arange(len(keys))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for i, (label, block, color) in enumerate(series):
        vals = [100 * f1(block[k]) for k in keys]
        err = None
        if all(isinstance(block[k], dict) and "ci95" in block[k] for k in keys):
            lo = [v - 100 * block[k]["ci95"][0] for v, k in zip(vals, keys)]
            hi = [100 * block[k]["ci95"][1] - v for v, k in zip(vals, keys)]
            err = [lo, hi]
        pos = x + (i - (len(series) - 1) / 2) * width
        ax.bar(
            pos,
            vals,
            width * 0.92,
            color=color,
            label=label,
            yerr=err,
            capsize=3,
            error_kw={"elinewidth": 1, "ecolor": "#333333"},
        )
        for p, v, k in zip(pos, vals, keys):
            top = v + (err[1][keys.index(k)] if err else 0)
            ax.text(p, top + 1.5, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [LABELS[k] for k in keys])
    title = "ROUGE: base model vs fine-tuned" if base else f"ROUGE of the {model_label} model"
    if any(isinstance(model[k], dict) and "ci95" in model[k] for k in keys):
        title += "\n(error bars: bootstrap 95% confidence intervals)"
    ax.set(ylabel="F1 x 100", ylim=(0, 105), title=title)
    ax.grid(axis="x", visible=False)
    ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=len(series))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_lengths(path: Path, references: list[str], predictions: list[str], base: Optional[list[str]] = None) -> bool:
    """Distribution of words per summary: references, fine-tuned (and base) predictions."""
    plt = _pyplot()
    if plt is None or not references:
        return False
    series = [
        ("reference summaries", [len(t.split()) for t in references], COLORS["reference"]),
        ("fine-tuned model", [len(t.split()) for t in predictions], COLORS["model"]),
    ]
    if base:
        series.append(("base model", [len(t.split()) for t in base], COLORS["base"]))
    hi = max(max(s[1]) for s in series if s[1]) + 1
    bins = np.linspace(0, hi, min(40, hi) + 1)
    fig, ax = plt.subplots(figsize=(8.5, 4.4))
    for label, xs, color in series:
        mean = sum(xs) / max(1, len(xs))
        ax.hist(xs, bins=bins, histtype="stepfilled", alpha=0.25, color=color)
        ax.hist(xs, bins=bins, histtype="step", lw=1.6, color=color, label=f"{label} (mean {mean:.1f})")
        ax.axvline(mean, color=color, ls="--", lw=1)
    ax.set(title="Summary length (dashed lines: means)", xlabel="words per summary", ylabel="summaries")
    ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=len(series))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_coverage_density(path: Path, series: dict[str, list[dict]]) -> bool:
    """Each summary as a point (extractive fragment coverage, density) against its document, one colour per series
    (references, base model, fine-tuned); the series' mean as a large marker. Grusky et al. (2018) draw datasets
    this way: extractive summaries sit top right, abstractive ones bottom left."""
    plt = _pyplot()
    pts = {
        name: [
            (p["coverage"], p["density"]) for p in per if p.get("coverage") is not None and p.get("density") is not None
        ]
        for name, per in series.items()
        if per
    }
    pts = {k: v for k, v in pts.items() if v}
    if plt is None or not pts:
        return False
    colors = {"references": COLORS["reference"], "base model": COLORS["base"], "fine-tuned": COLORS["model"]}
    fig, ax = plt.subplots(figsize=(8, 5.6))
    top = 1.0
    for name, xy in pts.items():
        xs, ys = zip(*xy)
        top = max(top, max(ys))
        comp = D.values(series[name], "compression")
        color = colors.get(name, COLORS["model"])
        label = f"{name} (n={len(xy)}): mean coverage {100 * np.mean(xs):.0f}%, density {np.mean(ys):.1f}" + (
            f", median compression {np.median(comp):.1f}" if comp else ""
        )
        ax.scatter(xs, ys, s=16, alpha=0.45, color=color, edgecolors="none", label=label)
        ax.scatter([np.mean(xs)], [np.mean(ys)], s=140, marker="X", color=color, edgecolors="black", linewidths=0.8)
    # density runs from 0 to the summary's length: a log-like axis that keeps 0, with plain-number ticks
    ax.set_yscale("symlog", linthresh=1.0)
    ticks = [t for t in (0, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500) if t <= top * 1.5]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlim(-0.02, 1.02)
    ax.set(
        xlabel="extractive fragment coverage (share of summary words inside text copied from the document)",
        ylabel="extractive fragment density (mean copied-fragment length)",
        title="How summaries relate to their documents (Grusky et al. 2018)",
    )
    ax.text(
        0.01,
        0.98,
        "top right: copies long pieces\nbottom left: writes anew\nX: the mean of each series",
        transform=ax.transAxes,
        va="top",
        fontsize=8,
        color="#555555",
    )
    ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def diagnostics_section(
    columns: dict[str, Optional[dict]],
    diff: Optional[dict] = None,
    notes: Optional[dict] = None,
    warnings: Optional[list[str]] = None,
) -> list[str]:
    table = D.markdown_table(columns, diff)
    if not table:
        return []
    out = [
        "## Beyond ROUGE: each summary against its document",
        "",
        "Copying (extractive fragment coverage and density, Grusky et al. 2018), words and numbers not in the "
        "document, repetition, length and endings; definitions in the protocol below.",
        "",
        *table,
        "",
    ]
    if notes:
        out += ["Values missing for some summaries: " + ", ".join(f"{k}: {v}" for k, v in notes.items()), ""]
    for w in warnings or ():
        out += [f"**Note:** {w}.", ""]
    return out


def f1(v) -> Optional[float]:
    """A score as saved: a number, or a block with its interval ({"f1": ..., "ci95": [...]})."""
    if isinstance(v, dict):
        return v.get("f1")
    return float(v) if isinstance(v, (int, float)) else None


def score_table(
    model: dict,
    base: Optional[dict] = None,
    diff: Optional[dict] = None,
    model_label: str = "model",
    base_label: str = "base model",
) -> list[str]:
    """The scores of generated summaries as a markdown table, a row per registered metric the blocks hold (x 100,
    with the 95% interval where the block has one); with a base, its column and the change (the paired difference
    with its interval where `diff` has it)."""

    def cell(v):
        x = f1(v)
        if x is None:
            return "n/a"
        s = f"{100 * x:.2f}"
        if isinstance(v, dict) and v.get("ci95"):
            s += f" [{100 * v['ci95'][0]:.2f}, {100 * v['ci95'][1]:.2f}]"
        return s

    head = f"| metric | {base_label} | {model_label} | change |" if base else f"| metric | {model_label} |"
    rows = [head, "|---|---|---|---|" if base else "|---|---|"]
    for k in KEYS:
        m, b = f1(model.get(k)), f1((base or {}).get(k))
        if m is None and b is None:
            continue
        if not base:
            rows.append(f"| {LABELS[k]} | {cell(model.get(k))} |")
            continue
        d = (diff or {}).get(k)
        if d:
            change = f"{100 * d['diff']:+.2f} [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]"
        else:
            change = f"{100 * (m - b):+.2f}" if m is not None and b is not None else "n/a"
        rows.append(f"| {LABELS[k]} | {cell(base.get(k))} | {cell(model.get(k))} | {change} |")
    return rows


def _examples(rows: list[dict], n: int = 3) -> list[str]:
    if not rows:
        return []
    ranked = sorted(rows, key=lambda r: r.get(PRIMARY, 0.0))
    picks = [("best", ranked[-1]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[0])][:n]
    out = [f"## Examples (by {LABELS[PRIMARY]})", ""]
    for label, r in picks:
        out += [
            f"**{label}** (id `{r['id']}`, {LABELS[PRIMARY]} {100 * r.get(PRIMARY, 0):.1f})",
            "",
            f"- reference: {_one_line(r['reference'])}",
            f"- generated: {_one_line(r['prediction'])}",
            "",
        ]
    return out


def _one_line(text: str, limit: int = 400) -> str:
    t = " ".join(text.split())
    return (t[:limit] + " ...") if len(t) > limit else (t or "*(empty)*")


def protocol_lines(proto: dict) -> list[str]:
    """A protocol record as markdown bullets, a nested record on one line (multi-line strings quoted)."""
    out = []
    for k, v in proto.items():
        if isinstance(v, dict):
            v = "; ".join(f"{a}: {b!r}" if isinstance(b, str) and "\n" in b else f"{a}: {b}" for a, b in v.items())
        out.append(f"- {k}: {v}")
    return out


def _plots_md(made: dict) -> list[str]:
    out = []
    for name, (ok, alt) in made.items():
        if ok:
            out += [f"![{alt}]({PLOTS_DIR}/{name})", ""]
    if not any(ok for ok, _ in made.values()):
        out += ['*(no plots: install matplotlib, e.g. `pip install -e ".[report]"`, and rerun)*', ""]
    return out


def write_eval_report(
    out_dir: Path,
    metrics: dict,
    rows: list[dict],
    base_rows: Optional[list[dict]] = None,
    log_history: Optional[list] = None,
    train_metrics: Optional[RunMetrics] = None,
    diagnostics: Optional[dict] = None,
) -> Path:
    """report.md + plots/ for an evaluation (metrics as written by evaluate; `diagnostics`: per-example statistics
    by series, model / base / references)."""
    plots = Path(out_dir) / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    res = metrics["results"]
    model, base = res["model"], res.get("base")
    made = {}
    if log_history:
        made[CURVES_PNG] = (
            plot_training_curves(log_history, plots / CURVES_PNG, train_metrics.base if train_metrics else None),
            "training curves",
        )
    made[ROUGE_PNG] = (plot_rouge_bars(plots / ROUGE_PNG, model, base), "ROUGE base vs fine-tuned")
    made[LENGTHS_PNG] = (
        plot_lengths(
            plots / LENGTHS_PNG,
            [r["reference"] for r in rows],
            [r["prediction"] for r in rows],
            [r["prediction"] for r in base_rows] if base_rows else None,
        ),
        "summary lengths",
    )
    diagnostics = diagnostics or {}
    if diagnostics:
        made[COVERAGE_PNG] = (
            plot_coverage_density(
                plots / COVERAGE_PNG,
                {
                    "references": diagnostics.get("references") or [],
                    "base model": diagnostics.get("base") or [],
                    "fine-tuned": diagnostics.get("model") or [],
                },
            ),
            "coverage vs density",
        )
    diag_cols = {
        "references": (res.get("references") or {}).get("diagnostics"),
        "base model": (base or {}).get("diagnostics"),
        "model": model.get("diagnostics"),
    }
    d, m = metrics["data"], metrics["model"]
    t = model["throughput"]
    lines = [
        f"# Evaluation: {Path(m['path']).name} on {d['split']}",
        "",
        f"{d['examples']} examples from `{d['source']}`; model `{m['path']}` ({m['kind']}"
        + (f", base `{m['base_model']}`" if m.get("base_model") else "")
        + f"), {m['backend']} backend, {m['dtype']}.",
        "",
        "## Scores x 100 [bootstrap 95% interval]",
        "",
        *score_table(model, base, res.get("model_minus_base"), "fine-tuned" if base else "model"),
        "",
        *_plots_md(made),
        "## Lengths, truncation, speed",
        "",
        f"- words per summary: generated mean {model['lengths_words']['prediction'].get('mean')}, reference mean "
        f"{model['lengths_words']['reference'].get('mean')}"
        + (f", base mean {base['lengths_words']['prediction'].get('mean')}" if base else ""),
        f"- generations stopped by max_new_tokens (no end of summary): {100 * model['hit_max_new_tokens_share']:.1f}%",
        f"- documents truncated to fit the token budget: {100 * model['truncated_input_share']:.1f}%",
        f"- empty summaries: {model['empty_predictions']}",
        f"- throughput: {t['examples_per_s']} examples/s, {t['generated_tokens_per_s']} generated tokens/s",
        "",
        *diagnostics_section(
            {k: (v or {}).get("stats") for k, v in diag_cols.items()},
            res.get("diagnostics_model_minus_base"),
            (model.get("diagnostics") or {}).get("notes"),
        ),
        *_examples(rows),
        "## Protocol",
        "",
        *protocol_lines(metrics["protocol"]),
        "",
    ]
    path = Path(out_dir) / REPORT
    write_text(path, "\n".join(lines))
    return path


def num(v, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "n/a"


def find_log_history(info) -> Optional[list]:
    """The training log of the run a model directory came from: the newest checkpoint's trainer
    state in the run's output.dir, when its step matches the model's metrics.json."""
    if info.config_yaml is None:
        return None
    try:
        cfg = load_config(info.config_yaml)
        want = info.metrics.train.global_step if info.metrics else None
        for _, ckpt in reversed(list_checkpoints(cfg.output_dir)):
            state_file = ckpt / "trainer_state.json"
            if state_file.is_file():
                state = json.loads(state_file.read_text(encoding="utf-8"))
                if want is None or state.get("global_step") == want:
                    return state.get("log_history") or None
                return None
    except Exception as e:  # the report goes on without curves
        log.info("no training curves for %s: %s", info.path, e)
    return None
