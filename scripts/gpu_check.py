"""The checks and the summary of scripts/gpu_check.sh (one subcommand each; the shell script runs the stages).

    python scripts/gpu_check.py env                      # versions, the GPU, train.precision=auto's choice
    python scripts/gpu_check.py load                     # Unsloth loads on the device: 16-bit, 4-bit NF4, 8-bit
    python scripts/gpu_check.py check-train OUT MODEL --backend unsloth --four-bit --optim adamw_8bit
    python scripts/gpu_check.py check-eval DIR           # evaluate ran on the device (eval_settings.json)
    python scripts/gpu_check.py post URL                 # one request to a running `serve`
    python scripts/gpu_check.py oom-generate MODEL       # the generation back-off on a real CUDA out-of-memory
    python scripts/gpu_check.py check-oom-train LOG      # the train command's answer to a real out-of-memory
    python scripts/gpu_check.py compare-adapters A B     # max abs difference of two adapters, bitwise or not
    python scripts/gpu_check.py check-export DIR FORMAT  # what an export wrote, reloaded through our loader
    python scripts/gpu_check.py collective               # under torchrun: an all_reduce (NCCL on GPUs)
    python scripts/gpu_check.py summary WORK OUT         # gpu_check.json + gpu_check.md from the stage records

Each check merges what it found into the JSON file named by $GPU_CHECK_FACTS (the stage's facts: numbers,
peak memory, assertions skipped on a CPU with the reason) and exits non-zero when an assertion fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TEST_DOCS = ROOT / "data" / "demo" / "test.jsonl"


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


# ---------------------------------------------------------------------------------------------------------
# checks


def env(_args) -> None:
    import torch

    from llm_summarizer.config import load_config
    from llm_summarizer.environment import package_versions
    from llm_summarizer.models.loading import pick_precision

    on = cuda()
    versions = package_versions()
    versions.update(python=sys.version.split()[0], cuda=torch.version.cuda)
    gpu = torch.cuda.get_device_name(0) if on else None
    record(
        versions=versions,
        gpu=gpu,
        gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if on else None,
    )
    prec = pick_precision(load_config("tiny"))
    record(precision_auto=prec.name)
    if on and torch.cuda.is_bf16_supported():
        need(prec.name == "bf16" and prec.dtype == torch.bfloat16, f"train.precision=auto picks bf16 on {gpu}")
    elif on:
        need(prec.name == "fp16", f"train.precision=auto picks fp16 on {gpu} (no bf16)")
    else:
        need(prec.name == "fp32", "train.precision=auto picks fp32 on a CPU")
        skip("train.precision=auto picking bf16 needs a CUDA GPU")
    print(json.dumps({"gpu": gpu, "precision_auto": prec.name, "versions": versions}))


def load(args) -> None:
    """Unsloth's FastLanguageModel through our loader on the device: 16-bit, 4-bit NF4 and 8-bit."""
    from llm_summarizer.models.unsloth_first import import_unsloth

    import_unsloth()
    import gc

    import bitsandbytes as bnb
    import torch

    from llm_summarizer.config import load_config
    from llm_summarizer.data.rows import load_raw_splits
    from llm_summarizer.errors import UserError
    from llm_summarizer.models.backends import for_inference, for_training
    from llm_summarizer.models.loading import load_for_training

    on = cuda()
    common = [f"model.cache_dir={args.cache}", "model.backend=unsloth"]
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
        if mode == "4bit":
            need(n4 > 0, f"4-bit: {n4} bitsandbytes Linear4bit layers")
        elif mode == "8bit":
            need(n8 > 0, f"8-bit: {n8} bitsandbytes Linear8bitLt layers")
        else:
            need(n4 == n8 == 0, "16-bit: no quantized layers")
        dtype = str(model.get_input_embeddings().weight.dtype).replace("torch.", "")
        if on and torch.cuda.is_bf16_supported():
            need(dtype == "bfloat16", f"{mode}: Unsloth picked {dtype} on the GPU (bfloat16 expected)")
        ids = tok("The city council voted on Tuesday to extend the bus service.", return_tensors="pt").to(device)
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
            "precision": info["precision"],
            "peak_gib": peak_gib() if on else None,
        }
        del model, tok, loss, out
        gc.collect()
        if on:
            torch.cuda.empty_cache()
    record(loads=results, peak_gib=max((r["peak_gib"] or 0) for r in results.values()) if on else None)
    print(json.dumps(results))


def _latest_checkpoint(out: Path) -> Path:
    cks = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    need(bool(cks), f"checkpoints written in {out}")
    return cks[-1]


def check_train(args) -> None:
    import torch

    out, model = Path(args.out), Path(args.model)
    on = cuda()
    metrics = json.loads((model / "metrics.json").read_text())
    run_info = json.loads((model / "run_info.json").read_text())
    saved = (model / "config.yaml").read_text()
    need((model / "adapter_model.safetensors").is_file(), "the adapter is saved")
    need(run_info["model"]["backend"] == args.backend, f"trained on the {args.backend} backend")
    precision = run_info["model"].get("precision")
    if on:
        want = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        need(precision == want, f"train.precision=auto trained in {precision}")
    else:
        need(precision == "fp32", "train.precision=auto trained in fp32 on a CPU")
        skip("training in bf16 needs a CUDA GPU")
    need(f"load_in_4bit: {'true' if args.four_bit else 'false'}" in saved, f"config.yaml: load_in_4bit {args.four_bit}")
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
    if "8bit" in args.optim and not on and args.backend == "unsloth":
        skip(
            f"train.optim={args.optim} as bitsandbytes' 8-bit AdamW: Unsloth's CPU backend trains with AdamW "
            f"instead (checkpoint state {dtypes})"
        )
    elif "8bit" in args.optim:
        need("uint8" in dtypes, f"train.optim={args.optim}: 8-bit optimizer state in the checkpoint ({dtypes})")
    record(
        losses=[losses[0], losses[-1]],
        rouge_steps=mid,
        optimizer_state_dtypes=dtypes,
        precision=precision,
        final=metrics.get("final"),
    )


def check_eval(args) -> None:
    d = Path(args.dir)
    settings = json.loads((d / "eval_settings.json").read_text())
    metrics = json.loads((d / "metrics.json").read_text())
    if cuda():
        need(settings["dtype"] in ("bfloat16", "float16"), f"evaluate generated in {settings['dtype']} on the GPU")
    else:
        skip("evaluate in 16-bit on a GPU needs a CUDA GPU")
    need(any("rouge" in k for k in json.dumps(metrics).split('"')), "evaluate wrote ROUGE metrics")
    record(eval_dtype=settings["dtype"], eval_quantized=settings.get("quantized"))


def post(args) -> None:
    import urllib.request

    body = json.dumps({"document": docs(1)[0]}).encode()
    req = urllib.request.Request(
        args.url.rstrip("/") + "/summarize", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        answer = json.loads(r.read())
    need(r.status == 200 and bool(str(answer.get("summary", "")).strip()), f"serve answered: {answer}")
    record(serve_answer=answer)


def oom_generate(args) -> None:
    """A real torch.cuda.OutOfMemoryError inside generate: while a batch holds more than LIMIT documents, the
    model's embedding asks the CUDA allocator for more memory than the card has. generate must halve the batch,
    retry, and give the same summaries as batch-by-one."""
    if not cuda():
        skip("a real CUDA out-of-memory needs a CUDA GPU")
        raise SystemExit(77)
    from llm_summarizer.models.unsloth_first import import_unsloth

    import_unsloth()
    import torch

    from llm_summarizer.models.generation import AdaptiveBatch, default_max_new_tokens, generate
    from llm_summarizer.models.loading import load_for_generation

    loaded = load_for_generation(args.model)
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
    gens = generate(
        loaded.model, loaded.tokenizer, loaded.formatter, texts, loaded.cfg.eval, n, loaded.backend, batch=batch
    )
    handle.remove()
    one = generate(
        loaded.model, loaded.tokenizer, loaded.formatter, texts, loaded.cfg.eval, n, loaded.backend, batch_size=1
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
        peak_gib=peak_gib(),
    )


def check_oom_train(args) -> None:
    log = Path(args.log).read_text(errors="replace")
    rc = int(Path(args.log).with_suffix(".rc").read_text().strip())
    need(rc == 3, f"the train command exits 3 on a real CUDA out-of-memory (exit {rc})")
    need("ran out of memory" in log and "Traceback" not in log, "one message with advice, no traceback")
    tip = next((line for line in log.splitlines() if "ran out of memory" in line), "")
    record(train_oom_message=tip[:400])


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


def check_export(args) -> None:
    """What an export wrote (its own check already loaded it with plain transformers); a merged-4bit export is
    loaded once more through our loader, the way evaluate and summarize load it."""
    d = Path(args.dir)
    info = json.loads((d / "export_info.json").read_text())
    check = info.get("verification", {})
    record(
        **{
            f"{args.format}_dtype": info.get("dtype"),
            f"{args.format}_method": info.get("method"),
            f"{args.format}_check": check.get("summary"),
        }
    )
    # merged-4bit quantizes the checked merged-16bit model, so both record the dtype rule of the merge
    need(
        info["dtype_rule"].startswith("float16: the base checkpoint is float32"),
        f"{args.format}: the merge of a float32 base is float16 by the dtype rule ({info.get('dtype_rule')})",
    )
    if args.format == "merged-16bit":
        need(info["dtype"] == "float16", f"merged-16bit weights are {info['dtype']}")
        need(
            check["matched"] == check["documents"],
            f"merged-16bit reproduces {check['matched']}/{check['documents']} greedy summaries of the adapter",
        )
    if args.format != "merged-4bit":
        return
    conf = json.loads((d / "config.json").read_text())
    need(conf["quantization_config"]["load_in_4bit"] is True, "merged-4bit: config.json says 4-bit")
    need(check["rougeL_agreement"] >= 0.8, f"merged-4bit agrees with the adapter (ROUGE-L {check['rougeL_agreement']})")
    from llm_summarizer.models.unsloth_first import import_unsloth

    import_unsloth()
    from llm_summarizer.models.generation import summarize_texts
    from llm_summarizer.models.loading import load_for_generation

    loaded = load_for_generation(d)
    need(loaded.quantized == "4bit", "merged-4bit loads through our loader as 4-bit")
    need(all(s.text.strip() for s in summarize_texts(loaded, docs(2))), "and summarizes")


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
    versions, gpu = {}, None
    for s in stages:
        facts_path = work / f"{s['stage']}.facts.json"
        s["facts"] = json.loads(facts_path.read_text()) if facts_path.is_file() else {}
        versions = versions or s["facts"].get("versions", {})
        gpu = gpu or s["facts"].get("gpu")
        s["peak_gib"] = s["facts"].get("peak_gib") if s["facts"].get("peak_gib") is not None else s.get("gpu_used_gib")
        log = work / f"{s['stage']}.log"
        if s["status"] in ("fail", "timeout") and log.is_file():
            s["log_tail"] = "".join(log.read_text(errors="replace").splitlines(True)[-40:])[-6000:]
    if not versions:  # the env stage did not run: the versions here all the same (when torch imports at all)
        try:
            from llm_summarizer.environment import package_versions

            versions = package_versions()
        except ImportError:
            versions = {}
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "gpu": gpu,
        "versions": versions,
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
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
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
    print("\n".join(lines[: 8 + len(stages)]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def command(name: str, fn, *positional: str):
        p = sub.add_parser(name)
        for a in positional:
            p.add_argument(a)
        p.set_defaults(fn=fn)
        return p

    command("env", env)
    command("load", load).add_argument("--cache", required=True)
    p = command("check-train", check_train, "out", "model")
    p.add_argument("--backend", required=True)
    p.add_argument("--four-bit", action="store_true")
    p.add_argument("--optim", default="adamw_torch")
    command("check-eval", check_eval, "dir")
    command("post", post, "url")
    command("oom-generate", oom_generate, "model")
    command("check-oom-train", check_oom_train, "log")
    command("compare-adapters", compare_adapters, "a", "b").add_argument("--tolerance", type=float, default=0.05)
    command("check-export", check_export, "dir", "format")
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
