"""Quality benchmark: the real model zero-shot vs fine-tuned, on the test splits of DialogSum and SciTLDR.

    .venv/bin/python scripts/bench_quality.py                                  # both datasets from ../shared/data
    .venv/bin/python scripts/bench_quality.py --datasets scitldr --test-rows 100 --steps 30
    .venv/bin/python scripts/bench_quality.py --data-root /path/to/data --markdown BENCHMARKS.md

For each dataset: fine-tune `--config` (default: the demo config, SmolLM2-135M-Instruct) on the first
--train-rows rows for --steps steps, then `evaluate --compare-base` on the first --test-rows test rows
(the adapter against the same weights with the adapter off, same prompts): ROUGE-1/2/L/Lsum F1 with
bootstrap 95% intervals, the paired difference, summary lengths against the references, wall times.
The "Quality" table of BENCHMARKS.md (between its markers) is rewritten with one row per dataset and
model, with published anchors and the protocol differences, and a second table with the statistics of each
summary against its document (llm_summarizer/evaluation/diagnostics.py) for the references, the zero-shot and
the fine-tuned model on the same rows; the JSON results go to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from llm_summarizer.layout import FINE_TUNED_DIR, OUTPUTS_DIR

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- quality rows: scripts/bench_quality.py writes below -->", "<!-- quality rows end -->"
INSTRUCTIONS = {
    "dialogsum": "Summarize the following dialogue in a few sentences.",
    "scitldr": "Write a one-sentence TLDR of this paper abstract.",
}
# Published numbers on the same test sets, for orientation (their protocols differ from ours: see the notes).
ANCHORS = {
    "dialogsum": "BART-large fine-tuned on all 12.5k training dialogues (Chen et al. 2021, DialogSum): ROUGE-1/2/L "
    "47.36 / 21.23 / 44.88, scored against all three test references on the full 500-dialogue test set",
    "scitldr": "BART and CATTS fine-tuned on SciTLDR-A (Cachola et al. 2020, results table of the paper), scored as "
    "the maximum over each paper's 2-4 test TLDRs on the full 618-paper test set (not restated here)",
}


def run_dataset(name: str, args) -> dict:
    from llm_summarizer.config_loading import load_config
    from llm_summarizer.evaluation.evaluate import evaluate_model
    from llm_summarizer.training.run import run

    data = Path(args.data_root) / name
    out = Path(args.work) / name
    overrides = [
        f"data.train={{path: {data / 'train.jsonl'}, limit: {args.train_rows}}}",
        f"data.validation={{path: {data / 'validation.jsonl'}, limit: {args.val_rows}}}",
        f"data.test={{path: {data / 'test.jsonl'}, limit: {args.test_rows}}}",
        f"data.instruction={INSTRUCTIONS.get(name, 'Summarize the following text.')}",
        f"train.max_steps={args.steps}",
        f"train.eval_steps={args.steps}",
        f"train.save_steps={args.steps}",
        f"eval.num_samples={args.val_rows}",
        "train.resume=never",
        f"output.dir={out / OUTPUTS_DIR}",
        f"output.model_dir={out / FINE_TUNED_DIR}",
        *args.overrides,
    ]
    t0 = time.time()
    result = run(load_config(args.config, overrides))
    train_wall = time.time() - t0
    t1 = time.time()
    ev = evaluate_model(result.model_dir, split="test", compare_base=True, output=out / "evaluation", report=False)
    return {
        "dataset": name,
        "train_rows": args.train_rows,
        "steps": args.steps,
        "train_wall_s": round(train_wall, 1),
        "eval_wall_s": round(time.time() - t1, 1),
        "model": result.metrics.train.to_dict(),
        "base_model": load_config(args.config).model.name,
        "evaluation": ev.metrics,
    }


def _cell(block: dict, k: str) -> str:
    b = block[k]
    return f"{100 * b['f1']:.2f} [{100 * b['ci95'][0]:.2f}, {100 * b['ci95'][1]:.2f}]"


def rows(result: dict) -> list[str]:
    r = result["evaluation"]["results"]
    keys = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    lengths = {k: r[k]["lengths_words"]["prediction"]["mean"] for k in ("base", "model")}
    ref_len = r["model"]["lengths_words"]["reference"]["mean"]
    n = r["model"]["examples"]
    d = r["model_minus_base"]
    diff = " / ".join(
        f"{100 * d[k]['diff']:+.2f} [{100 * d[k]['ci95'][0]:+.2f}, {100 * d[k]['ci95'][1]:+.2f}]"
        for k in ("rouge1", "rougeL")
    )
    what = f"{result['dataset']} test (first {n})"
    return [
        f"| {what} | {result['base_model']} zero-shot | - | - | "
        + " | ".join(_cell(r["base"], k) for k in keys)
        + f" | {lengths['base']:.1f} / {ref_len:.1f} | |",
        f"| {what} | fine-tuned, LoRA r=16 | {result['train_rows']} rows, {result['steps']} steps | "
        f"{result['train_wall_s'] / 60:.1f} min | "
        + " | ".join(_cell(r["model"], k) for k in keys)
        + f" | {lengths['model']:.1f} / {ref_len:.1f} | {diff} |",
    ]


DIAG_COLUMNS = (
    "coverage",
    "density",
    "compression",
    "novel_2gram",
    "repeated_3gram",
    "unsupported_numbers",
    "unsupported_names",
    "lead_copy",
    "length_ratio",
    "cut_by_max_new_tokens",
)


def diagnostics_header() -> list[str]:
    from llm_summarizer.evaluation.diagnostics import BY_KEY

    cols = ["data", "summaries", *(BY_KEY[k].short for k in DIAG_COLUMNS)]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def diagnostics_rows(result: dict) -> list[str]:
    """The references, zero-shot and fine-tuned summaries of one dataset against their documents (means)."""
    from llm_summarizer.evaluation.diagnostics import fmt

    r = result["evaluation"]["results"]
    what = f"{result['dataset']} test (first {r['model']['examples']})"
    out = []
    for label, block in (
        ("references", r.get("references")),
        (f"{result['base_model']} zero-shot", r.get("base")),
        ("fine-tuned, LoRA r=16", r.get("model")),
    ):
        stats = ((block or {}).get("diagnostics") or {}).get("stats")
        if stats:
            out.append(f"| {what} | {label} | " + " | ".join(fmt(k, stats[k]["mean"]) for k in DIAG_COLUMNS) + " |")
    return out


def write_table(path: Path, results: list[dict], header: str) -> None:
    table = [
        START,
        "",
        header,
        "",
        "| data | model | training | train wall | ROUGE-1 [95% CI] | ROUGE-2 | ROUGE-L | ROUGE-Lsum | "
        "words: generated / reference | fine-tuned - zero-shot, R-1 / R-L [paired 95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        table += rows(res)
    table += [
        "",
        "Published anchors (not comparable one to one: multi-reference ROUGE, full test sets, models 3x "
        "to 10x larger, trained on all the training data on GPUs):",
        "",
    ]
    table += [f"- {res['dataset']}: {ANCHORS[res['dataset']]}" for res in results if res["dataset"] in ANCHORS]
    table += [
        "",
        'Each summary against its document (mean per summary; definitions in README "Beyond ROUGE"): '
        "the references' own values beside the models'.",
        "",
        *diagnostics_header(),
    ]
    for res in results:
        table += diagnostics_rows(res)
    table += ["", END]
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + "\n".join(table) + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Quality\n\n" + "\n".join(table) + "\n"
    path.write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="dialogsum,scitldr")
    ap.add_argument(
        "--data-root",
        default=str(ROOT.parent / "shared" / "data"),
        help="folder holding <dataset>/{train,validation,test}.jsonl",
    )
    ap.add_argument("--config", default="demo")
    ap.add_argument("--train-rows", type=int, default=240)
    ap.add_argument("--val-rows", type=int, default=24)
    ap.add_argument("--test-rows", type=int, default=100)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--work", default=str(ROOT / OUTPUTS_DIR / "bench_quality"))
    ap.add_argument("--out", default=None, help="JSON results (default <work>/quality.json)")
    ap.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("overrides", nargs="*", help="config overrides for every training run")
    args = ap.parse_args(argv)

    from llm_summarizer.commands.boot import setup_logging
    from llm_summarizer.environment import cpu_name, package_versions
    from llm_summarizer.models.unsloth_first import import_unsloth

    import_unsloth()
    setup_logging()
    results = [run_dataset(name.strip(), args) for name in args.datasets.split(",") if name.strip()]
    v = package_versions()
    header = (
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on CPU {cpu_name()} ({platform.machine()}), torch "
        f"{v.get('torch')}, transformers {v.get('transformers')}, unsloth {v.get('unsloth')}; fp32, greedy, "
        f"single-reference ROUGE (rouge-score, stemming, F1), bootstrap 1000 resamples. Command: "
        f"`.venv/bin/python scripts/bench_quality.py {shlex.join(sys.argv[1:] if argv is None else argv)}`"
    )
    out = Path(args.out or Path(args.work) / "quality.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"header": header, "results": results}, indent=2, default=str), encoding="utf-8")
    if args.markdown:
        write_table(Path(args.markdown), results, header)
    for res in results:
        print("\n".join(rows(res) + diagnostics_rows(res)))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
