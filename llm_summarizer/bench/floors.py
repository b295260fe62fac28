"""Our paths against their floors, side by side in one run: data preparation, generation, training, start-up.

    llm-summarizer bench --floors all                                   # the tiny model, the demo data
    llm-summarizer bench --floors all --model DIR --data scitldr --config demo
    llm-summarizer bench --floors data,generation --data-rows 20000

A floor is the same work done the plainest way on the same machine in the same process, measured right
next to ours, so the ratio (ours / floor; above 1 = faster than the floor) carries over between machines:

- data: `data.prepare`'s tokenization of the training split (what training runs, one process) against
  one batched tokenizer call per 1,000 documents and per 1,000 summaries plus the token-budget arithmetic
  on the ids; the row-at-a-time tokenization we had before is measured beside them.
- generation: our generation path (`models.generation.generate`: what the ROUGE pass, evaluate, summarize
  and serve call) against plain `model.generate` over the same prompt ids in dataset order, with the same
  batch size, greedy decoding, max_new_tokens and stop tokens; once with our length-sorted batches (what
  runs) and once batching in dataset order like the floor (equal settings). Whether the texts are the same
  is counted. The whole ROUGE pass (generation + scoring) is timed too, with the share of it spent on the
  statistics of each summary against its document (evaluation/diagnostics.py), and their time against
  rouge-score's own scoring of the same summaries.
- training: our trainer's non-padding tokens/s (the token meter and step clock of the training benchmark)
  against a plain PyTorch loop (forward with labels, backward, AdamW step) on the same model and the same
  batches (taken from our trainer's dataloader); the floor runs before and after ours and the ratio uses
  their mean, so drift of a shared machine shows in the two floor numbers.
- start-up: `llm-summarizer train` run to its first optimizer step (train.max_steps=1), its seconds split
  into imports, reading data, model load, tokenizing + trainer, base evaluation and first step (the split every
  training run writes into metrics.json), against the bare `import` of the libraries it needs, and the
  time of `--help` and `--print-config` (which must stay instant).
"""

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

import datasets
import torch
from transformers import set_seed

from ..config import Config
from ..config_loading import config_to_dict, config_to_yaml
from ..contracts import RunMetrics
from ..data import tokenize as TK
from ..data.prompt import Formatter
from ..data.readers import RawSplit
from ..data.rows import load_raw_splits
from ..data.tokenize import prepare
from ..environment import cpu_name, git_commit, package_versions
from ..evaluation import diagnostics
from ..evaluation.scoring import score_corpus
from ..files import write_json
from ..layout import METRICS_FILE
from ..models.generation import GenerationRequest, derive_max_new_tokens, generate, inference_mode
from ..models.loading import load_for_training
from ..training.run import build_session
from ..training.summary_eval import SummaryEvaluator
from .harness import Written, bench_config, child_env, prepare_run
from .measure import StepClock, device_name
from .options import BenchOptions

# ---------------------------------------------------------------------------------------------------------
# the child: data, generation and training in one process (unsloth, when used, imported first by the caller)
# ---------------------------------------------------------------------------------------------------------


def child(spec: dict) -> dict:
    cfg = Config.model_validate(spec["config"])
    set_seed(cfg.train.seed)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    raw = load_raw_splits(cfg)
    model, tok, info = load_for_training(cfg, raw)
    out = {
        "device": device_name(),
        "versions": package_versions(),
        "backend": cfg.model.backend,
        "torch_threads": torch.get_num_threads(),
    }
    parts = spec["parts"]
    if "data" in parts:
        out["data"] = data_floor(cfg, tok, raw["train"], spec["data_rows"])
    if "generation" in parts:
        out["generation"] = generation_floor(cfg, model, tok, raw, spec["gen_rows"])
    if "training" in parts:
        out["training"] = training_floor(
            cfg, model, tok, info, raw, spec["steps"], spec["warmup_steps"], spec["rounds"]
        )
    return out


def _repeat_rows(rows: list[dict], n: int) -> list[dict]:
    """n rows from the split, repeated with distinct ids (and a counter, so no two documents are equal)."""
    if n <= len(rows):
        return rows[:n]
    return [
        dict(
            rows[i % len(rows)],
            id=f"{rows[i % len(rows)]['id']}~{i}",
            document=f"[{i}] {rows[i % len(rows)]['document']}",
        )
        for i in range(n)
    ]


def data_floor(cfg, tok, train_split, n_rows: int) -> dict:
    rows = _repeat_rows(train_split.rows, n_rows)
    split = RawSplit("train", "bench", rows)
    one_process = cfg.data.model_copy(update={"num_proc": 1, "cache": False})
    fmt = Formatter(tok, one_process, cfg.model.max_seq_length)

    # the floor: batched encodings of the same texts + the budget arithmetic on the ids, nothing else
    docs = [r["document"] for r in rows]
    sums = [fmt._summary_text(r["summary"]) for r in rows]

    def floor_run() -> float:
        t0 = time.perf_counter()
        for i in range(0, len(rows), 1000):
            d_ids = tok(docs[i : i + 1000], add_special_tokens=False, verbose=False)["input_ids"]
            s_ids = tok(sums[i : i + 1000], add_special_tokens=False, verbose=False)["input_ids"]
            for d, c in zip(d_ids, s_ids):
                budget = fmt.doc_budget(len(c) + 1)
                if budget >= 1:
                    _ = fmt.pre_ids + d[:budget] + fmt.post_ids + c
        return time.perf_counter() - t0

    # before: the same map, one tokenizer call per document and per summary
    def row_at_a_time(batch, formatter):
        out = {"input_ids": [], "completion_mask": [], "prompt_len": [], "status": []}
        for d, s in zip(batch["document"], batch["summary"]):
            comp = formatter.completion_ids(s)
            ex, status = formatter.prompt_ids(d, len(comp))
            out["status"].append(status)
            out["input_ids"].append((ex or []) + (comp if ex else []))
            out["completion_mask"].append(([0] * len(ex) + [1] * len(comp)) if ex else [])
            out["prompt_len"].append(len(ex) if ex else 0)
        return out

    def before_run():
        t0 = time.perf_counter()
        ds = datasets.Dataset.from_list(
            [{"id": r["id"], "document": r["document"], "summary": r["summary"]} for r in rows]
        ).map(row_at_a_time, batched=True, batch_size=256, fn_kwargs={"formatter": fmt}, load_from_cache_file=False)
        return time.perf_counter() - t0, ds

    def ours_run():
        t0 = time.perf_counter()
        ds, stats = TK.tokenize_split(split, fmt, one_process, cache_dir=None)
        return time.perf_counter() - t0, ds, stats

    floor_run()  # warm-up: the tokenizer's word cache filled for every path alike
    floors = [floor_run()]
    ours, ds, stats = ours_run()
    t_before, before = before_run()
    floors.append(floor_run())
    floor = statistics.mean(floors)
    same_as_before = ds["input_ids"] == [
        x for x, s in zip(before["input_ids"], before["status"]) if s in ("ok", "truncated")
    ]
    n = len(rows)
    return {
        "rows": n,
        "rows_kept": stats.rows_kept,
        "processes": 1,
        "ours_s": round(ours, 6),
        "before_s": round(t_before, 6),
        "floor_s": round(floor, 6),
        "floor_runs_s": [round(f, 6) for f in floors],
        "ours_rows_per_s": n / ours,
        "before_rows_per_s": n / t_before,
        "floor_rows_per_s": n / floor,
        "ratio": floor / ours,
        "ratio_before": floor / t_before,
        "same_ids_as_before": bool(same_as_before),
        "tokenizer": type(tok).__name__,
        "max_seq_length": cfg.model.max_seq_length,
    }


def plain_generate(
    model, tok, prompts: list[list[int]], max_new: int, stop: list[int], backend: str, bs: int
) -> tuple[list[str], int, int]:
    """The floor our generation figures are ratios of: model.generate over left-padded batches of `prompts` (token
    ids) in the given order, greedy, our stop tokens. Returns the texts, the new tokens and the pad tokens."""
    texts, new_tokens, padded = [], 0, 0
    device = next(model.parameters()).device
    with inference_mode(model, tok, backend):
        for i in range(0, len(prompts), bs):
            batch = tok.pad({"input_ids": prompts[i : i + bs]}, return_tensors="pt", padding=True)
            batch = {k: v.to(device) for k, v in batch.items()}
            gen = model.generate(
                **batch,
                max_new_tokens=max_new,
                do_sample=False,
                num_beams=1,
                eos_token_id=stop,
                pad_token_id=tok.pad_token_id,
                use_cache=True,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            padded += int((batch["attention_mask"] == 0).sum())
            for toks in gen[:, batch["input_ids"].shape[1] :].tolist():
                n = next((k for k, t in enumerate(toks) if t in stop), len(toks))
                new_tokens += n
                texts.append(tok.decode(toks[:n], skip_special_tokens=True).strip())
    return texts, new_tokens, padded


def generation_floor(cfg, model, tok, raw: dict, n_rows: int) -> dict:
    split = raw.get("validation") or raw["train"]
    rows = split.rows[:n_rows]
    documents = [r["document"] for r in rows]
    fmt = Formatter(tok, cfg.data, cfg.model.max_seq_length)
    ev = cfg.eval
    max_new = derive_max_new_tokens([len(fmt.completion_ids(r["summary"])) for r in raw["train"].rows], ev)
    prompts = [fmt.generation_prompt(d, max_new)[0] for d in documents]
    bs, stop = ev.batch_size, list(fmt.stop_ids)
    backend = cfg.model.backend

    def plain() -> tuple[float, list[str], int, int]:
        t0 = time.perf_counter()
        texts, new_tokens, padded = plain_generate(model, tok, prompts, max_new, stop, backend, bs)
        return time.perf_counter() - t0, texts, new_tokens, padded

    def ours(sort: bool) -> tuple[float, list[str], int]:
        t0 = time.perf_counter()
        request = GenerationRequest(
            fmt, documents, ev, max_new, backend, batch_size=bs, seed=ev.sample_seed, sort_by_length=sort
        )
        gens = generate(model, tok, request)
        return time.perf_counter() - t0, [g.text for g in gens], sum(g.new_tokens for g in gens)

    # warm-up: one batch through each path (first-call costs: kernels, caches, Unsloth's inference switch)
    generate(
        model, tok, GenerationRequest(fmt, documents[:bs], ev, max_new, backend, batch_size=bs, seed=ev.sample_seed)
    )
    t_floor, floor_texts, floor_tokens, floor_pad = plain()
    t_eq, eq_texts, eq_tokens = ours(False)
    t_sorted, sorted_texts, sorted_tokens = ours(True)
    t_floor2, _, _, _ = plain()
    floor_s = (t_floor + t_floor2) / 2
    # the ROUGE pass (generation + scoring + files), on the same rows
    prepared = prepare(cfg, tok, {"train": raw["train"], "validation": type(split)("validation", "bench", rows)})
    evaluator = SummaryEvaluator(
        cfg.model_copy(update={"eval": ev.model_copy(update={"num_samples": len(rows)})}),
        tok,
        prepared.formatter,
        prepared.splits["validation"],
        [max_new],
        out_dir=None,
    )
    evaluator.max_new_tokens = max_new
    t0 = time.perf_counter()
    rouge_pass = evaluator.run(model, step=0, tag="bench")
    t_rouge = time.perf_counter() - t0
    # the statistics against rouge-score alone, on the same summaries (the pass's time is mostly generation)
    t0 = time.perf_counter()
    references = [r["summary"] for r in rows]
    score_corpus(references, sorted_texts, evaluator.protocol)
    t_scoring = time.perf_counter() - t0
    t0 = time.perf_counter()
    diagnostics.corpus(sorted_texts, documents, references, None, evaluator.protocol.tokenizer)
    t_diag = time.perf_counter() - t0
    n = len(prompts)
    lengths = sorted(len(p) for p in prompts)
    return {
        "examples": n,
        "batch_size": bs,
        "max_new_tokens": max_new,
        "prompt_tokens": {"min": lengths[0], "mean": round(sum(lengths) / n, 1), "max": lengths[-1]},
        "floor_s": [round(t_floor, 6), round(t_floor2, 6)],
        "floor_examples_per_s": n / floor_s,
        "floor_tokens_per_s": floor_tokens / floor_s,
        "floor_padding_tokens": floor_pad,
        "equal_s": round(t_eq, 6),
        "equal_examples_per_s": n / t_eq,
        "equal_tokens_per_s": eq_tokens / t_eq,
        "sorted_s": round(t_sorted, 6),
        "sorted_examples_per_s": n / t_sorted,
        "sorted_tokens_per_s": sorted_tokens / t_sorted,
        "rouge_pass_s": round(t_rouge, 6),
        "rouge_pass_examples_per_s": n / t_rouge,
        "diagnostics_in_pass_s": round(rouge_pass["diagnostics_seconds"], 6),
        "diagnostics_share_of_pass": rouge_pass["diagnostics_seconds"] / t_rouge,
        "rouge_scoring_s": round(t_scoring, 6),
        "diagnostics_s": round(t_diag, 6),
        "ratio_equal": floor_s / t_eq,
        "ratio_sorted": floor_s / t_sorted,
        "same_texts_equal": sum(a == b for a, b in zip(eq_texts, floor_texts)),
        "same_texts_sorted": sum(a == b for a, b in zip(sorted_texts, floor_texts)),
    }


def training_floor(cfg, model, tok, info, raw: dict, steps: int, warmup: int, rounds: int) -> dict:
    cfg = cfg.model_copy(deep=True)
    cfg.train.max_steps = steps
    cfg.eval.generate = False
    cfg.eval.base_eval = False
    clock = StepClock()
    session = build_session(cfg, model, tok, info, {"train": raw["train"]}, extra_callbacks=[clock])
    trainer = session.trainer
    trainer.model.register_forward_pre_hook(clock.meter.hook, with_kwargs=True)
    ga = trainer.args.gradient_accumulation_steps
    loader = trainer.get_train_dataloader()
    micro = []
    while len(micro) < steps * ga:
        for b in loader:
            micro.append(b)
            if len(micro) == steps * ga:
                break
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    dev = trainer.args.device
    cuda = torch.cuda.is_available()

    def now():
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def plain_loop() -> dict:
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
        opt = torch.optim.AdamW(params, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
        trainer.model.train()
        t_warm, nonpad = None, 0
        for step in range(steps):
            if step == warmup:
                t_warm = now()
            for b in micro[step * ga : (step + 1) * ga]:
                b = {k: v.to(dev) if hasattr(v, "to") else v for k, v in b.items()}
                loss = trainer.model(**b).loss / ga
                loss.backward()
                if step >= warmup:
                    nonpad += int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
            opt.step()
            opt.zero_grad(set_to_none=True)
        t = now() - t_warm
        return {"s": round(t, 6), "nonpad_tokens": nonpad, "tokens_per_s": nonpad / t}

    def ours() -> dict:
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
        clock.marks.clear()
        clock.evals.clear()
        trainer.train()
        by_step = {m[0]: m for m in clock.marks}
        first, last = by_step[warmup], clock.marks[-1]
        t = last[1] - first[1]
        nonpad = last[3] - first[3]
        return {"s": round(t, 6), "nonpad_tokens": nonpad, "tokens_per_s": nonpad / t}

    floors, oursl = [plain_loop()], []
    for _ in range(rounds):
        oursl.append(ours())
        floors.append(plain_loop())
    floor_tps = statistics.mean(f["tokens_per_s"] for f in floors)
    ours_tps = statistics.median(o["tokens_per_s"] for o in oursl)
    return {
        "steps": steps,
        "warmup_steps": warmup,
        "rounds": rounds,
        "batch": f"{trainer.args.per_device_train_batch_size}x{ga}",
        "precision": str(trainer.args.bf16 and "bf16" or "fp32"),
        "gradient_checkpointing": cfg.model.gradient_checkpointing,
        "floor": floors,
        "ours": oursl,
        "floor_tokens_per_s": floor_tps,
        "ours_tokens_per_s": ours_tps,
        "same_tokens": len({f["nonpad_tokens"] for f in floors} | {o["nonpad_tokens"] for o in oursl}) == 1,
        "ratio": ours_tps / floor_tps,
    }


# ---------------------------------------------------------------------------------------------------------
# start-up: whole commands, from the parent
# ---------------------------------------------------------------------------------------------------------


def _timed(cmd: list[str], env: dict) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, p.returncode, (p.stdout + p.stderr)[-3000:]


def startup_floor(cfg_dict: dict, work: Path, env: dict) -> dict:
    cfg = Config.model_validate(cfg_dict)
    cfg.train.max_steps = 1
    cfg.train.save_strategy = "no"
    cfg.output.report = False
    cfg.output.dir = str(work / "startup-run")
    cfg.output.model_dir = str(work / "startup-final")  # beside output.dir, as the train command requires
    path = work / "startup.yaml"
    path.write_text(config_to_yaml(cfg), encoding="utf-8")
    py = sys.executable
    libs = "import unsloth, trl, peft" if cfg.model.backend == "unsloth" else "import transformers, trl, peft"
    _timed([py, "-c", libs], env)  # warm-up: the files in the page cache, as for the train command after it
    t_import, rc_i, _ = _timed([py, "-c", libs], env)
    t_help, rc_h, _ = _timed([py, "-m", "llm_summarizer", "train", "--help"], env)
    t_print, rc_p, _ = _timed([py, "-m", "llm_summarizer", "train", "--config", str(path), "--print-config"], env)
    t_train, rc_t, tail = _timed([py, "-m", "llm_summarizer", "train", "--config", str(path)], env)
    if rc_t != 0:
        raise RuntimeError(f"the start-up run failed (exit {rc_t}):\n{tail}")
    split = RunMetrics.read(Path(cfg.output.model_dir) / METRICS_FILE).train.startup or {}
    return {
        "bare_imports_s": round(t_import, 2),
        "bare_imports": libs,
        "help_s": round(t_help, 2),
        "print_config_s": round(t_print, 2),
        "train_command_s": round(t_train, 2),
        "split": split,
        "to_first_step_s": split.get("to_first_step_s"),
        "ratio_imports": t_import / split["imports_s"] if split.get("imports_s") else None,
        "exit_codes": {"import": rc_i, "help": rc_h, "print_config": rc_p, "train": rc_t},
    }


# ---------------------------------------------------------------------------------------------------------
# the parent
# ---------------------------------------------------------------------------------------------------------


def run_floors(options: BenchOptions) -> Written:
    parts = list(options.floor_parts)
    data, out, work, model_dir, shape = prepare_run(options, "floors-")
    cfg = bench_config(options, data, model_dir, work / "child")
    backend = options.backends[0] if options.backends else "unsloth"
    cfg.model.backend = backend
    env = child_env(options.threads)
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "llm-summarizer bench " + shlex.join(options.argv),
        "git_commit": git_commit(),
        "model": {"shape": shape, "dir": model_dir},
        "dataset": {"name": data[2], "train": str(data[0])},
        "backend": backend,
        "parts": parts,
    }
    in_child = [p for p in parts if p != "startup"]
    if in_child:
        spec = {
            "kind": "floors",
            "config": config_to_dict(cfg),
            "parts": in_child,
            "data_rows": options.data_rows,
            "gen_rows": options.gen_rows,
            "steps": options.steps,
            "warmup_steps": options.warmup_steps,
            "rounds": options.rounds,
            "result": str(work / "floors.result.json"),
        }
        spec_path = work / "floors.spec.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        log_path = work / "floors.log"
        print(f"[bench] floors: {', '.join(in_child)} on {backend} (log {log_path}) ...", file=sys.stderr, flush=True)
        with open(log_path, "w", encoding="utf-8") as log:
            rc = subprocess.call(
                [sys.executable, "-m", "llm_summarizer", "bench", "--child", str(spec_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if rc != 0:
            tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-40:])
            raise RuntimeError(f"the floors run failed (exit code {rc}); log {log_path}:\n{tail}")
        result.update(json.loads((work / "floors.result.json").read_text()))
    if "startup" in parts:
        print(
            "[bench] floors: start-up (train to its first step, bare imports, --help, --print-config) ...",
            file=sys.stderr,
            flush=True,
        )
        result["startup"] = startup_floor(config_to_dict(cfg), work, env)
    if "device" not in result:
        result["device"] = f"CPU {cpu_name()}, {os.cpu_count()} cores"
    result["threads"] = options.threads
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    if not options.keep:
        shutil.rmtree(work, ignore_errors=True)
    if options.markdown:
        append_floor_rows(Path(options.markdown), floors_rows(result))
    return Written(result, out, work)


FLOORS_MARKER = "<!-- floors rows: llm-summarizer bench --floors appends below -->"
FLOORS_HEADER = (
    "| date | device | model · data | part | ours | floor | ours / floor | notes | command |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
)


def floors_rows(r: dict) -> list[str]:
    """One Markdown row per part measured."""
    what = f"{r['model']['shape'] or Path(r['model']['dir']).name} · {r['dataset']['name']}"
    head = f"| {r['date']} | {r.get('device', '')} | {what} "
    cmd = f"`{r['command']}`"
    rows = []
    if "data" in r:
        d = r["data"]
        rows.append(
            f"{head}| data preparation ({d['rows']} rows, 1 process) | {d['ours_rows_per_s']:.0f} rows/s | "
            f"{d['floor_rows_per_s']:.0f} rows/s | **{d['ratio']:.2f}x** | row at a time (before): "
            f"{d['before_rows_per_s']:.0f} rows/s = {d['ratio_before']:.2f}x; same ids: "
            f"{'yes' if d['same_ids_as_before'] else 'NO'} | {cmd} |"
        )
    if "generation" in r:
        g = r["generation"]
        rows.append(
            f"{head}| generation ({g['examples']} prompts of {g['prompt_tokens']['min']}-"
            f"{g['prompt_tokens']['max']} tokens, batch {g['batch_size']}, max_new {g['max_new_tokens']}) | "
            f"sorted: {g['sorted_examples_per_s']:.2f} ex/s, {g['sorted_tokens_per_s']:.0f} tok/s<br>"
            f"dataset order: {g['equal_examples_per_s']:.2f} ex/s | {g['floor_examples_per_s']:.2f} ex/s, "
            f"{g['floor_tokens_per_s']:.0f} tok/s | **sorted {g['ratio_sorted']:.2f}x**<br>equal "
            f"{g['ratio_equal']:.2f}x | same texts as the floor: sorted {g['same_texts_sorted']}/"
            f"{g['examples']}, equal {g['same_texts_equal']}/{g['examples']}; the ROUGE pass "
            f"{g['rouge_pass_examples_per_s']:.2f} ex/s"
            + (
                f" (statistics against the documents {1000 * g['diagnostics_in_pass_s']:.0f} ms = "
                f"{100 * g['diagnostics_share_of_pass']:.2f}% of it; alone {1000 * g['diagnostics_s']:.0f} ms "
                f"vs rouge-score's scoring {1000 * g['rouge_scoring_s']:.0f} ms)"
                if "diagnostics_s" in g
                else ""
            )
            + f"; floor runs {g['floor_s']} s | {cmd} |"
        )
    if "training" in r:
        t = r["training"]
        rows.append(
            f"{head}| training ({t['steps'] - t['warmup_steps']} steps after {t['warmup_steps']}, batch "
            f"{t['batch']}, {t['precision']}) | {t['ours_tokens_per_s']:.0f} non-pad tok/s | "
            f"{t['floor_tokens_per_s']:.0f} non-pad tok/s | **{t['ratio']:.2f}x** | plain loop before/after "
            f"ours: {', '.join(str(round(f['tokens_per_s'])) for f in t['floor'])}; same tokens: "
            f"{'yes' if t['same_tokens'] else 'NO'} | {cmd} |"
        )
    if "startup" in r:
        s = r["startup"]
        split = ", ".join(
            f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f}" for k, v in s["split"].items() if k != "to_first_step_s"
        )
        rows.append(
            f"{head}| start-up to the first step | {s['to_first_step_s']:.1f} s ({split}) | bare "
            f"`{s['bare_imports']}`: {s['bare_imports_s']:.1f} s | imports {s['ratio_imports']:.2f}x | "
            f"`--help` {s['help_s']:.1f} s, `--print-config` {s['print_config_s']:.1f} s | {cmd} |"
        )
    return rows


def append_floor_rows(path: Path, rows: list[str]) -> None:
    """Under the floors marker of BENCHMARKS.md (the section and its table header made when missing), after
    the table's last row."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if FLOORS_MARKER not in text:
        text = text.rstrip("\n") + f"\n\n## Floors\n\n{FLOORS_MARKER}\n\n{FLOORS_HEADER}"
    lines = text.split("\n")
    at = lines.index(FLOORS_MARKER) + 1
    while at < len(lines) and not lines[at].strip():
        at += 1
    if at == len(lines) or not lines[at].startswith("|"):  # the marker without its table
        lines[at:at] = FLOORS_HEADER.rstrip("\n").split("\n") + [""]
    while at < len(lines) and lines[at].startswith("|"):
        at += 1
    lines[at:at] = rows
    path.write_text("\n".join(lines), encoding="utf-8")
