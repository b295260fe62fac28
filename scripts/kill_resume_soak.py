"""Kill training with SIGKILL at random moments, resume each time, and compare with an uninterrupted run.

    .venv/bin/python scripts/kill_resume_soak.py --kills 30            # the long soak (tens of minutes)
    .venv/bin/python scripts/kill_resume_soak.py --kills 3 --steps 40  # the short version the suite runs
    .venv/bin/python scripts/kill_resume_soak.py --kills 3 --steps 12 --set rl.method=grpo   # the GRPO stage

Runs the ready config `tiny` (the 2-layer model; shortened by the flags) once uninterrupted, then again in a
separate output directory, killing the process with SIGKILL N times: at random moments, and every third kill just as
a checkpoint is being written (when its staging directory appears). After the last kill the run
resumes and finishes. Whenever the interrupted run reaches its end (also before the last kill, after
which it starts over), its final adapter must match the uninterrupted one within --tol, and every logged
training loss and evaluation ROUGE must match. Writes a JSON report; exit code 0 when all held.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llm_summarizer.layout import FINE_TUNED_DIR, MODEL_CACHE_DIR, OUTPUTS_DIR

ROOT = Path(__file__).resolve().parent.parent


def overrides(out: Path, args) -> list[str]:
    return [
        f"output.dir={out / OUTPUTS_DIR}",
        f"output.model_dir={out / FINE_TUNED_DIR}",
        f"model.cache_dir={args.models_dir}",
        f"train.max_steps={args.steps}",
        f"train.save_steps={args.save_steps}",
        f"train.eval_steps={args.eval_steps}",
        "train.logging_steps=1",
        "train.save_total_limit=2",
        "eval.num_samples=8",
        "eval.base_eval=true",
        f"data.train.limit={args.train_rows}",
        *args.set,
    ]


def command(out: Path, args) -> list[str]:
    return [sys.executable, "-m", "llm_summarizer", "train", "--config", str(args.config), *overrides(out, args)]


def run_to_end(out: Path, args, log) -> float:
    t0 = time.time()
    with open(log, "ab") as f:
        r = subprocess.run(command(out, args), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"run in {out} failed with exit code {r.returncode}; see {log}")
    return time.time() - t0


def writing_since(staging: Path, t0: float) -> bool:
    try:
        return any(c.stat().st_mtime > t0 for c in staging.iterdir())
    except OSError:  # not there yet, or renamed away while we looked
        return False


def kill_once(out: Path, args, log, mode: str, rng: random.Random, t_ref: float) -> dict:
    staging = out / OUTPUTS_DIR / ".staging"
    with open(log, "ab") as f:
        p = subprocess.Popen(command(out, args), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        t0 = time.time()
        deadline = t0 + t_ref * 1.5
        target = t0 + rng.uniform(0.35, 1.0) * t_ref
        when = "random"
        while p.poll() is None and time.time() < deadline:
            # a staging folder left by the previous kill is there until the new process clears it
            if mode == "checkpoint" and writing_since(staging, t0):
                when = "during checkpoint write"
                break
            if mode == "random" and time.time() >= target:
                break
            time.sleep(0.005)
        finished = p.poll() is not None
        if not finished:
            p.send_signal(signal.SIGKILL)
            p.wait()
    ckpts = (
        sorted(int(c.name.split("-")[1]) for c in (out / OUTPUTS_DIR).glob("checkpoint-*"))
        if (out / OUTPUTS_DIR).exists()
        else []
    )
    return {
        "mode": mode,
        "killed": not finished,
        "when": when,
        "after_s": round(time.time() - t0, 2),
        "checkpoints_visible": ckpts,
    }


def compare(ref: Path, got: Path, tol: float) -> dict:
    from safetensors.torch import load_file

    a = load_file(str(ref / FINE_TUNED_DIR / "adapter_model.safetensors"))
    b = load_file(str(got / FINE_TUNED_DIR / "adapter_model.safetensors"))
    max_diff = max((a[k] - b[k]).abs().max().item() for k in a) if a.keys() == b.keys() else float("inf")

    def history(d: Path):
        ck = sorted((d / OUTPUTS_DIR).glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1]))[-1]
        h = json.loads((ck / "trainer_state.json").read_text())["log_history"]
        return (
            {x["step"]: x["loss"] for x in h if "loss" in x},
            {x["step"]: x["eval_rougeL"] for x in h if "eval_rougeL" in x},
        )

    (la, ra), (lb, rb) = history(ref), history(got)
    loss_mismatch = [s for s in la if s not in lb or abs(la[s] - lb[s]) > 1e-4 * max(1.0, abs(la[s]))]
    rouge_mismatch = [s for s in ra if s not in rb or abs(ra[s] - rb[s]) > 1e-9]
    ma = json.loads((ref / FINE_TUNED_DIR / "metrics.json").read_text())
    mb = json.loads((got / FINE_TUNED_DIR / "metrics.json").read_text())
    final_same = ma["final"] == mb["final"] and ma["base"] == mb["base"]
    ok = max_diff <= tol and not loss_mismatch and not rouge_mismatch and final_same
    return {
        "ok": ok,
        "adapter_max_abs_diff": max_diff,
        "adapter_ok": max_diff <= tol,
        "loss_steps_compared": len(la),
        "loss_mismatch_steps": loss_mismatch,
        "rouge_steps_compared": len(ra),
        "rouge_mismatch_steps": rouge_mismatch,
        "final_and_base_rouge_identical": final_same,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=30, help="kills that land in a running process")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--save-steps", type=int, default=5)
    ap.add_argument("--eval-steps", type=int, default=20)
    ap.add_argument(
        "--train-rows",
        type=int,
        default=96,
        help="training rows (96 = 12 steps per epoch, so kills land in many epochs)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument(
        "--config",
        default="tiny",
        help="a ready config by name, or a YAML file (default tiny: the 2-layer model, nothing downloaded)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one more config override for both runs (repeatable), e.g. --set rl.method=grpo",
    )
    ap.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary directory)")
    ap.add_argument("--models-dir", default=str(ROOT / MODEL_CACHE_DIR))
    ap.add_argument("--report", default=None, help="write the JSON report here too")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    ref, got, log = work / "uninterrupted", work / "killed", work / "soak.log"
    for d in (ref, got):
        shutil.rmtree(d, ignore_errors=True)
    t_ref = run_to_end(ref, args, log)
    kills, rounds, round_kills = [], [], []

    def finish_round() -> None:
        # Every interrupted run that reaches its end is compared with the uninterrupted one, so each
        # kill is checked, also those in runs that finished before the last kill was due.
        result = compare(ref, got, args.tol)
        result["kills_landed"] = sum(k["killed"] for k in round_kills)
        rounds.append(result)
        print(json.dumps({"round": len(rounds), **result}), flush=True)
        shutil.rmtree(got)
        round_kills.clear()

    landed, span = 0, t_ref
    while landed < args.kills and len(kills) < 3 * args.kills:
        # --kills counts kills that landed: an attempt can find the run already finished
        mode = "checkpoint" if landed % 3 == 2 else "random"
        kills.append(kill_once(got, args, log, mode, rng, span))
        landed += kills[-1]["killed"]
        if not kills[-1]["killed"]:
            span = min(span, kills[-1]["after_s"])  # the runs got faster than the reference: aim earlier
        round_kills.append(kills[-1])
        print(json.dumps({"attempt": len(kills), "landed": landed, **kills[-1]}), flush=True)
        if (got / FINE_TUNED_DIR / "metrics.json").exists():
            finish_round()  # then start over, so every kill lands in a run that still has training to do
    if round_kills or not rounds:
        if not (got / FINE_TUNED_DIR / "metrics.json").exists():
            run_to_end(got, args, log)
        finish_round()
    ok = all(r["ok"] for r in rounds) and landed >= args.kills
    report = {
        "ok": ok,
        "kills_requested": args.kills,
        "kills_landed": landed,
        "attempts": len(kills),
        "kills_during_checkpoint_write": sum(k["when"] == "during checkpoint write" for k in kills),
        "rounds_compared": len(rounds),
        "steps": args.steps,
        "save_steps": args.save_steps,
        "uninterrupted_s": round(t_ref, 1),
        "adapter_max_abs_diff": max(r["adapter_max_abs_diff"] for r in rounds),
        "loss_steps_compared": sum(r["loss_steps_compared"] for r in rounds),
        "rouge_steps_compared": sum(r["rouge_steps_compared"] for r in rounds),
        "rounds": rounds,
        "kills": kills,
        "workdir": str(work),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        Path(args.report).write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
