"""The benchmark's child process: one training run through the project's own path, measured.

Tokens are counted by a forward pre-hook on the model (the batches it really sees), step times by a
callback that syncs the device at every optimizer step; evaluations inside train() are left out.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, set_seed
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from ..config import Config
from ..data.rows import load_raw_splits
from ..environment import cpu_name, package_versions
from ..files import write_json
from ..models.device import PRECISION_DTYPE, training_plan
from ..models.loading import load_for_training
from ..stats import percentile
from ..training.run import build_session

GIB = 1024**3


def device_name() -> str:
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return f"{p.name} ({p.total_memory / GIB:.0f} GiB)"
    return f"CPU {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def matmul_ceiling(dtype, cuda: bool) -> float:
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
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best / 1e12


def model_stats(model) -> dict:
    """Matmul parameters of the frozen base (LoRA adapters apart), LoRA parameters, attention width."""
    base = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lora_" not in name:
            base += mod.in_features * mod.out_features
    conf = model.config
    heads = conf.num_attention_heads
    head_dim = getattr(conf, "head_dim", None) or conf.hidden_size // heads
    return {
        "matmul_params": base,
        "lora_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "layers": conf.num_hidden_layers,
        "attention_width": heads * head_dim,
    }


class TokenMeter:
    """Counts what the model is fed in training forwards; sums stay on the device until a step ends."""

    def __init__(self):
        self.all = 0
        self.micro = 0
        self.nonpad = None
        self.sumsq = None  # sum over sequences of length^2 (causal attention FLOPs)

    def hook(self, module, args, kwargs):
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
            return torch.zeros(seg.numel(), dtype=torch.long, device=ids.device).scatter_add_(
                0, seg, torch.ones_like(seg)
            )
        return torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=ids.device)

    def snapshot(self) -> tuple[int, int, float, int]:
        nonpad = int(self.nonpad.item()) if self.nonpad is not None else 0
        sumsq = float(self.sumsq.item()) if self.sumsq is not None else 0.0
        return self.all, nonpad, sumsq, self.micro


class StepClock(TrainerCallback):
    """Time and token count at the end of every optimizer step (after a device sync)."""

    def __init__(self):
        self.cuda = torch.cuda.is_available()
        self.meter = TokenMeter()
        self.marks = []  # (global_step, time, all, nonpad, sumsq, micro)
        self.evals = []  # (start, end) of every trainer.evaluate inside train()

    def now(self) -> float:
        if self.cuda:
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


def loss_check(trainer, tokenizer, n: int = 8) -> dict:
    """Loss of one training batch from the trainer's own collator vs the same examples one at a time."""
    ds = trainer.train_dataset
    rows = [ds[i] for i in range(min(n, len(ds)))]
    examples = []
    for r in rows:  # packed rows hold several examples: split them back by their lengths
        bounds = r.get("seq_lengths") or [len(r["input_ids"])]
        start = 0
        for length in bounds:
            examples.append(
                {"input_ids": r["input_ids"][start : start + length], "labels": r["labels"][start : start + length]}
            )
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
    return {
        "examples": len(examples),
        "batch_loss": batch_loss,
        "one_by_one_loss": one_by_one,
        "rel_diff": abs(batch_loss - one_by_one) / max(abs(one_by_one), 1e-12),
    }


def child(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    cfg = Config.model_validate(spec["config"])
    set_seed(cfg.train.seed)
    cuda = torch.cuda.is_available()
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    raw = load_raw_splits(cfg)
    model, tok, info = load_for_training(cfg, raw)
    clock = StepClock()
    session = build_session(cfg, model, tok, info, raw, extra_callbacks=[clock])
    trainer = session.trainer
    trainer.model.register_forward_pre_hook(clock.meter.hook, with_kwargs=True)
    clock.wrap_evaluate(trainer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = trainer.train()
    train_wall = time.perf_counter() - t0
    peak = (
        torch.cuda.max_memory_allocated() / GIB
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    )
    try:
        check = loss_check(trainer, tok)
    except Exception as e:  # keep the speed numbers of a run whose check could not run; say why
        check = {"error": f"{type(e).__name__}: {e}"[:500], "rel_diff": None}
    plan = training_plan(cfg, probe_optim=False)
    ceiling = matmul_ceiling(PRECISION_DTYPE["bf16" if plan.precision == "fp32" and cuda else plan.precision], cuda)
    stats = model_stats(trainer.model)
    write_json(
        Path(spec["result"]),
        measure(
            spec,
            cfg,
            clock,
            trainer,
            session,
            out,
            train_wall,
            peak,
            check,
            ceiling,
            stats,
            plan.precision,
            cuda,
            device_name(),
            package_versions(),
        ),
    )
    return 0


def _length_stats(st) -> dict:
    lengths = sorted(p + c for p, c in zip(st.prompt_tokens, st.completion_tokens))
    n = len(lengths)
    return {
        "train_rows": n,
        "tokens_per_example": {
            "min": lengths[0],
            "mean": round(sum(lengths) / n, 1),
            "p50": percentile(lengths, 0.5),
            "p95": percentile(lengths, 0.95),
            "max": lengths[-1],
        },
    }


def measure(
    spec, cfg, clock, trainer, session, out, train_wall, peak, check, ceiling, stats, precision, cuda, device, versions
) -> dict:
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
        print(
            f"warning: the token counter saw {micro} training forwards for {expected_micro} micro-batches",
            file=sys.stderr,
        )
    step_times = []
    for a, b in zip(marks, marks[1:]):
        if a[0] >= warm:
            step_times.append(b[1] - a[1] - sum(e1 - e0 for e0, e1 in clock.evals if a[1] <= e0 and e1 <= b[1]))
    flops = (4 * stats["matmul_params"] + 6 * stats["lora_params"]) * nonpad + 6 * stats["layers"] * stats[
        "attention_width"
    ] * sumsq
    rouge_s = session.evaluator.total_seconds if session.evaluator else 0.0
    args = trainer.args
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "backend": cfg.model.backend,
        "device": device,
        "versions": versions,
        "precision": precision,
        "effective": {
            "padding_free": bool(getattr(trainer, "padding_free", args.padding_free)),
            "packing": bool(args.packing),
            "sampling": str(args.train_sampling_strategy),
            "attn_implementation": getattr(trainer.model.config, "_attn_implementation", None),
            "optim": str(getattr(args.optim, "value", args.optim)),
            "gradient_checkpointing": cfg.model.gradient_checkpointing,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
        },
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
