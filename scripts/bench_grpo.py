"""SFT then GRPO against SFT alone with the same CPU minutes, on held-out rows, paired (BENCHMARKS.md's GRPO rows).

    .venv/bin/python scripts/bench_grpo.py --dataset scitldr                  # the README demo's data (shipped)
    .venv/bin/python scripts/bench_grpo.py --dataset dialogsum                # ../shared/data/dialogsum (tests only)
    .venv/bin/python scripts/bench_grpo.py --dataset scitldr --grpo-steps 60 --set rl.weights.copying=2.0

1. SFT: the demo config (SmolLM2-135M-Instruct, 30 steps) on the dataset; on SciTLDR an existing fine_tuned/demo
   is used as it is.
2. GRPO: the ready config grpo-demo continuing that adapter (--set adds overrides).
3. SFT alone with the same minutes: the SFT adapter trained further with the SFT loss for as many steps as fit in
   GRPO's training time (at the SFT run's own seconds per step).
4. Each of the three models generates summaries of the first --eval-rows rows of the test split (`evaluate`), and
   `score` gives the paired differences with bootstrap 95% intervals: GRPO - SFT, GRPO - (SFT alone, longer),
   (SFT alone, longer) - SFT, on ROUGE and on every statistic against the document.
Writes outputs/bench/grpo-<dataset>.json (every number, the commands, versions) and prints the rows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
DATASETS = {
    "scitldr": {
        "dir": ROOT / "data" / "scitldr",
        "instruction": None,  # the demo's own
        "sft_dir": "fine_tuned/demo",
    },
    "dialogsum": {
        "dir": SHARED / "dialogsum",
        "instruction": "Summarize the following dialogue in a few sentences.",
        "sft_dir": None,
        "overrides": ["model.max_seq_length=512"],  # dialogues are longer than abstracts
    },
}


def cli(*args: str, log: Path) -> float:
    t0 = time.time()
    cmd = [sys.executable, "-m", "llm_summarizer", *args]
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} ... failed (exit {r.returncode}); see {log}")
    return round(time.time() - t0, 1)


def data_overrides(name: str) -> list[str]:
    d = DATASETS[name]
    out = [
        f"data.train={d['dir'] / 'train.jsonl'}",
        f"data.validation.path={d['dir'] / 'validation.jsonl'}",
        f"data.test={d['dir'] / 'test.jsonl'}",
    ]
    if d["instruction"]:
        out.append(f"data.instruction={d['instruction']}")
    return out + d.get("overrides", [])


def metrics(model_dir: Path) -> dict:
    return json.loads((model_dir / "metrics.json").read_text())


def paired(a: Path, b: Path, out: Path, log: Path) -> dict:
    cli("score", str(a), "--base", str(b), "--output", str(out), log=log)
    return json.loads(out.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="scitldr")
    ap.add_argument("--sft-steps", type=int, default=30)
    ap.add_argument("--grpo-steps", type=int, default=40)
    ap.add_argument("--eval-rows", type=int, default=100)
    ap.add_argument(
        "--sftmore-steps",
        type=int,
        help="steps of the longer SFT run (default: GRPO's training seconds / the SFT run's seconds per step; give "
        "it when those were measured on a busy machine)",
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="GRPO config overrides")
    ap.add_argument("--tag", help="a name for this GRPO variant (its runs, evaluations and results apart; SFT shared)")
    ap.add_argument("--no-sftmore", action="store_true", help="skip the longer SFT run (GRPO against SFT only)")
    ap.add_argument("--work", default=str(ROOT / "outputs" / "bench"))
    ap.add_argument(
        "--reuse", action="store_true", help="keep a run or evaluation this script already finished (its files)"
    )
    args = ap.parse_args(argv)
    name = args.dataset
    d = DATASETS[name]
    if not (d["dir"] / "train.jsonl").is_file():
        print(f"{d['dir']} is not on this machine; nothing measured")
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    log = work / f"grpo-{name}{tag}.log"
    data = data_overrides(name)
    runs = {k: f"bench-{k}-{name}" + (tag if k != "sft" else "") for k in ("sft", "grpo", "sftmore")}
    dirs = {k: ROOT / "fine_tuned" / v for k, v in runs.items()}
    out_of = lambda k: [f"output.run_name={runs[k]}", "train.resume=never"]  # noqa: E731
    seconds = {}

    # 1. SFT
    if d["sft_dir"] and (ROOT / d["sft_dir"] / "metrics.json").is_file():
        dirs["sft"] = ROOT / d["sft_dir"]
    elif not (dirs["sft"] / "metrics.json").is_file():
        seconds["sft"] = cli(
            "train", "--config", "demo", *data, f"train.max_steps={args.sft_steps}", *out_of("sft"), log=log
        )
    sft = metrics(dirs["sft"])
    sft_s_per_step = sft["train"]["train_runtime_s"] / max(1, sft["train"]["global_step"])

    done = lambda k: args.reuse and (dirs[k] / "metrics.json").is_file()  # noqa: E731

    # 2. GRPO from the SFT adapter
    seconds["grpo"] = (
        None
        if done("grpo")
        else cli(
            "train",
            "--config",
            "grpo-demo",
            f"model.name={dirs['sft']}",
            *data,
            f"train.max_steps={args.grpo_steps}",
            *args.set,
            *out_of("grpo"),
            log=log,
        )
    )
    grpo = metrics(dirs["grpo"])

    # 3. SFT alone, as many more steps as GRPO's training minutes buy
    kinds = ("sft", "grpo") if args.no_sftmore else ("sft", "grpo", "sftmore")
    more_steps = args.sftmore_steps or max(1, round(grpo["train"]["train_runtime_s"] / sft_s_per_step))
    seconds["sftmore"] = (
        None
        if args.no_sftmore or done("sftmore")
        else cli(
            "train",
            "--config",
            "demo",
            f"model.name={dirs['sft']}",
            *data,
            f"train.max_steps={more_steps}",
            "train.warmup_steps=0",
            f"train.save_steps={more_steps}",
            f"train.eval_steps={more_steps}",
            *out_of("sftmore"),
            log=log,
        )
    )
    more = None if args.no_sftmore else metrics(dirs["sftmore"])

    # 4. held-out rows: generate with each model, then paired differences
    preds = {}
    for k in kinds:
        out = work / f"grpo-{name}{tag if k != 'sft' else ''}-eval-{k}"
        reuse = args.reuse and (out / "metrics.json").is_file()
        if not reuse:
            shutil.rmtree(out, ignore_errors=True)  # a new model: its summaries from scratch
        seconds[f"evaluate_{k}"] = (
            None
            if reuse
            else cli(
                "evaluate",
                "--model",
                str(dirs[k]),
                "--data",
                str(d["dir"] / "test.jsonl"),
                "--limit",
                str(args.eval_rows),
                "--output",
                str(out),
                "--no-report",
                log=log,
            )
        )
        preds[k] = out / "predictions.jsonl"
    pairs = {"grpo_minus_sft": paired(preds["grpo"], preds["sft"], work / f"grpo-{name}{tag}-grpo-vs-sft.json", log)}
    if not args.no_sftmore:
        pairs["grpo_minus_sftmore"] = paired(
            preds["grpo"], preds["sftmore"], work / f"grpo-{name}{tag}-grpo-vs-sftmore.json", log
        )
        pairs["sftmore_minus_sft"] = paired(
            preds["sftmore"], preds["sft"], work / f"grpo-{name}{tag}-sftmore-vs-sft.json", log
        )
    stage = grpo.get("stage") or {}
    report = {
        "dataset": name,
        "eval_rows": args.eval_rows,
        "grpo_steps": grpo["train"]["global_step"],
        "grpo_train_runtime_s": grpo["train"]["train_runtime_s"],
        "grpo_steps_per_minute": stage.get("steps_per_minute"),
        "grpo_generation_share": stage.get("generation_share"),
        "sft_s_per_step": round(sft_s_per_step, 2),
        "sftmore_steps": None if args.no_sftmore else more_steps,
        "sftmore_train_runtime_s": more["train"]["train_runtime_s"] if more else None,
        "grpo_settings": {k: stage.get(k) for k in ("num_generations", "max_completion_length", "temperature", "beta")}
        | {"reward": stage.get("reward"), "overrides": args.set},
        "validation_in_run": {"sft": grpo.get("base"), "grpo": grpo.get("final"), "paired": grpo.get("final_vs_base")},
        "held_out": pairs,
        "seconds": seconds,
        "command": " ".join([".venv/bin/python", "scripts/bench_grpo.py", *(argv or sys.argv[1:])]),
    }
    path = work / f"grpo-{name}{tag}.json"
    path.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("dataset", "grpo_steps", "sftmore_steps", "seconds")}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
