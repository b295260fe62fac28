"""The stages, checks and summary of scripts/gpu_check.sh: every GPU path of the project in one 10-minute call.

    python scripts/gpu_check.py budgets                  # "stage budget" lines, in the order the stages run
    python scripts/gpu_check.py warm WORK OUT env t4 ... # the in-process stages in one warm process (imports paid once)
    python scripts/gpu_check.py check-train OUT MODEL --backend transformers --four-bit --optim adamw_8bit
    python scripts/gpu_check.py compare-adapters A B     # max abs difference of two adapters, bitwise or not
    python scripts/gpu_check.py collective               # under torchrun: an all_reduce (NCCL on GPUs)
    python scripts/gpu_check.py summary WORK OUT         # gpu_check.json + gpu_check.md from the stage records

Stages, in the order users meet them, with their budgets in seconds (BUDGETS; they sum to at most 560, leaving the
rest of a 10-minute call to installing the wheels):
  env       versions as they ran (the device image's, against the lock), the GPU, the device plan for it and for a T4
  load      Unsloth's loader through ours on the device: 16-bit, 4-bit NF4, 8-bit, each in float16 as on a T4 (layers,
            dtype, a training forward/backward, generation)
  t4        the T4's settings forced on the big card: train.precision=fp16 (float16 weights), 4-bit NF4, adamw_8bit,
            Unsloth's offloaded gradient checkpointing, the T4's 14.7 GiB through set_per_process_memory_fraction, a
            ROUGE evaluation between steps; asserts the checkpointing flags and no decode buffers after it, fp16
            with the loss scaler, peak memory under the cap
  train     the schema's GPU defaults on this card (bf16 where it has it): the model the next stages use
  generate  evaluate, summarize and serve (in process) with the train stage's model
  export    merged-16bit and merged-4bit; and merged-16bit with the 16-bit model offloaded (a GPU described as too
            small for it) and the adapter merged shard by shard
  oom       the generation back-off on a real torch.cuda.OutOfMemoryError; the train command's answer to a real one
  resume    SIGKILL in the middle of a run and resume, against an uninterrupted run (its own processes)
  train_tf  the train command on the transformers backend, in a process without Unsloth
  torchrun  the train command under torchrun --nproc_per_node=1, and an NCCL all_reduce
Every stage records its result, seconds, peak GPU memory (torch's allocator in the warm process, nvidia-smi for the
others) and facts in WORK/stages.jsonl; assertions that need a CUDA GPU are named as not checked on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TEST_DOCS = ROOT / "data" / "demo" / "test.jsonl"
LOCK = ROOT / "requirements" / "lock-linux-x86_64.txt"

# The stages in the order they run, with their budgets (seconds on a GPU; a dry run on a CPU multiplies them).
BUDGETS = {
    "env": 25,  # the warm process's imports included
    "load": 20,
    "t4": 130,
    "train": 60,
    "generate": 50,
    "export": 80,
    "oom": 35,
    "resume": 70,
    "train_tf": 40,
    "torchrun": 40,
}
WARM = ("env", "load", "t4", "train", "generate", "export", "oom")  # one process; the others run their own
T4 = {"name": "Tesla T4", "capability": (7, 5), "memory_gib": 14.7}


# ---------------------------------------------------------------------------------------------------------
# facts


def record(**facts) -> None:
    path = os.environ.get("GPU_CHECK_FACTS")
    if not path:
        return
    p = Path(path)
    old = json.loads(p.read_text()) if p.is_file() else {}
    for k, v in facts.items():
        if k == "skipped":
            old.setdefault("skipped", []).extend(v)
        else:
            old[k] = v
    p.write_text(json.dumps(old, indent=1, default=str))


def skip(reason: str) -> None:
    """An assertion that cannot be made on this machine: said, not passed silently."""
    print(f"gpu_check: not checked here: {reason}", flush=True)
    record(skipped=[reason])


def need(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"gpu_check: FAILED: {what}")
    print(f"gpu_check: ok: {what}", flush=True)


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def peak_gib() -> float:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


def docs(n: int) -> list[str]:
    rows = [json.loads(line) for line in TEST_DOCS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["document"] for r in rows[:n]]


def lock_differences(versions: dict) -> dict:
    """{package: "ran X, lock Y"} for the packages that ran at another version than the lock pins (the GPU image brings
    its own torch, transformers, peft, accelerate)."""
    if not LOCK.is_file():
        return {}
    pins = {}
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    out = {}
    for pkg, ran in versions.items():
        pin = pins.get(pkg.lower().replace("_", "-"))
        if pin and ran and pin != ran:
            out[pkg] = f"ran {ran}, lock {pin}"
    return out


# ---------------------------------------------------------------------------------------------------------
# the warm stages (one process: Unsloth, torch and the package imported once)


class Ctx:
    def __init__(self, work: Path, out: Path, require_gpu: bool):
        self.work, self.out, self.require_gpu = work, out, require_gpu
        self.models = work / "models"  # the random-init tiny model, built once by the first stage that needs it
        self.trained = work / "train" / "model"  # the train stage's model, for generate, oom and export
        self.steps = 200 if cuda() else 12  # on a GPU enough for the tiny model to write summaries

    def overrides(self, stage: str, *extra: str) -> list[str]:
        return [
            f"model.cache_dir={self.models}",
            "train.logging_steps=5",
            "tracking.report_to=[none]",
            f"output.dir={self.work / stage / 'out'}",
            f"output.model_dir={self.work / stage / 'model'}",
            *extra,
        ]

    def qlora(self) -> list[str]:
        s = self.steps
        return [
            "model.load_in_4bit=true",
            "train.optim=adamw_8bit",
            "model.gradient_checkpointing=unsloth",
            f"train.max_steps={s}",
            f"train.eval_steps={s // 2}",
            f"train.save_steps={s // 2}",
            "eval.num_samples=8",
        ]

    def needs_model(self) -> None:
        if not (self.trained / "adapter_model.safetensors").is_file():
            raise Skip(f"needs the train stage's model ({self.trained})")


class Skip(Exception):
    pass


class StageTimeout(BaseException):  # not an Exception: nothing in a stage catches it
    pass


def stage_env(ctx: Ctx) -> None:
    import torch

    from llm_summarizer.config_loading import load_config
    from llm_summarizer.environment import package_versions
    from llm_summarizer.models.device import KNOWN, current, training_plan

    versions = package_versions()
    versions.update(python=sys.version.split()[0], cuda=torch.version.cuda)
    device = current()
    plan = training_plan(load_config("tiny"), device, probe_optim=False)
    t4 = training_plan(load_config("default"), KNOWN["t4"], probe_optim=False)
    record(
        versions=versions,
        versions_vs_lock=lock_differences(versions),
        gpu=device.name if device.cuda else None,
        gpu_memory_gib=device.memory_gib,
        device=device.describe(),
        precision_auto=plan.describe(),
        t4_plan=t4.describe(),
    )
    need(t4.precision == "fp16" and t4.dtype == torch.float16, f"a T4 is planned in fp16: {t4.describe()}")
    if device.cuda:
        want = "bf16" if device.bf16 else "fp16"
        need(plan.precision == want, f"train.precision=auto on {device.describe()}: {plan.describe()}")
    else:
        need(plan.precision == "fp32", "train.precision=auto picks fp32 on a CPU")
        skip("train.precision=auto on a GPU needs a CUDA GPU")


def stage_load(ctx: Ctx) -> None:
    """Unsloth's FastLanguageModel through our loader on the device, at the T4's precision (fp16: float16 weights):
    16-bit, 4-bit NF4 and 8-bit."""
    import gc

    import bitsandbytes as bnb
    import torch

    from llm_summarizer.config_loading import load_config
    from llm_summarizer.data.rows import load_raw_splits
    from llm_summarizer.errors import UserError
    from llm_summarizer.models.backends import for_inference, for_training
    from llm_summarizer.models.loading import load_for_training

    on = cuda()
    common = [f"model.cache_dir={ctx.models}", "model.backend=unsloth"] + (["train.precision=fp16"] if on else [])
    raw = load_raw_splits(load_config("tiny", common))
    results = {}
    for mode, extra in (("16bit", []), ("4bit", ["model.load_in_4bit=true"]), ("8bit", ["model.load_in_8bit=true"])):
        cfg = load_config("tiny", common + extra)
        if on:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        try:
            model, tok, info = load_for_training(cfg, raw)
        except UserError as e:
            if not on and mode == "8bit":
                need("needs a CUDA GPU" in str(e), f"8-bit loading is refused on a CPU with a message ({e})")
                skip("8-bit loading through Unsloth needs a CUDA GPU")
                continue
            raise
        n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
        n8 = sum(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())
        device = next(model.parameters()).device.type
        need(device == ("cuda" if on else "cpu"), f"{mode}: weights on {device}")
        need(n4 > 0 if mode == "4bit" else n8 > 0 if mode == "8bit" else n4 == n8 == 0, f"{mode}: {n4}/{n8} 4/8-bit")
        dtype = str(model.get_input_embeddings().weight.dtype).replace("torch.", "")
        need(dtype == ("float16" if on else "float32"), f"{mode}: the plan's dtype reached Unsloth ({dtype})")
        ids = tok("The city council voted on Tuesday to extend the bus service.", return_tensors="pt").to(device)
        with torch.autocast(device, dtype=torch.float16, enabled=on):
            loss = model(**ids, labels=ids["input_ids"]).loss
        loss.backward()
        need(bool(torch.isfinite(loss)), f"{mode}: a training forward/backward gives a finite loss ({loss.item():.3f})")
        for_inference(model, "unsloth")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=8, do_sample=False)
        for_training(model, "unsloth")
        need(out.shape[1] > ids["input_ids"].shape[1], f"{mode}: generation gives new tokens")
        results[mode] = {
            "seconds": round(time.time() - t0, 2),
            "linear4bit": n4,
            "linear8bit": n8,
            "dtype": dtype,
            "precision": info["precision_detail"],
            "peak_gib": peak_gib() if on else None,
        }
        del model, tok, loss, out
        gc.collect()
        if on:
            torch.cuda.empty_cache()
    record(loads=results)


def _flags(model) -> tuple[list, int]:
    """The gradient-checkpointing flags of the model's modules, and how many attention modules hold decode buffers."""
    flags = [bool(m.gradient_checkpointing) for m in model.modules() if hasattr(m, "gradient_checkpointing")]
    buffers = sum("paged_attention" in m.__dict__ for m in model.modules())
    return flags, buffers


def stage_t4(ctx: Ctx) -> None:
    import torch
    from transformers import TrainerCallback

    from llm_summarizer.config_loading import load_config
    from llm_summarizer.training.run import run

    class Seen(TrainerCallback):
        def __init__(self):
            self.at = {}

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            self.at[state.global_step] = _flags(model)

    on = cuda()
    extra = ctx.qlora()
    if on:
        total = torch.cuda.get_device_properties(0).total_memory
        cap = min(1.0, T4["memory_gib"] * 2**30 / total)
        torch.cuda.set_per_process_memory_fraction(cap)
        extra.append("train.precision=fp16")  # model.dtype=auto: float16 weights, as on a T4
        record(memory_cap_gib=round(cap * total / 2**30, 2))
    else:
        skip("fp16 and the T4's memory cap need a CUDA GPU: trained in fp32 on the CPU")
    seen = Seen()
    try:
        res = run(load_config("tiny", ctx.overrides("t4", *extra)), extra_callbacks=[seen])
    finally:
        if on:
            torch.cuda.set_per_process_memory_fraction(1.0)
    info = json.loads((res.model_dir / "run_info.json").read_text())["model"]
    evals = [h["step"] for h in res.log_history if "eval_rougeL" in h]
    mid = [s for s in evals if s < res.metrics.train.global_step]
    need(bool(mid), f"a ROUGE evaluation between training steps (at {evals})")
    after = [s for s in sorted(seen.at) if s > mid[0]]
    flags0, _ = seen.at[0]
    flags_after, buffers_after = seen.at[after[0]]
    record(checkpointing_flags_before=flags0, checkpointing_flags_after=flags_after, decode_buffers_after=buffers_after)
    need(flags_after == flags0, f"gradient checkpointing flags after the evaluation as before ({sum(flags0)} on)")
    need(buffers_after == 0, "no decode buffers left on the model after the evaluation")
    losses = [h["loss"] for h in res.log_history if "loss" in h]
    need(losses[-1] < losses[0], f"the loss fell ({losses[0]:.3f} -> {losses[-1]:.3f})")
    record(precision=info.get("precision_detail"), peak_gib=peak_gib() if on else None, losses=[losses[0], losses[-1]])
    if on:
        need(info["precision"] == "fp16", f"trained in {info.get('precision_detail')}")
        need(peak_gib() <= T4["memory_gib"], f"peak {peak_gib()} GiB within the T4's {T4['memory_gib']} GiB")


def stage_train(ctx: Ctx) -> None:
    from llm_summarizer.config_loading import load_config
    from llm_summarizer.training.run import run

    run(load_config("tiny", ctx.overrides("train", *ctx.qlora(), "train.precision=auto")))
    check_train(ctx.work / "train" / "out", ctx.trained, "unsloth", True, "adamw_8bit")


def stage_generate(ctx: Ctx) -> None:
    import urllib.request

    from llm_summarizer.commands.main import main
    from llm_summarizer.models.generation import summarize_texts
    from llm_summarizer.models.loading import load_for_generation
    from llm_summarizer.serve.server import Summarizer, make_server

    ctx.needs_model()
    s = ctx.work / "generate"
    rc = main(
        [
            "evaluate",
            "--model",
            str(ctx.trained),
            "--limit",
            "16",
            "--output",
            str(s / "eval"),
            "--no-report",
            "--no-tracking",
        ]
    )
    need(rc == 0, f"evaluate exit {rc}")
    settings = json.loads((s / "eval" / "eval_settings.json").read_text())
    if cuda():
        need(settings["dtype"] in ("bfloat16", "float16"), f"evaluate generated in {settings['dtype']} on the GPU")
    else:
        skip("evaluate in 16-bit on a GPU needs a CUDA GPU")
    loaded = load_for_generation(ctx.trained)
    summary = summarize_texts(loaded, docs(1))[0].text
    need(bool(summary.strip()), f"summarize: {summary!r}")
    served = make_server(Summarizer(loaded, False, 100_000), "127.0.0.1", 0, 8)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    host, port = served.address
    body = json.dumps({"document": docs(2)[1]}).encode()
    req = urllib.request.Request(
        f"http://{host}:{port}/summarize", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            answer = json.loads(r.read())
    finally:
        served.stop()
        thread.join(30)
    need(bool(str(answer.get("summary", "")).strip()), f"serve answered: {answer}")
    record(eval_dtype=settings["dtype"], summary=summary, serve_answer=answer, peak_gib=peak_gib() if cuda() else None)


def stage_export(ctx: Ctx) -> None:
    from llm_summarizer.export import exporter
    from llm_summarizer.models.device import Device

    ctx.needs_model()
    s = ctx.work / "export"
    # merged-4bit first: it merges (and checks) the 16-bit model it quantizes, so it covers the dtype rule too
    for fmt in ("merged-4bit", "merged-16bit"):
        res = exporter.export_model(ctx.trained, fmt, output=s / fmt, verify_examples=4)
        check_export(s / fmt, fmt, res.info)
    if not cuda():
        skip("the 16-bit model offloaded to CPU memory needs a CUDA GPU (the shard-by-shard merge runs in the suite)")
        return
    small = Device("cuda", "a GPU described too small for the model", (7, 5), 0.002, 1)
    real = exporter.current
    exporter.current = lambda: small
    try:
        res = exporter.export_model(ctx.trained, "merged-16bit", output=s / "offloaded", verify_examples=4)
    finally:
        exporter.current = real
    memory = res.info["memory"]
    need(
        memory["placement"] == "offload" and memory["merge"] == "stream", f"offloaded, merged shard by shard: {memory}"
    )
    need(res.info["verification"]["max_logprob_diff_per_token"] <= 0.1, f"checked: {res.info['verification']}")
    record(offloaded=memory, offloaded_check=res.info["verification"]["summary"])


def stage_oom(ctx: Ctx) -> None:
    import torch

    from llm_summarizer.commands.main import main

    ctx.needs_model()
    if not cuda():
        raise Skip("a real CUDA out-of-memory needs a CUDA GPU")
    oom_generate(ctx.trained)
    # The train command with this process's CUDA memory capped at 256 MiB and a batch far beyond it.
    log = Path(os.environ["GPU_CHECK_LOG"])
    start = log.stat().st_size
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(256 * 2**20 / torch.cuda.get_device_properties(0).total_memory)
    try:
        rc = main(
            ["train", "--config", "tiny"]
            + ctx.overrides("oom", "train.per_device_train_batch_size=1024", "train.max_steps=2")
            + ["eval.generate=false", "eval.base_eval=false"]
        )
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    sys.stdout.flush()
    sys.stderr.flush()
    text = log.read_text(errors="replace")[start:]
    need(rc == 3, f"the train command exits 3 on a real CUDA out-of-memory (exit {rc})")
    need("ran out of memory" in text and "Traceback" not in text, "one message with advice, no traceback")
    record(train_oom_message=next((ln for ln in text.splitlines() if "ran out of memory" in ln), "")[:400])


STAGES = {
    "env": stage_env,
    "load": stage_load,
    "t4": stage_t4,
    "train": stage_train,
    "generate": stage_generate,
    "export": stage_export,
    "oom": stage_oom,
}


@contextlib.contextmanager
def stage_output(path: Path):
    """The stage's stdout and stderr (this process's and its children's) into its own log file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def note(work: Path, stage: str, status: str, seconds: float, budget: float, reason=None, peak=None) -> None:
    line = {
        "stage": stage,
        "status": status,
        "seconds": int(round(seconds)),
        "budget": int(budget),
        "reason": reason,
        "commands": [f"scripts/gpu_check.py warm ... {stage} (in process)"],
        "gpu_used_gib": peak,
    }
    with open(work / "stages.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def warm(args) -> None:
    """The in-process stages, each within its budget (a timer interrupts it) and only when half its budget is left
    before the deadline; one record per stage in WORK/stages.jsonl."""
    work, out = Path(args.work), Path(args.out)
    deadline = args.deadline or time.time() + sum(BUDGETS[s] for s in args.stages) * args.scale
    t_imports = time.time()
    from llm_summarizer.models.unsloth_first import import_unsloth

    import_unsloth()
    import torch

    import llm_summarizer.export.exporter  # noqa: F401  (the imports every stage shares, paid once here)
    import llm_summarizer.training.run  # noqa: F401

    imports = time.time() - t_imports
    ctx = Ctx(work, out, args.require_gpu)

    def interrupt(_sig, _frame):
        raise StageTimeout

    signal.signal(signal.SIGALRM, interrupt)
    for i, stage in enumerate(args.stages):
        budget = BUDGETS[stage] * args.scale - (imports if i == 0 else 0)
        left = deadline - time.time()
        if budget / 2 > left:
            print(f"== skip {stage}: budget {budget:.0f}s, {left:.0f}s left", flush=True)
            note(work, stage, "skip", 0, budget, f"would not fit: only {left:.0f}s were left (its own: {budget:.0f}s)")
            continue
        budget = max(1.0, min(budget, left))
        os.environ["GPU_CHECK_FACTS"] = str(work / f"{stage}.facts.json")
        os.environ["GPU_CHECK_LOG"] = str(work / f"{stage}.log")
        if i == 0:
            record(imports_s=round(imports, 1))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        print(f"== {stage} (budget {budget:.0f}s)", flush=True)
        t0, status, reason = time.time(), "pass", None
        with stage_output(work / f"{stage}.log"):
            signal.setitimer(signal.ITIMER_REAL, budget)
            try:
                STAGES[stage](ctx)
            except StageTimeout:
                status, reason = "timeout", f"stopped at its {budget:.0f}s budget"
            except Skip as e:
                status, reason = "skip", str(e)
            except SystemExit as e:
                status = "pass" if e.code in (0, None) else "fail"
                reason = None if status == "pass" else str(e.code)
                print(e.code, flush=True)
            except BaseException:  # a check that crashed: its traceback is in the stage's log
                status = "fail"
                traceback.print_exc()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        peak = round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None
        note(work, stage, status, time.time() - t0, budget, reason, peak)
        print(f"== {stage}: {status} in {time.time() - t0:.0f}s", flush=True)
        if status != "pass":
            print("".join((work / f"{stage}.log").read_text(errors="replace").splitlines(True)[-15:]), flush=True)


# ---------------------------------------------------------------------------------------------------------
# checks


def _latest_checkpoint(out: Path) -> Path:
    cks = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    need(bool(cks), f"checkpoints written in {out}")
    return cks[-1]


def check_train(out: Path, model: Path, backend: str, four_bit: bool, optim: str) -> None:
    import torch

    from llm_summarizer.models.device import current

    out, model = Path(out), Path(model)
    on = cuda()
    metrics = json.loads((model / "metrics.json").read_text())
    run_info = json.loads((model / "run_info.json").read_text())
    saved = (model / "config.yaml").read_text()
    need((model / "adapter_model.safetensors").is_file(), "the adapter is saved")
    need(run_info["model"]["backend"] == backend, f"trained on the {backend} backend")
    precision = run_info["model"].get("precision")
    if on:
        want = "bf16" if current().bf16 else "fp16"
        need(precision == want, f"train.precision=auto trained in {run_info['model'].get('precision_detail')}")
    else:
        need(precision == "fp32", "train.precision=auto trained in fp32 on a CPU")
        skip("training in bf16 needs a CUDA GPU")
    need(f"load_in_4bit: {'true' if four_bit else 'false'}" in saved, f"config.yaml: load_in_4bit {four_bit}")
    train = metrics["train"]
    if on:
        need(train.get("peak_memory_of") == "CUDA memory allocated", "peak memory read from CUDA")
    record(peak_gib=train.get("peak_memory_gib"), peak_memory_of=train.get("peak_memory_of"))
    state = json.loads((_latest_checkpoint(out) / "trainer_state.json").read_text())
    history = state["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    need(len(losses) >= 2 and losses[-1] < losses[0], f"the training loss fell ({losses[0]:.3f} -> {losses[-1]:.3f})")
    mid = [h["step"] for h in history if "eval_rouge1" in h and h["step"] < state["global_step"]]
    need(bool(mid), f"the ROUGE callback generated between training steps (at steps {mid})")

    def tensors(x):  # bitsandbytes nests its 8-bit state in a dict
        if torch.is_tensor(x):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from tensors(v)

    opt = torch.load(_latest_checkpoint(out) / "optimizer.pt", map_location="cpu", weights_only=True)
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in tensors(opt["state"]) if t.dim() > 0})
    if "8bit" in optim and not on and backend == "unsloth":
        skip(
            f"train.optim={optim} as bitsandbytes' 8-bit AdamW: Unsloth's CPU backend trains with AdamW "
            f"instead (checkpoint state {dtypes})"
        )
    elif "8bit" in optim:
        need("uint8" in dtypes, f"train.optim={optim}: 8-bit optimizer state in the checkpoint ({dtypes})")
    record(
        losses=[losses[0], losses[-1]],
        rouge_steps=mid,
        optimizer_state_dtypes=dtypes,
        precision=precision,
        final=metrics.get("final"),
    )


def check_export(d: Path, fmt: str, info: dict) -> None:
    """What an export wrote (its own check already loaded it with plain transformers, and refuses what does not
    behave like the adapter): recorded, with the dtype rule; a merged-4bit export loaded once more through our
    loader. Greedy summaries of a bf16 source and an fp16 merge may differ at near-ties, which the export itself
    only warns about: the number that matched is a fact here, not a condition."""
    check = info.get("verification", {})
    record(
        **{
            f"{fmt}_dtype": info.get("dtype"),
            f"{fmt}_method": info.get("method"),
            f"{fmt}_check": check.get("summary"),
            f"{fmt}_matched": f"{check.get('matched')}/{check.get('documents')}",
            f"{fmt}_memory": info.get("memory"),
        }
    )
    need(
        info["dtype_rule"].startswith("float16: the base checkpoint is float32"),
        f"{fmt}: the merge of a float32 base is float16 by the dtype rule ({info.get('dtype_rule')})",
    )
    if fmt == "merged-16bit":
        need(info["dtype"] == "float16", f"merged-16bit weights are {info['dtype']}")
        return
    conf = json.loads((Path(d) / "config.json").read_text())
    need(conf["quantization_config"]["load_in_4bit"] is True, "merged-4bit: config.json says 4-bit")
    from llm_summarizer.models.generation import summarize_texts
    from llm_summarizer.models.loading import load_for_generation

    loaded = load_for_generation(d)
    need(loaded.quantized == "4bit", "merged-4bit loads through our loader as 4-bit")
    need(all(s.text.strip() for s in summarize_texts(loaded, docs(2))), "and summarizes")


def oom_generate(model: Path) -> None:
    """A real torch.cuda.OutOfMemoryError inside generate: while a batch holds more than LIMIT documents, the
    model's embedding asks the CUDA allocator for more memory than the card has. generate must halve the batch,
    retry, and give the same summaries as batch-by-one."""
    import torch

    from llm_summarizer.models.generation import AdaptiveBatch, GenerationRequest, default_max_new_tokens, generate
    from llm_summarizer.models.loading import load_for_generation

    loaded = load_for_generation(model)
    limit, texts = 4, docs(16)
    n = default_max_new_tokens(loaded)[0]
    total = torch.cuda.get_device_properties(0).total_memory
    seen = []

    def too_big(_module, args, kwargs):
        x = kwargs.get("input_ids")
        x = x if x is not None else kwargs.get("inputs_embeds", args[0] if args else None)
        if x is not None and x.shape[0] > limit:
            seen.append(x.shape[0])
            torch.empty(total * 2, dtype=torch.uint8, device="cuda")  # raises: the card cannot hold it

    # on the causal LM itself (under the PEFT wrapper): generate calls it once per new token, with keywords
    lm = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model
    handle = lm.register_forward_pre_hook(too_big, with_kwargs=True)
    batch = AdaptiveBatch(16)
    ev = loaded.cfg.eval
    gens = generate(
        loaded.model, loaded.tokenizer, GenerationRequest(loaded.formatter, texts, ev, n, loaded.backend, batch=batch)
    )
    handle.remove()
    one = generate(
        loaded.model, loaded.tokenizer, GenerationRequest(loaded.formatter, texts, ev, n, loaded.backend, batch_size=1)
    )
    need(
        bool(seen) and batch.size <= limit,
        f"out of memory at batches of {sorted(set(seen), reverse=True)}; "
        f"generate went on at {batch.size} ({batch.reductions} halvings)",
    )
    need(all(g.text.strip() for g in gens), "every document got a summary")
    same = sum(a.text == b.text for a, b in zip(gens, one))
    record(
        oom_batches=sorted(set(seen), reverse=True),
        batch_after=batch.size,
        reductions=batch.reductions,
        same_as_batch_of_one=f"{same}/{len(texts)}",
    )


def compare_adapters(args) -> None:
    from safetensors.torch import load_file

    a = load_file(str(Path(args.a) / "adapter_model.safetensors"))
    b = load_file(str(Path(args.b) / "adapter_model.safetensors"))
    need(a.keys() == b.keys(), f"the same {len(a)} adapter tensors")
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    bitwise = all(a[k].dtype == b[k].dtype and bool((a[k] == b[k]).all()) for k in a)
    ma, mb = (json.loads((Path(p) / "metrics.json").read_text())["train"] for p in (args.a, args.b))
    need(ma["global_step"] == mb["global_step"], f"both runs ended at step {ma['global_step']}")
    record(resume_max_abs_diff=diff, resume_bitwise=bitwise, resumed_from=mb.get("resumed_from"))
    need(
        diff <= args.tolerance,
        f"the resumed adapter is within {args.tolerance} of the uninterrupted one "
        f"(max abs diff {diff:.3g}, bitwise {'equal' if bitwise else 'different'})",
    )


def collective(_args) -> None:
    import torch
    import torch.distributed as dist

    on = cuda()
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    if on:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if on else "gloo")
    t = torch.ones(4, device="cuda" if on else "cpu") * (dist.get_rank() + 1)
    dist.all_reduce(t)
    dist.barrier()
    ws = dist.get_world_size()
    need(float(t[0]) == ws * (ws + 1) / 2, f"all_reduce over {ws} rank(s) with {dist.get_backend()}")
    record(collective_backend=dist.get_backend(), world_size=ws)
    if not on:
        skip("NCCL needs CUDA GPUs (gloo checked instead)")
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------
# the summary


def summary(args) -> None:
    work, out = Path(args.work), Path(args.out)
    stages = (
        [json.loads(line) for line in (work / "stages.jsonl").read_text().splitlines() if line.strip()]
        if (work / "stages.jsonl").is_file()
        else []
    )
    versions, gpu, differ = {}, None, {}
    for s in stages:
        facts_path = work / f"{s['stage']}.facts.json"
        s["facts"] = json.loads(facts_path.read_text()) if facts_path.is_file() else {}
        versions = versions or s["facts"].get("versions", {})
        differ = differ or s["facts"].get("versions_vs_lock", {})
        gpu = gpu or s["facts"].get("gpu")
        s["peak_gib"] = s["facts"].get("peak_gib") if s["facts"].get("peak_gib") is not None else s.get("gpu_used_gib")
        log = work / f"{s['stage']}.log"
        if s["status"] in ("fail", "timeout") and log.is_file():
            s["log_tail"] = "".join(log.read_text(errors="replace").splitlines(True)[-40:])[-6000:]
    if not versions:  # the env stage did not run: the versions here all the same (when torch imports at all)
        try:
            from llm_summarizer.environment import package_versions

            versions = package_versions()
            differ = lock_differences(versions)
        except ImportError:
            versions = {}
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "gpu": gpu,
        "versions": versions,
        "versions_vs_lock": differ,
        "budget_s": args.budget,
        "wall_s": args.wall,
        "require_gpu": args.require_gpu,
        "passed": sum(s["status"] == "pass" for s in stages),
        "failed": sum(s["status"] in ("fail", "timeout") for s in stages),
        "skipped": sum(s["status"] == "skip" for s in stages),
        "stages": stages,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    lines = [
        f"# GPU check, {result['date']}",
        "",
        f"Device: {gpu or 'no CUDA GPU (dry run)'}. {result['passed']} passed, {result['failed']} failed, "
        f"{result['skipped']} skipped, {args.wall} s of a {args.budget} s budget.",
        "",
        "Versions that ran: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        "Against the lock: "
        + ("; ".join(f"{k} {v}" for k, v in differ.items()) if differ else "the same versions as the lock"),
        "",
        "| stage | result | seconds (budget) | peak GiB | not checked here | command |",
        "|---|---|---|---|---|---|",
    ]
    for s in stages:
        notes = "; ".join(s["facts"].get("skipped", []) + ([s["reason"]] if s.get("reason") else []))
        peak = "" if s["peak_gib"] is None else f"{s['peak_gib']:.2f}"
        cmds = "<br>".join(f"`{c}`" for c in s.get("commands", [])[:4])
        lines.append(f"| {s['stage']} | {s['status']} | {s['seconds']} ({s['budget']}) | {peak} | {notes} | {cmds} |")
    for s in stages:
        if s.get("log_tail"):
            lines += ["", f"## {s['stage']}: last lines of its log", "", "```", s["log_tail"].rstrip(), "```"]
    facts = {s["stage"]: {k: v for k, v in s["facts"].items() if k not in ("versions", "skipped")} for s in stages}
    lines += ["", "## Facts per stage", "", "```json", json.dumps(facts, indent=1, default=str), "```", ""]
    (out / "gpu_check.md").write_text("\n".join(lines))
    print("\n".join(lines[: 10 + len(stages)]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def command(name: str, fn, *positional: str):
        p = sub.add_parser(name)
        for a in positional:
            p.add_argument(a)
        p.set_defaults(fn=fn)
        return p

    command("budgets", lambda _a: print("\n".join(f"{k} {v}" for k, v in BUDGETS.items())))
    p = command("warm", warm, "work", "out")
    p.add_argument("stages", nargs="+", choices=WARM)
    p.add_argument("--deadline", type=float, default=0.0, help="time.time() by which the last stage must end")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--require-gpu", type=int, default=1)
    p = command("check-train", lambda a: check_train(a.out, a.model, a.backend, a.four_bit, a.optim), "out", "model")
    p.add_argument("--backend", required=True)
    p.add_argument("--four-bit", action="store_true")
    p.add_argument("--optim", default="adamw_torch")
    command("compare-adapters", compare_adapters, "a", "b").add_argument("--tolerance", type=float, default=0.05)
    command("collective", collective)
    p = command("summary", summary, "work", "out")
    p.add_argument("--budget", type=int, default=0)
    p.add_argument("--wall", type=int, default=0)
    p.add_argument("--require-gpu", default="1")
    args = ap.parse_args(argv)
    args.fn(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
