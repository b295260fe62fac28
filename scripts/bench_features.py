"""Measure the speed switches against each other: interleaved benchmark runs on one machine.

    .venv/bin/python scripts/bench_features.py                      # CPU: every variant, transformers backend
    .venv/bin/python scripts/bench_features.py --backends unsloth,transformers --variants padded,group_by_length
    .venv/bin/python scripts/bench_features.py \
        --variant batch8:train.per_device_train_batch_size=8,train.gradient_accumulation_steps=1
    .venv/bin/python scripts/bench_features.py -- --shape llama-1b --data dialogsum --steps 30   # GPU

Each round runs `python -m llm_summarizer bench --rounds 1` once per variant (the variant's config
overrides added), the order of the variants reversed every other round, so drift on a shared machine
falls on every variant alike. Arguments after `--` go to every bench call. Prints a Markdown table
(median and min-max over rounds of non-padding tokens/s, s/step, peak memory, padding share, the
batch-vs-one-by-one loss difference) and writes all results to --out-dir.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from llm_summarizer.layout import BENCH_DIR, OUTPUTS_DIR

ROOT = Path(__file__).resolve().parent.parent

# Each names its sampling, so a variant means the same thing whatever the schema default is.
VARIANTS = {
    "padded": ["train.sampling=random"],
    "group_by_length": ["train.sampling=group_by_length"],
    "padding_free": ["train.padding_free=true", "train.sampling=random"],
    "padding_free+group": ["train.padding_free=true", "train.sampling=group_by_length"],
    "packing": ["train.packing=true", "train.sampling=random"],
    # transformers backend only (Unsloth picks its own attention): FlexAttention with a document mask
    "padding_free+flex": [
        "train.padding_free=true",
        "model.attn_implementation=flex_attention",
        "train.sampling=random",
    ],
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--variants",
        default="padded,group_by_length,padding_free,packing",
        help=f"comma-separated, of: {', '.join(VARIANTS)}",
    )
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=V,KEY=V", help="an extra variant")
    ap.add_argument("--backends", default="transformers")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out-dir", default=str(ROOT / OUTPUTS_DIR / BENCH_DIR / "features"))
    ap.add_argument(
        "--defaults",
        default="--steps 20 --warmup-steps 4 --val-rows 16 eval.num_samples=1",
        help="bench arguments used when nothing follows --",
    )
    args = ap.parse_args(own)
    variants = {v: VARIANTS[v] for v in args.variants.split(",") if v}
    for spec in args.variant:
        name, _, ovr = spec.partition(":")
        variants[name] = [o for o in ovr.split(",") if o]
    bench_args = passthrough or args.defaults.split()
    flags = [a for a in bench_args if "=" not in a or a.startswith("--")]
    overrides = [a for a in bench_args if a not in flags]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for rnd in range(args.rounds):
        order = list(variants) if rnd % 2 == 0 else list(variants)[::-1]
        for v in order:
            path = out / f"{v}-r{rnd}.json"
            cmd = [
                sys.executable,
                "-m",
                "llm_summarizer",
                "bench",
                *flags,
                "--rounds",
                "1",
                "--backends",
                args.backends,
                "--out",
                str(path),
                "--markdown",
                "",
                *overrides,
                *variants[v],
            ]
            print(f"[features] round {rnd} {v}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            rc = subprocess.call(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
            if rc != 0:
                print(f"[features] {v} failed (exit code {rc})", file=sys.stderr)
                continue
            results[v].append(json.loads(path.read_text()))
    table = render(results, args.backends.split(","))
    (out / "summary.md").write_text(table)
    (out / "summary.json").write_text(
        json.dumps({v: [r for res in rs for r in res["runs"]] for v, rs in results.items()}, indent=1)
    )
    print(table)
    return 0


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return "n/a"
    med = format(statistics.median(values), fmt)
    return med if len(values) == 1 else f"{med} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def render(results: dict, backends: list[str]) -> str:
    lines = [
        "| variant | backend | effective | non-pad tokens/s | s/step | peak GiB | padding share | "
        "loss rel. diff batch vs one-by-one | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v, rs in results.items():
        for b in backends:
            runs = [r for res in rs for r in res["runs"] if r["backend"] == b]
            if not runs:
                lines.append(f"| {v} | {b} | failed | | | | | | 0 |")
                continue
            eff = runs[0]["effective"]
            feats = "+".join(k for k in ("padding_free", "packing") if eff.get(k)) or "padded"
            lines.append(
                " | ".join(
                    [
                        f"| {v}",
                        b,
                        f"{feats}, {eff['sampling']}, batch {eff['per_device_train_batch_size']}x"
                        f"{eff['gradient_accumulation_steps']}",
                        _cell([r["tokens_per_s_nonpad"] for r in runs], ".0f"),
                        _cell([r["s_per_step"] for r in runs], ".3f"),
                        _cell([r["peak_memory_gib"] for r in runs], ".2f"),
                        _cell([r["padding_share"] for r in runs], ".1%"),
                        _cell([r["loss_check_rel_diff"] for r in runs], ".1e"),
                        f"{len(runs)} |",
                    ]
                )
            )
    device = next((res["device"] for rs in results.values() for res in rs), "?")
    cmd = next((res["command"] for rs in results.values() for res in rs), "?")
    return f"Device: {device}. Each run: `{cmd}` plus the variant's overrides.\n\n" + "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
