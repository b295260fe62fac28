"""The benchmark's parent process: the same model and data for every run, child runs alternating backends."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, Optional

from ..config import Config
from ..config_loading import config_to_dict, load_config
from ..data.rows import load_raw_splits
from ..environment import git_commit
from ..errors import UserError
from ..files import write_json
from ..layout import BENCH_DIR, BENCH_WORK_SUFFIX, OUTPUTS_DIR
from ..models.loading import resolve_model_path
from ..paths import Place, check_places, claim
from .options import BenchOptions
from .results import append_row

BACKENDS = ("unsloth", "transformers")
DATA_PATH_VAR = "LLM_SUMMARIZER_DATA_PATH"  # directories holding named datasets (<name>/train.jsonl), ':'-separated


class Written(NamedTuple):
    """What a bench run wrote: its result, the JSON file it is in, and the folder of its runs' logs."""

    result: dict
    out: Path
    work: Path


def resolve_data(spec: str) -> tuple[Path, Optional[Path], str]:
    """(train file, validation file or None, short name) for --data: a JSONL file, a directory holding
    train.jsonl (+ validation.jsonl), or a name looked up as data/<name>/ and in $LLM_SUMMARIZER_DATA_PATH."""
    p = Path(spec).expanduser()
    if p.is_file():
        return p.resolve(), None, p.stem
    roots = [Path("data")] + [Path(r) for r in os.environ.get(DATA_PATH_VAR, "").split(os.pathsep) if r]
    d = (
        p
        if (p / "train.jsonl").exists() or "/" in spec
        else next((r / spec for r in roots if (r / spec / "train.jsonl").exists()), p)
    )
    if not (d / "train.jsonl").exists():
        raise UserError(
            f"--data {spec}: no {d}/train.jsonl; give a JSONL file, a directory holding train.jsonl "
            f"(and validation.jsonl), or the name of one under data/ or ${DATA_PATH_VAR}"
        )
    val = d / "validation.jsonl"
    return (d / "train.jsonl").resolve(), val.resolve() if val.exists() else None, d.name


def bench_config(
    options: BenchOptions, data: tuple[Path, Optional[Path], str], model_name: str, run_dir: Path
) -> Config:
    cfg = load_config(options.config, list(options.overrides))
    train_path, val_path, _ = data
    # What the measurement needs, whatever the config says: the same model and data for both backends,
    # a fixed number of steps, no checkpoints on disk, no trackers, no resuming from an earlier run.
    cfg.model.name = model_name
    cfg.model.load_in_4bit = bool(options.qlora)
    if options.qlora:
        cfg.model.load_in_8bit = False
    cfg.data.train = {"path": str(train_path), "limit": options.train_rows}
    cfg.data.validation = {"path": str(val_path), "limit": options.val_rows} if val_path else None
    cfg.data.test = None
    cfg.train.max_steps = options.steps
    cfg.train.save_strategy = "no"
    cfg.train.load_best_model_at_end = False
    cfg.train.resume = "never"
    cfg.output.dir = str(run_dir)
    cfg.output.model_dir = str(run_dir / "final")
    cfg.tracking.report_to = ["none"]
    return Config.model_validate(config_to_dict(cfg))  # cross-field checks once more


def prepare_model(options: BenchOptions, cfg: Config) -> tuple[str, Optional[str]]:
    """The model directory both backends load: built once here for a random-init shape."""
    if options.model and Path(options.model).expanduser().is_dir():
        return str(Path(options.model).expanduser().resolve()), None
    # a random-init shape, or a name the loader resolves (the registry's smollm2-135m-instruct, a cached hub id)
    cfg.model.name = options.model or f"random:{options.shape}"
    raw = load_raw_splits(cfg)
    return str(Path(resolve_model_path(cfg, raw)).resolve()), None if options.model else options.shape


def run_child(spec: dict, work: Path, name: str, threads: Optional[int] = None) -> dict:
    spec_path, result_path, log_path = work / f"{name}.spec.json", work / f"{name}.result.json", work / f"{name}.log"
    spec["result"] = str(result_path)
    spec_path.write_text(json.dumps(spec, indent=1))
    env = child_env(threads)
    print(f"[bench] {name}: {spec['config']['model']['backend']} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        rc = subprocess.call(
            [sys.executable, "-m", "llm_summarizer", "bench", "--child", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if rc != 0 or not result_path.exists():
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-40:])
        print(f"[bench] {name} failed (exit code {rc}); log {log_path}:\n{tail}", file=sys.stderr, flush=True)
        return {"failed": name, "exit_code": rc, "log": str(log_path), "log_tail": tail[-3000:]}
    res = json.loads(result_path.read_text())
    print(
        f"[bench] {name}: {res['tokens_per_s_nonpad']:.0f} non-pad tokens/s, {res['s_per_step']:.3f} s/step "
        f"({time.perf_counter() - t0:.0f} s in all)",
        file=sys.stderr,
        flush=True,
    )
    return res


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


SUMMARY_KEYS = (
    "tokens_per_s_all",
    "tokens_per_s_nonpad",
    "s_per_step",
    "padding_share",
    "peak_memory_gib",
    "mfu",
    "ceiling_tflops",
    "rouge_share",
    "rouge_s",
    "eval_s",
    "train_wall_s",
    "loss_check_rel_diff",
)


def aggregate(runs: list[dict], backends: list[str]) -> dict:
    per = {}
    for b in backends:
        rs = [r for r in runs if r["backend"] == b]
        if not rs:
            per[b] = {"effective": {}, "failed": True}
            continue
        per[b] = {
            k: _spread([r[k] for r in rs if r.get(k) is not None])
            for k in SUMMARY_KEYS
            if any(r.get(k) is not None for r in rs)
        }
        per[b]["effective"] = rs[0]["effective"]
    ratios = {}
    if set(BACKENDS) <= set(backends):
        u, t = per["unsloth"], per["transformers"]
        for k in ("tokens_per_s_all", "tokens_per_s_nonpad", "s_per_step", "peak_memory_gib", "mfu"):
            if k in u and k in t and t[k]["median"]:
                ratios[k] = round(u[k]["median"] / t[k]["median"], 3)
    # Same examples in the same order: each round's measured window fed both backends the same tokens.
    same = None
    if len(backends) > 1:
        rounds = sorted({r["round"] for r in runs})
        same = all(
            len({r["tokens_nonpad"] for r in runs if r["round"] == i}) == 1
            and len([r for r in runs if r["round"] == i]) == len(backends)
            for i in rounds
        )
    return {"backends": per, "ratios_unsloth_over_transformers": ratios, "same_tokens_each_round": same}


def prepare_run(options: BenchOptions, kind: str = ""):
    """What every benchmark invocation starts with: the data, the result path and work folder, the model
    directory (built once for a random-init shape). Returns (data, out, work, model_dir, shape)."""
    data = resolve_data(options.data)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    label = options.shape if not options.model else Path(options.model).name
    out = Path(options.out) if options.out else Path(OUTPUTS_DIR) / BENCH_DIR / f"{stamp}-{kind}{label}-{data[2]}.json"
    work = Path(options.work_dir) if options.work_dir else out.with_suffix("").with_name(out.stem + BENCH_WORK_SUFFIX)
    check_places(
        [Place("--out", out, "file"), Place("--work-dir", work, "bench", replaced=True)],
        [("--data", data[0]), ("--model", options.model)],
    )
    claim(work, "bench")
    probe = bench_config(options, data, "random:tiny", work / "prepare")
    model_dir, shape = prepare_model(options, probe)
    return data, out, work, model_dir, shape


def child_env(threads: Optional[int]) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def bench(options: BenchOptions) -> Written:
    """The rounds of runs, their aggregate written to the result file (and the Markdown row); the command prints it."""
    data, out, work, model_dir, shape = prepare_run(options)
    backends = list(options.backends)
    runs, configs, failures = [], {}, []
    for rnd in range(options.rounds):
        order = backends if rnd % 2 == 0 else backends[::-1]
        for b in order:
            name = f"r{rnd}-{b}"
            cfg = bench_config(options, data, model_dir, work / name)
            cfg.model.backend = b
            spec = {"config": config_to_dict(cfg), "warmup_steps": options.warmup_steps, "round": rnd}
            configs.setdefault(b, spec["config"])
            res = run_child(spec, work, name, options.threads)
            if "failed" in res:
                failures.append(res)
                continue
            res["round"], res["order"] = rnd, order.index(b)
            runs.append(res)
    if not runs:
        raise RuntimeError(f"every benchmark run failed; logs in {work}")
    first = runs[0]
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "llm-summarizer bench " + shlex.join(options.argv),
        "device": first["device"],
        "versions": first["versions"],
        "git_commit": git_commit(),
        "model": {
            "shape": shape,
            "dir": model_dir,
            "mode": "QLoRA 4-bit" if options.qlora else f"LoRA {first['precision']}",
            **first["model_stats"],
        },
        "data": {
            "name": data[2],
            "train": str(data[0]),
            "validation": str(data[1]) if data[1] else None,
            **first["data_stats"],
        },
        "settings": {
            "steps": options.steps,
            "warmup_steps": options.warmup_steps,
            "rounds": options.rounds,
            "backends": backends,
            "overrides": list(options.overrides),
            "config": options.config,
            "threads": options.threads,
        },
        "config": {k: v for k, v in configs[backends[0]].items() if k in ("model", "lora", "train", "eval")},
        **aggregate(runs, backends),
        "runs": runs,
        "failures": failures,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    if not options.keep and not failures:
        shutil.rmtree(work, ignore_errors=True)
    if options.markdown:
        append_row(Path(options.markdown), result)
    return Written(result, out, work)
