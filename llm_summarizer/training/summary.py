"""The end-of-run summary of a training run, as text: what `llm-summarizer train` prints (locally and on Ray) and
what TrainerClass.Start_Training prints. Formatting only: the numbers come from metrics.json (contracts.RunMetrics)."""

from __future__ import annotations

from ..contracts import RunMetrics
from ..evaluation import diagnostics
from ..layout import PLOTS_DIR
from ..metrics import format_scores
from .run import RunResult


def summary_lines(result: RunResult, where: str = "") -> list[str]:
    """The end-of-run summary the train command prints; `where` names the engine (" on Ray (2 workers)")."""
    m = result.metrics
    before, after = _names(m)
    tags = (before, after) if m.is_grpo else ("base", "final")
    lines = [
        "",
        f"== llm_summarizer: training finished{where}",
        f"   steps:           {m.train.global_step} (train loss {m.train.train_loss:.4f})",
        f"   scores {_tag(tags[0])} {format_scores(m.base)}",
        f"   scores {_tag(tags[1])} {format_scores(m.final)}",
        f"   fine-tuned model: {result.model_dir}/  (adapter, tokenizer, config.yaml, metrics.json, README.md)",
        f"   checkpoints+logs: {result.output_dir}/  (checkpoint-*, eval_predictions/, rouge_samples.jsonl)",
    ]
    if result.report is not None:
        lines.append(f"   report:          {result.report}  (plots in {result.report.parent / PLOTS_DIR}/)")
    if result.wall_s is not None:
        train_s = m.train.train_runtime_s
        lines.append(
            f"   wall time:       {_minutes(result.wall_s)}"
            + (f" (training {_minutes(train_s)}, evaluations inside it included)" if train_s else "")
        )
    t = m.train
    st = t.startup or {}
    if st.get("to_first_step_s") is not None:
        parts = ", ".join(f"{STARTUP_NAMES[k]} {v:.1f}" for k, v in st.items() if k in STARTUP_NAMES)
        lines.append(f"   start-up:        {st['to_first_step_s']:.1f} s to the first optimizer step ({parts})")
    if t.peak_memory_gib is not None:
        speed = f"{t.train_tokens_per_s:.0f} training tokens/s, " if t.train_tokens_per_s else ""
        lines.append(f"   speed, memory:   {speed}peak {t.peak_memory_gib:.2f} GiB ({t.peak_memory_of})")
    stage = m.stage or {}
    if m.is_grpo and stage.get("steps_per_minute"):
        share = 100 * (stage.get("generation_share") or 0)
        lines.append(
            f"   GRPO cost:       {stage['steps_per_minute']:.2f} steps/min "
            f"({stage.get('num_generations')} completions per prompt), sampling {share:.0f}% of the training time"
        )
    cmp = m.final_vs_base
    if cmp:
        lines += [
            "",
            f"== {after} minus {before} on the same {cmp['examples']} validation examples "
            f"(scores x 100, paired bootstrap 95% interval)",
        ]
        for k, d in cmp["model_minus_base"].items():
            lo, hi = d["ci95"]
            verdict = "better" if lo > 0 else "worse" if hi < 0 else "no clear difference"
            lines.append(
                f"   {k:<10} {100 * m.base[k]:6.2f} -> {100 * m.final[k]:6.2f}   "
                f"{100 * d['diff']:+6.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]  {verdict}"
            )
    lines += diagnostics_lines(m)
    if cmp:
        for i, ex in enumerate(cmp["side_by_side"], 1):
            lines += [
                "",
                f"== example {i} (validation id {ex['id']})",
                f"   document:   {_one_line(ex['document'], 300)}",
                f"   reference:  {_one_line(ex['reference'])}",
                f"   {_tag(before, 11)} {_one_line(ex['base'])}",
                f"   {_tag(after, 11)} {_one_line(ex['fine_tuned'])}",
            ]
    return lines


def diagnostics_lines(m: RunMetrics) -> list[str]:
    """Beside ROUGE: the summaries against their documents (base, fine-tuned, the references), with the paired
    change and, in words, what a reader should check."""
    before, after = _names(m)
    blocks = {"references": m.references, before: m.base, after: m.final}
    if not any(k in (b or {}) for b in blocks.values() for k in diagnostics.DIAGNOSTIC_KEYS):
        return []
    cmp = m.final_vs_base or {}
    n = m.examples
    out = [
        "",
        "== beyond ROUGE: each summary against its document ("
        + (f"{n} validation examples, " if n else "")
        + f"mean per summary; {after} - {before} with paired bootstrap 95% interval)",
    ]
    out += diagnostics.lines(blocks, cmp.get("diagnostics_model_minus_base"), f"{after} - {before}")
    out += [f"   warning: {w}" for w in diagnostics.warnings(m.final, m.base, m.references, *m.labels[::-1])]
    if m.is_grpo:
        similarity = ((m.stage or {}).get("reward") or {}).get("similarity_metric") or "rougeL"
        gamed = diagnostics.gaming_warnings(m.base, m.final, cmp, similarity, (before, after))
        out += [f"   warning: {w}" for w in gamed]
        if cmp and not gamed:
            out.append("   no reward gaming seen: no guard statistic moved the wrong way beyond noise")
    return out


def _names(m: RunMetrics) -> tuple[str, str]:
    """The two models' short names in this text: base / fine-tuned after SFT, SFT model / GRPO after GRPO."""
    return m.labels if m.is_grpo else ("base", "fine-tuned")


def _tag(label: str, width: int = 9) -> str:
    return f"{label + ':':<{width}}"


STARTUP_NAMES = {
    "imports_s": "imports",
    "data_read_s": "reading data",
    "model_load_s": "model load",
    "tokenize_and_trainer_s": "tokenizing + trainer",
    "base_eval_s": "base evaluation",
    "first_step_s": "first step",
}


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(round(seconds % 60)):02d}s"


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
