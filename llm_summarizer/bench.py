"""Benchmark the project's own training path: backend unsloth against backend transformers, in one run.

    python -m llm_summarizer.bench --threads 1                         # CPU: tiny random-init Llama, ~8 min
    python -m llm_summarizer.bench --steps 8 --warmup-steps 2 --rounds 1 eval.num_samples=4   # a quick look
    python -m llm_summarizer.bench --shape llama-1b --data dialogsum   # GPU: Llama-3.2-1B shape, bf16 LoRA
    python -m llm_summarizer.bench --shape llama-1b --data dialogsum --qlora
    python -m llm_summarizer.bench --model /path/to/model --data path/to/data_dir train.padding_free=true
    python -m llm_summarizer.bench --from-json outputs/bench/RESULT.json   # append that result's row again
    bash scripts/bench_gpu.sh                                          # the GPU rows of BENCHMARKS.md

Both backends run what `python -m llm_summarizer.train` runs: the same Config, data.prepare and
trainer.build_trainer (through train.build_session, so the ROUGE callback is in), from the same model
directory, on the same examples in the same order. Each measured run is a child process of its own,
because importing unsloth patches transformers for the rest of a process; the parent alternates
which backend goes first from round to round, so drift of the machine falls on both.

Per run, over the optimizer steps after --warmup-steps and without the time spent evaluating:
tokens/s counting every token the model is fed and counting non-padding tokens only (read by a
forward pre-hook on the model, so from the batches the model really sees: Unsloth's trainer calls
the collator twice per step), seconds per optimizer step, and MFU (model FLOPs of the non-padding
tokens, LoRA's frozen base: 4 x matmul parameters + 6 x LoRA parameters per token + causal
attention, over a bf16 (GPU) or fp32 (CPU) matmul ceiling measured in the same process). Over the
whole of trainer.train(): peak GPU memory (peak RSS of the process on CPU) and the ROUGE callback's
share of the wall time. After training, the loss of one real training batch (padding-free or packed
when the config says so) is compared with the same examples run one at a time. Checkpoint saving is
off; everything else is the config's (--config, else the schema defaults: what a user gets untuned).
The JSON result goes to --out; one row per invocation is appended to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from .config import Config, UserError, config_to_dict, load_config

ROOT = Path(__file__).resolve().parent.parent
# Real summarization data beside the checkout when the machine has it; the demo data otherwise.
SHARED_DATA = ROOT.parent / "shared" / "data"
DEMO_DATA = ROOT / "data" / "demo"
BACKENDS = ("unsloth", "transformers")
GIB = 1024 ** 3


# ---------------------------------------------------------------------------------------------
# Parent: resolve what to run, alternate child runs, aggregate, report


def resolve_data(spec: str) -> tuple[Path, Optional[Path], str]:
    """(train file, validation file or None, short name) for --data."""
    if spec == "auto":
        spec = "dialogsum" if (SHARED_DATA / "dialogsum" / "train.jsonl").exists() else "demo"
    if spec == "demo":
        d = DEMO_DATA
    elif "/" not in spec and not Path(spec).exists():
        d = SHARED_DATA / spec
        if not (d / "train.jsonl").exists():
            raise UserError(f"--data {spec}: no {d}/train.jsonl; give a directory with train.jsonl "
                            f"(and validation.jsonl), a JSONL file, 'demo', or 'auto'")
    else:
        d = Path(spec).expanduser()
        if d.is_file():
            return d.resolve(), None, d.stem
        if not (d / "train.jsonl").exists():
            raise UserError(f"--data {spec}: expected a JSONL file or a directory holding train.jsonl")
    val = d / "validation.jsonl"
    return (d / "train.jsonl").resolve(), val.resolve() if val.exists() else None, d.name


def bench_config(args, data: tuple[Path, Optional[Path], str], model_name: str, run_dir: Path) -> Config:
    cfg = load_config(args.config, args.overrides)
    train_path, val_path, _ = data
    # What the measurement needs, whatever the config says: the same model and data for both backends,
    # a fixed number of steps, no checkpoints on disk, no trackers, no resuming from an earlier run.
    cfg.model.name = model_name
    cfg.model.load_in_4bit = bool(args.qlora)
    if args.qlora:
        cfg.model.load_in_8bit = False
    cfg.data.train = {"path": str(train_path), "limit": args.train_rows}
    cfg.data.validation = {"path": str(val_path), "limit": args.val_rows} if val_path else None
    cfg.data.test = None
    cfg.train.max_steps = args.steps
    cfg.train.save_strategy = "no"
    cfg.train.load_best_model_at_end = False
    cfg.train.resume = "never"
    cfg.output.dir = str(run_dir)
    cfg.output.model_dir = str(run_dir / "final")
    cfg.tracking.report_to = ["none"]
    return Config.model_validate(config_to_dict(cfg))  # cross-field checks once more


def prepare_model(args, cfg: Config) -> tuple[str, Optional[str]]:
    """The model directory both backends load: built once here for a random-init shape."""
    if args.model:
        return str(Path(args.model).expanduser().resolve()), None
    from . import data, model as model_lib

    cfg.model.name = f"random:{args.shape}"
    raw = data.load_raw_splits(cfg)
    return str(Path(model_lib.resolve_model_path(cfg, raw)).resolve()), args.shape


def run_child(spec: dict, work: Path, name: str, threads: Optional[int] = None) -> dict:
    spec_path, result_path, log_path = work / f"{name}.spec.json", work / f"{name}.result.json", work / f"{name}.log"
    spec["result"] = str(result_path)
    spec_path.write_text(json.dumps(spec, indent=1))
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print(f"[bench] {name}: {spec['config']['model']['backend']} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        rc = subprocess.call([sys.executable, "-m", "llm_summarizer.bench", "--child", str(spec_path)],
                             stdout=log, stderr=subprocess.STDOUT, env=env)
    if rc != 0 or not result_path.exists():
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-40:])
        print(f"[bench] {name} failed (exit code {rc}); log {log_path}:\n{tail}", file=sys.stderr, flush=True)
        return {"failed": name, "exit_code": rc, "log": str(log_path), "log_tail": tail[-3000:]}
    res = json.loads(result_path.read_text())
    print(f"[bench] {name}: {res['tokens_per_s_nonpad']:.0f} non-pad tokens/s, {res['s_per_step']:.3f} s/step "
          f"({time.perf_counter() - t0:.0f} s in all)", file=sys.stderr, flush=True)
    return res


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


SUMMARY_KEYS = ("tokens_per_s_all", "tokens_per_s_nonpad", "s_per_step", "padding_share", "peak_memory_gib",
                "mfu", "ceiling_tflops", "rouge_share", "rouge_s", "eval_s", "train_wall_s", "loss_check_rel_diff")


def aggregate(runs: list[dict], backends: list[str]) -> dict:
    per = {}
    for b in backends:
        rs = [r for r in runs if r["backend"] == b]
        if not rs:
            per[b] = {"effective": {}, "failed": True}
            continue
        per[b] = {k: _spread([r[k] for r in rs if r.get(k) is not None]) for k in SUMMARY_KEYS
                  if any(r.get(k) is not None for r in rs)}
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
        same = all(len({r["tokens_nonpad"] for r in runs if r["round"] == i}) == 1 and
                   len([r for r in runs if r["round"] == i]) == len(backends) for i in rounds)
    return {"backends": per, "ratios_unsloth_over_transformers": ratios, "same_tokens_each_round": same}


def bench(args) -> dict:
    from .artifacts import git_commit, write_json

    data = resolve_data(args.data)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    label = args.shape if not args.model else Path(args.model).name
    out = Path(args.out) if args.out else ROOT / "outputs" / "bench" / f"{stamp}-{label}-{data[2]}.json"
    work = Path(args.work_dir) if args.work_dir else out.with_suffix("").with_name(out.stem + ".runs")
    work.mkdir(parents=True, exist_ok=True)
    probe = bench_config(args, data, "random:tiny", work / "prepare")
    model_dir, shape = prepare_model(args, probe)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    runs, configs, failures = [], {}, []
    for rnd in range(args.rounds):
        order = backends if rnd % 2 == 0 else backends[::-1]
        for b in order:
            name = f"r{rnd}-{b}"
            cfg = bench_config(args, data, model_dir, work / name)
            cfg.model.backend = b
            spec = {"config": config_to_dict(cfg), "warmup_steps": args.warmup_steps, "round": rnd}
            configs.setdefault(b, spec["config"])
            res = run_child(spec, work, name, args.threads)
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
        "command": "python -m llm_summarizer.bench " + shlex.join(args.argv),
        "device": first["device"],
        "versions": first["versions"],
        "git_commit": git_commit(),
        "model": {"shape": shape, "dir": model_dir, "mode": "QLoRA 4-bit" if args.qlora else f"LoRA {first['precision']}",
                  **first["model_stats"]},
        "data": {"name": data[2], "train": str(data[0]), "validation": str(data[1]) if data[1] else None,
                 **first["data_stats"]},
        "settings": {"steps": args.steps, "warmup_steps": args.warmup_steps, "rounds": args.rounds,
                     "backends": backends, "overrides": args.overrides, "config": args.config,
                     "threads": args.threads},
        "config": {k: v for k, v in configs[backends[0]].items() if k in ("model", "lora", "train", "eval")},
        **aggregate(runs, backends),
        "runs": runs,
        "failures": failures,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    if not args.keep and not failures:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    if args.markdown:
        append_row(Path(args.markdown), result)
    print(render_summary(result, out))
    if failures:
        raise RuntimeError(f"{len(failures)} run(s) failed ({', '.join(f['failed'] for f in failures)}); "
                           f"the others are in {out}; logs in {work}")
    return result


# ---------------------------------------------------------------------------------------------
# Reporting

TABLE_HEADER = (
    "| date | device | model · mode · data | settings | non-pad tokens/s (min-max) | all tokens/s | s/step | "
    "peak memory GiB | MFU | ROUGE share | unsloth / transformers | versions | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)
MARKER = "<!-- bench rows: python -m llm_summarizer.bench appends below -->"


def _pair(result: dict, key: str, fmt: str, spread: bool = False) -> str:
    cells = []
    for b, s in result["backends"].items():
        if s.get("failed"):
            cells.append(f"{b[0]}: failed")
            continue
        if key not in s:
            cells.append(f"{b[0]}: n/a")
            continue
        v = s[key]
        cell = f"{b[0]}: {format(v['median'], fmt)}"
        if spread and v["n"] > 1:
            cell += f" ({format(v['min'], fmt)}-{format(v['max'], fmt)})"
        cells.append(cell)
    return "<br>".join(cells)


def _settings(result: dict) -> str:
    c = result["config"]
    t = c["train"]
    parts = [f"batch {t['per_device_train_batch_size']}x{t['gradient_accumulation_steps']}",
             f"max_seq {c['model']['max_seq_length']}", f"r={c['lora']['r']}",
             f"steps {result['settings']['warmup_steps']}+{result['settings']['steps'] - result['settings']['warmup_steps']}"
             f" x{result['settings']['rounds']}",
             f"sampling {t.get('sampling', 'random')}"]
    if result["settings"].get("threads"):
        parts.append(f"{result['settings']['threads']} CPU thread(s)")
    for b, s in result["backends"].items():
        eff = s["effective"]
        if not eff:
            continue
        feats = [k for k in ("padding_free", "packing") if eff.get(k)]
        parts.append(f"{b[0]}: {'+'.join(feats) or 'padded'}, {eff.get('attn_implementation')}, {eff.get('optim')}")
    return ", ".join(parts)


def table_row(result: dict) -> str:
    v = result["versions"]
    versions = ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "trl", "peft", "unsloth") if k in v)
    ratios = result["ratios_unsloth_over_transformers"]
    names = {"tokens_per_s_nonpad": "non-pad tok/s", "s_per_step": "s/step", "peak_memory_gib": "memory"}
    ratio = ", ".join(f"{names[k]} {r:.2f}x" for k, r in ratios.items() if k in names)
    m, d = result["model"], result["data"]
    what = f"{m['shape'] or Path(m['dir']).name} · {m['mode']} · {d['name']}"
    cells = [result["date"], result["device"], what, _settings(result),
             _pair(result, "tokens_per_s_nonpad", ".0f", spread=True), _pair(result, "tokens_per_s_all", ".0f"),
             _pair(result, "s_per_step", ".3f", spread=True), _pair(result, "peak_memory_gib", ".2f"),
             _pair(result, "mfu", ".2%"), _pair(result, "rouge_share", ".1%"), ratio or "n/a", versions,
             f"`{result['command']}`"]
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |\n"


def append_row(path: Path, result: dict) -> None:
    """Add the row at the end of the table under MARKER (made, with its header, when missing)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if MARKER not in text:
        text = text.rstrip("\n") + "\n\n" + MARKER + "\n\n" + TABLE_HEADER
    head, tail = text.split(MARKER, 1)
    lines = tail.splitlines(True)
    i = next((k for k, l in enumerate(lines) if l.startswith("|")), len(lines))
    while i < len(lines) and lines[i].startswith("|"):
        i += 1
    if i and not lines[i - 1].endswith("\n"):
        lines[i - 1] += "\n"
    lines.insert(i, table_row(result))
    path.write_text(head + MARKER + "".join(lines), encoding="utf-8")


def render_summary(result: dict, out: Path) -> str:
    lines = [f"\n== llm_summarizer bench: {result['model']['shape'] or result['model']['dir']} "
             f"({result['model']['mode']}) on {result['data']['name']}, {result['device']}"]
    for b, s in result["backends"].items():
        def g(k, fmt):
            return format(s[k]["median"], fmt) if k in s else "n/a"
        lines.append(f"   {b:<13} non-pad {g('tokens_per_s_nonpad', '.0f')} tok/s (all {g('tokens_per_s_all', '.0f')}), "
                     f"{g('s_per_step', '.3f')} s/step, peak {g('peak_memory_gib', '.2f')} GiB, MFU {g('mfu', '.2%')}, "
                     f"ROUGE share {g('rouge_share', '.1%')}, batch-vs-single loss rel. diff {g('loss_check_rel_diff', '.1e')}")
    if result["ratios_unsloth_over_transformers"]:
        lines.append("   unsloth/transformers: " + ", ".join(
            f"{k} {v:.2f}x" for k, v in result["ratios_unsloth_over_transformers"].items()))
    bad = [f"{r['backend']} round {r['round']}" for r in result["runs"] if not r.get("token_count_ok", True)]
    if bad:
        lines.append(f"   WARNING: token counts unreliable in {', '.join(bad)} (forwards seen != micro-batches)")
    lines.append(f"   result: {out}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Child: one measured training run


def _device_name(torch) -> str:
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return f"{p.name} ({p.total_memory / GIB:.0f} GiB)"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def matmul_ceiling(torch, dtype, cuda: bool) -> float:
    """Best sustained TFLOP/s of one square matmul in the training dtype: the MFU denominator."""
    n = 8192 if cuda else 1024
    dev = "cuda" if cuda else "cpu"
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    best = 0.0
    for _ in range(5):
        reps = 10 if cuda else 4
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0))
    return best / 1e12


def model_stats(model) -> dict:
    """Matmul parameters of the frozen base (LoRA adapters apart), LoRA parameters, attention width."""
    import torch

    base = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lora_" not in name:
            base += mod.in_features * mod.out_features
    conf = model.config
    heads = conf.num_attention_heads
    head_dim = getattr(conf, "head_dim", None) or conf.hidden_size // heads
    return {"matmul_params": base, "lora_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "layers": conf.num_hidden_layers, "attention_width": heads * head_dim}


class TokenMeter:
    """Counts what the model is fed in training forwards; sums stay on the device until a step ends."""

    def __init__(self, torch):
        self.torch = torch
        self.all = 0
        self.micro = 0
        self.nonpad = None
        self.sumsq = None  # sum over sequences of length^2 (causal attention FLOPs)

    def hook(self, module, args, kwargs):
        torch = self.torch
        if not module.training or not torch.is_grad_enabled():
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        lengths = self.lengths(ids, kwargs)
        nonpad, sumsq = lengths.sum(), (lengths.double() ** 2).sum()
        self.nonpad = nonpad if self.nonpad is None else self.nonpad + nonpad
        self.sumsq = sumsq if self.sumsq is None else self.sumsq + sumsq
        self.all += ids.numel()
        self.micro += 1

    def lengths(self, ids, kwargs):
        torch = self.torch
        psl = kwargs.get("packed_seq_lengths")
        if psl is not None:  # Unsloth's padding-free metadata
            return psl.to(ids.device).long().view(-1)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            return mask.long().sum(-1)
        pos = kwargs.get("position_ids")
        if pos is not None and mask is None:
            # Padding-free / packed rows: a sequence starts wherever position_ids restart at 0.
            starts = (pos.reshape(-1) == 0).long()
            starts[0] = 1
            seg = starts.cumsum(0) - 1
            return torch.zeros(seg.numel(), dtype=torch.long, device=ids.device).scatter_add_(0, seg, torch.ones_like(seg))
        return torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=ids.device)

    def snapshot(self) -> tuple[int, int, float, int]:
        nonpad = int(self.nonpad.item()) if self.nonpad is not None else 0
        sumsq = float(self.sumsq.item()) if self.sumsq is not None else 0.0
        return self.all, nonpad, sumsq, self.micro


def make_step_clock(torch, cuda: bool):
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """Time and token count at the end of every optimizer step (after a device sync)."""

        def __init__(self):
            self.meter = TokenMeter(torch)
            self.marks = []  # (global_step, time, all, nonpad, sumsq, micro)
            self.evals = []  # (start, end) of every trainer.evaluate inside train()

        def now(self) -> float:
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks.append((state.global_step, self.now(), *self.meter.snapshot()))

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((state.global_step, self.now(), *self.meter.snapshot()))

        def wrap_evaluate(self, trainer):
            original = trainer.evaluate

            def evaluate(*a, **kw):
                t0 = self.now()
                try:
                    return original(*a, **kw)
                finally:
                    self.evals.append((t0, self.now()))

            trainer.evaluate = evaluate

    return StepClock()


def loss_check(trainer, tokenizer, n: int = 8) -> dict:
    """Loss of one training batch from the trainer's own collator vs the same examples one at a time."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    ds = trainer.train_dataset
    rows = [ds[i] for i in range(min(n, len(ds)))]
    examples = []
    for r in rows:  # packed rows hold several examples: split them back by their lengths
        bounds = r.get("seq_lengths") or [len(r["input_ids"])]
        start = 0
        for length in bounds:
            examples.append({"input_ids": r["input_ids"][start:start + length],
                             "labels": r["labels"][start:start + length]})
            start += length
    single = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    model = trainer.model
    was_training = model.training
    model.eval()
    dev = trainer.args.device

    def loss(batch):
        batch = {k: v.to(dev) if hasattr(v, "to") else v for k, v in batch.items()}
        return float(trainer.compute_loss(model, batch).float().item())

    try:
        with torch.no_grad():
            batch_loss = loss(trainer.data_collator(rows))
            total, count = 0.0, 0
            for ex in examples:
                b = single([ex])
                k = int((b["labels"][:, 1:] != -100).sum())
                if k:
                    total += loss(b) * k
                    count += k
    finally:
        model.train(was_training)
    one_by_one = total / max(count, 1)
    return {"examples": len(examples), "batch_loss": batch_loss, "one_by_one_loss": one_by_one,
            "rel_diff": abs(batch_loss - one_by_one) / max(abs(one_by_one), 1e-12)}


def child(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    cfg = Config.model_validate(spec["config"])
    from . import data, model as model_lib, train as train_lib
    from .artifacts import package_versions, write_json

    train_lib.seed_everything(cfg)  # imports unsloth first on the unsloth backend
    import resource

    import torch

    cuda = torch.cuda.is_available()
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    raw = data.load_raw_splits(cfg)
    model, tok, info = model_lib.load_model_and_tokenizer(cfg, raw)
    clock = make_step_clock(torch, cuda)
    session = train_lib.build_session(cfg, model, tok, info, raw, extra_callbacks=[clock])
    trainer = session.trainer
    trainer.model.register_forward_pre_hook(clock.meter.hook, with_kwargs=True)
    clock.wrap_evaluate(trainer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = trainer.train()
    train_wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / GIB if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    try:
        check = loss_check(trainer, tok)
    except Exception as e:  # keep the speed numbers of a run whose check could not run; say why
        check = {"error": f"{type(e).__name__}: {e}"[:500], "rel_diff": None}
    prec = model_lib.pick_precision(cfg)
    ceiling = matmul_ceiling(torch, torch.bfloat16 if cuda and prec.name != "fp16" else
                             (torch.float16 if cuda else torch.float32), cuda)
    stats = model_stats(trainer.model)
    write_json(Path(spec["result"]), measure(spec, cfg, clock, trainer, session, out, train_wall, peak, check, ceiling,
                                             stats, prec.name, cuda, _device_name(torch), package_versions()))
    return 0


def _length_stats(st) -> dict:
    lengths = sorted(p + c for p, c in zip(st.prompt_tokens, st.completion_tokens))
    n = len(lengths)
    return {"train_rows": n, "tokens_per_example": {"min": lengths[0], "mean": round(sum(lengths) / n, 1),
                                                     "p50": lengths[n // 2],
                                                     "p95": lengths[min(n - 1, int(n * 0.95))], "max": lengths[-1]}}


def measure(spec, cfg, clock, trainer, session, out, train_wall, peak, check, ceiling, stats, precision, cuda,
            device, versions) -> dict:
    warm = spec["warmup_steps"]
    marks = clock.marks
    by_step = {m[0]: m for m in marks}
    last = marks[-1]
    if warm not in by_step or last[0] <= warm:
        raise RuntimeError(f"only {last[0]} optimizer steps ran; the benchmark needs more than --warmup-steps={warm}")
    first = by_step[warm]
    evals_inside = sum(e1 - e0 for e0, e1 in clock.evals if first[1] <= e0 and e1 <= last[1])
    train_s = last[1] - first[1] - evals_inside
    steps = last[0] - first[0]
    tokens_all, nonpad, sumsq, micro = (last[i] - first[i] for i in (2, 3, 4, 5))
    # One counted forward per micro-batch, else the token counts are off (a wrapper calling the model twice,
    # or a forward the hook does not see): kept in the result rather than losing the run.
    expected_micro = steps * cfg.train.gradient_accumulation_steps
    if micro != expected_micro:
        print(f"warning: the token counter saw {micro} training forwards for {expected_micro} micro-batches",
              file=sys.stderr)
    step_times = []
    for a, b in zip(marks, marks[1:]):
        if a[0] >= warm:
            step_times.append(b[1] - a[1] - sum(e1 - e0 for e0, e1 in clock.evals if a[1] <= e0 and e1 <= b[1]))
    flops = (4 * stats["matmul_params"] + 6 * stats["lora_params"]) * nonpad + 6 * stats["layers"] * stats["attention_width"] * sumsq
    rouge_s = session.evaluator.total_seconds if session.evaluator else 0.0
    args = trainer.args
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "backend": cfg.model.backend,
        "device": device,
        "versions": versions,
        "precision": precision,
        "effective": {"padding_free": bool(getattr(trainer, "padding_free", args.padding_free)),
                      "packing": bool(args.packing), "sampling": str(args.train_sampling_strategy),
                      "attn_implementation": getattr(trainer.model.config, "_attn_implementation", None),
                      "optim": str(getattr(args.optim, "value", args.optim)),
                      "gradient_checkpointing": cfg.model.gradient_checkpointing,
                      "per_device_train_batch_size": args.per_device_train_batch_size,
                      "gradient_accumulation_steps": args.gradient_accumulation_steps},
        "model_stats": stats,
        "data_stats": _length_stats(session.prepared.stats["train"]),
        "steps_measured": steps,
        "micro_batches": micro,
        "token_count_ok": micro == expected_micro,
        "tokens_all": tokens_all,
        "tokens_nonpad": nonpad,
        "padding_share": 1 - nonpad / tokens_all if tokens_all else None,
        "train_s": train_s,
        "tokens_per_s_all": tokens_all / train_s,
        "tokens_per_s_nonpad": nonpad / train_s,
        "s_per_step": train_s / steps,
        "s_per_step_median": statistics.median(step_times),
        "step_s": [round(s, 4) for s in step_times],
        "model_flops": flops,
        "ceiling_tflops": ceiling,
        "mfu": flops / train_s / (ceiling * 1e12),
        "peak_memory_gib": peak,
        "peak_memory_kind": "GPU max_memory_allocated" if cuda else "process peak RSS",
        "train_wall_s": train_wall,
        "eval_s": sum(e1 - e0 for e0, e1 in clock.evals),
        "evaluations": len(clock.evals),
        "rouge_s": rouge_s,
        "rouge_calls": session.evaluator.calls if session.evaluator else 0,
        "rouge_share": rouge_s / train_wall if train_wall else None,
        "train_loss": out.training_loss,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_check": check,
        "loss_check_rel_diff": check["rel_diff"],
    }


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m llm_summarizer.bench", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n")[2:]))
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--shape", default="tiny", help="random-init shape: tiny (CPU), llama-1b, qwen-1.5b, llama-8b")
    src.add_argument("--model", help="a local model directory instead of a random-init shape")
    ap.add_argument("--data", default="auto",
                    help="auto (../shared/data/dialogsum when present, else data/demo), demo, dialogsum, scitldr, "
                         "a directory with train.jsonl [+ validation.jsonl], or a JSONL file")
    ap.add_argument("--train-rows", type=int, help="use only the first N training rows (default: all)")
    ap.add_argument("--val-rows", type=int, help="use only the first N validation rows (eval loss + ROUGE pool)")
    ap.add_argument("--config", help="base YAML config; default: the schema defaults (what a user gets untuned)")
    ap.add_argument("--qlora", action="store_true", help="load the base in 4-bit (QLoRA; needs a CUDA GPU)")
    ap.add_argument("--backends", default="unsloth,transformers", help="comma-separated, measured in alternation")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per run (warm-up included)")
    ap.add_argument("--warmup-steps", type=int, default=5, help="first steps left out of the speed numbers")
    ap.add_argument("--rounds", type=int, default=3, help="runs per backend; the order alternates each round")
    ap.add_argument("--threads", type=int, help="CPU threads per run (OMP_NUM_THREADS); on a shared CPU, 1 "
                    "avoids the stalls of oversubscribed thread pools. Default: the library's choice")
    ap.add_argument("--out", help="JSON result path (default outputs/bench/<time>-<model>-<data>.json)")
    ap.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"), help="append the row here ('' for none)")
    ap.add_argument("--work-dir", help="where the runs write (default: beside --out; removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the run directories and logs")
    ap.add_argument("--from-json", nargs="+", metavar="JSON", help="append the rows of earlier results and exit")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config overrides for every run: train.padding_free=true ...")
    return ap


def main(argv=None) -> int:
    from .cli import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.child:
        setup_logging(os.environ.get("LLM_SUMMARIZER_LOG_LEVEL", "INFO"))
        return child(args.child)
    try:
        if args.from_json:
            for p in args.from_json:
                append_row(Path(args.markdown), json.loads(Path(p).read_text()))
                print(f"appended the row of {p} to {args.markdown}")
            return 0
        if args.steps <= args.warmup_steps:
            raise UserError(f"--steps ({args.steps}) must be larger than --warmup-steps ({args.warmup_steps})")
        if args.rounds < 1:
            raise UserError("--rounds must be at least 1")
        unknown = set(b.strip() for b in args.backends.split(",")) - set(BACKENDS)
        if unknown:
            raise UserError(f"--backends: unknown {', '.join(sorted(unknown))}; use {', '.join(BACKENDS)}")
        bench(args)
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
