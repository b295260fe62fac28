"""What a GRPO step costs on this machine, and what TRL's own knobs change, measured against each other in one run.

    .venv/bin/python scripts/bench_grpo_cost.py                 # 6 steps per variant on the demo (minutes)
    .venv/bin/python scripts/bench_grpo_cost.py --steps 10 --rounds 2

Each variant is the ready config grpo-demo (the demo's SFT adapter fine_tuned/demo, which must exist: run the
demo first) for --steps GRPO steps with no summary evaluation, in its own process, in turn (the order flips each
round): `default` (one generation round per optimizer step: 8 completions, 2 prompts), `gen_batch_16` (TRL's
generation_batch_size=16: one round of 16 completions serves two optimizer steps), `paged` (TRL's
use_transformers_paged: transformers' continuous batching generates the completions). Reports steps per minute
and sampling's share of the training time (metrics.json `stage`), median over rounds; a variant that fails says
why. Writes outputs/bench/grpo-cost.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "default": [],
    "gen_batch_16": ["train.extra_args={generation_batch_size: 16}"],
    "paged": ["train.extra_args={use_transformers_paged: true}"],
}


def run_variant(name: str, steps: int, work: Path, log: Path) -> dict:
    run_name = f"bench-grpo-cost-{name}"
    cmd = [
        sys.executable,
        "-m",
        "llm_summarizer",
        "train",
        "--config",
        "grpo-demo",
        f"train.max_steps={steps}",
        f"train.save_steps={steps}",
        "train.resume=never",
        "eval.generate=false",
        "output.report=false",
        f"output.run_name={run_name}",
        *VARIANTS[name],
    ]
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = log.read_text(encoding="utf-8").strip().splitlines()[-1:]
        return {"ok": False, "exit": r.returncode, "error": tail[0][:400] if tail else ""}
    m = json.loads((ROOT / "fine_tuned" / run_name / "metrics.json").read_text())
    stage = m["stage"]
    return {
        "ok": True,
        "steps_per_minute": stage["steps_per_minute"],
        "generation_share": stage["generation_share"],
        "train_runtime_s": m["train"]["train_runtime_s"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args(argv)
    if not (ROOT / "fine_tuned" / "demo" / "metrics.json").is_file():
        print("fine_tuned/demo is missing: run `llm-summarizer train --config demo` first")
        return 2
    work = ROOT / "outputs" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "grpo-cost.log"
    results: dict = {v: [] for v in args.variants}
    for r in range(args.rounds):
        order = args.variants if r % 2 == 0 else list(reversed(args.variants))
        for v in order:
            results[v].append(run_variant(v, args.steps, work, log))
            print(json.dumps({"round": r, "variant": v, **results[v][-1]}), flush=True)
    summary = {}
    for v, runs in results.items():
        ok = [x for x in runs if x["ok"]]
        summary[v] = (
            {
                "steps_per_minute": statistics.median(x["steps_per_minute"] for x in ok),
                "generation_share": statistics.median(x["generation_share"] for x in ok),
                "runs": len(ok),
            }
            if ok
            else {"failed": runs[-1].get("error")}
        )
    base = summary.get("default", {}).get("steps_per_minute")
    for v, s in summary.items():
        if base and s.get("steps_per_minute"):
            s["vs_default"] = round(s["steps_per_minute"] / base, 3)
    out = {"steps": args.steps, "rounds": args.rounds, "summary": summary, "runs": results}
    (work / "grpo-cost.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
