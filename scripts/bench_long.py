"""Long documents and generation batching on real data: QMSum meetings, SmolLM2 fine-tuned on DialogSum.

    .venv/bin/python scripts/bench_long.py                                   # fine-tune, then both parts
    .venv/bin/python scripts/bench_long.py --model outputs/bench_long/fine_tuned --meetings 10
    .venv/bin/python scripts/bench_long.py --parts batching --model outputs/bench_long/fine_tuned
    .venv/bin/python scripts/bench_long.py --parts quality --meetings 10 eval.chunk_tokens=1024   # other windows

Without --model, the ready config `demo` (SmolLM2-135M-Instruct) is fine-tuned on the first --train-rows
DialogSum dialogues for --steps steps (the recipe of the tests' real-model fixture). Then:

- quality: the first --meetings QMSum test meetings (transcripts of about 12,000 tokens against a window of a
  few hundred), summarized by the same model three ways: cut to the window by data.truncation=head and
  =head_tail, and chunked (eval.long_documents=chunk: windows, then merge rounds). ROUGE-1/2/L/Lsum F1 against
  the whole-meeting reference with bootstrap 95% intervals, the paired differences chunk - head and chunk -
  head_tail (same meetings resampled), summary lengths, tokens generated, generations and wall time. Rows go
  between the markers of BENCHMARKS.md's "Long documents" section.
- batching: continuous batching (eval.batching=continuous) against length-sorted static batches and against
  plain `model.generate` over batches in the given order (the floor), greedy, same prompts and stop tokens,
  identical texts counted, on (a) the ROUGE pass's generation (DialogSum validation prompts), (b) `evaluate`
  (DialogSum test rows, evaluate_model end to end) and (c) chunked summarization (the windows and merges of the
  first --batching-meetings meetings). Rows go into BENCHMARKS.md's floors table.

Reads ../shared/data/{dialogsum,qmsum} (--data-root) and never copies them; a missing dataset ends the script with
a message. Each measurement records the 1-minute load average before and after it: time on a shared machine
is only comparable between runs of a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from llm_summarizer.layout import FINE_TUNED_DIR, OUTPUTS_DIR

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- long-document rows: scripts/bench_long.py writes below -->", "<!-- long-document rows end -->"
INSTRUCTION = "Summarize the following dialogue in a few sentences."


def load_avg() -> float:
    return os.getloadavg()[0]


def read_jsonl(p: Path, limit=None) -> list[dict]:
    rows = []
    with open(p, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if limit and len(rows) >= limit:
                break
    return rows


def fine_tune(args) -> Path:
    from llm_summarizer.config_loading import load_config
    from llm_summarizer.training.run import run

    data = Path(args.data_root) / "dialogsum"
    out = Path(args.work)
    overrides = [
        f"data.train={{path: {data / 'train.jsonl'}, limit: {args.train_rows}}}",
        f"data.validation={{path: {data / 'validation.jsonl'}, limit: 24}}",
        f"data.test={{path: {data / 'test.jsonl'}, limit: 8}}",
        f"data.instruction={INSTRUCTION}",
        f"train.max_steps={args.steps}",
        f"train.eval_steps={args.steps}",
        f"train.save_steps={args.steps}",
        "eval.num_samples=24",
        "eval.base_eval=false",
        "train.resume=never",
        f"output.dir={out / OUTPUTS_DIR}",
        f"output.model_dir={out / FINE_TUNED_DIR}",
    ]
    result = run(load_config("demo", overrides))
    return result.model_dir


class Busy:
    """`n` processes spinning beside the measurements (a shared machine, reproducibly: another user's CPU-bound
    job, always runnable, never sleeping), stopped on exit."""

    SPIN = "while True:\n    pass"

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        import subprocess

        self.procs = [subprocess.Popen([sys.executable, "-c", self.SPIN]) for _ in range(self.n)]
        if self.n:
            time.sleep(2)  # running before the first measurement
        return self

    def __exit__(self, *exc):
        for proc in self.procs:
            proc.terminate()
            proc.wait()


def threads_used(ev) -> dict:
    """The torch threads our generation and the plain floor use now (the floor keeps torch's own)."""
    import torch

    from llm_summarizer.models.device import generation_threads

    n, why = generation_threads(ev.cpu_threads)
    return {"torch": torch.get_num_threads(), "ours": n or torch.get_num_threads(), "why": why}


def timed(fn):
    before = load_avg()
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0, [round(before, 2), round(load_avg(), 2)]


# -- quality: chunk vs truncate on QMSum ----------------------------------------------------------------------
# The methods measured by default: the two truncations and chunking at its defaults; --method adds others.
METHODS = {
    "head": ["data.truncation=head", "eval.long_documents=truncate"],
    "head_tail": ["data.truncation=head_tail", "eval.long_documents=truncate"],
    "chunk": ["eval.long_documents=chunk"],
}
DIAGNOSTICS = ("length_ratio", "density", "coverage", "repeated_3gram", "novel_2gram")


def parse_method(spec: str) -> tuple[str, list[str]]:
    """NAME=KEY=VALUE,KEY=VALUE (e.g. refine-1k=eval.chunk_strategy=refine,eval.max_window_tokens=1024): a chunked
    method of these settings."""
    name, _, rest = spec.partition("=")
    if not name or not rest:
        raise SystemExit(f"bench_long: --method {spec!r}: give NAME=KEY=VALUE[,KEY=VALUE...]")
    return name, ["eval.long_documents=chunk", *[o for o in rest.split(",") if o]]


def quality(loaded_for, meetings: list[dict], samples: int, seed: int, methods: dict) -> dict:
    from llm_summarizer.evaluation import diagnostics
    from llm_summarizer.evaluation.bootstrap import paired_difference, score_block
    from llm_summarizer.evaluation.scoring import protocol_for
    from llm_summarizer.models.generation import check_documents, default_max_new_tokens, summarize_texts

    protocol = protocol_for([m["summary"] for m in meetings])
    out = {"meetings": [m["id"] for m in meetings], "methods": {}}
    rows = {}
    for name, overrides in methods.items():
        loaded = loaded_for(overrides)
        max_new, _ = default_max_new_tokens(loaded)
        docs = [m["document"] for m in meetings]
        cost = check_documents(loaded, docs, max_new, [m["id"] for m in meetings])
        print(f"bench_long: quality, {name}: {len(meetings)} meetings", file=sys.stderr, flush=True)
        gens, seconds, load = timed(lambda: summarize_texts(loaded, docs, max_new, names=[m["id"] for m in meetings]))
        print(f"bench_long: quality, {name}: {seconds:.0f} s", file=sys.stderr, flush=True)
        rows[name] = [{"id": m["id"], "reference": m["summary"], "prediction": g.text} for m, g in zip(meetings, gens)]
        trees = [g.tree for g in gens if g.tree]
        per = diagnostics.corpus(
            [g.text for g in gens], docs, [m["summary"] for m in meetings], [g.hit_max for g in gens]
        )
        out["methods"][name] = {
            "overrides": overrides,
            "seconds": round(seconds, 2),
            "seconds_per_meeting": round(seconds / len(meetings), 1),
            "load_avg": load,
            "max_new_tokens": max_new,
            "scores": score_block(rows[name], samples, seed, protocol),
            "diagnostics": {k: diagnostics.means(per)[k] for k in DIAGNOSTICS},
            "generations": sum(t["generations"] for t in trees) + len(gens) - len(trees),
            "planned_generations": cost.generations if cost else None,
            "tokens_generated": sum(t["generated_tokens"] for t in trees)
            + sum(g.new_tokens for g in gens if not g.tree),
            "summary_words": sum(len(g.text.split()) for g in gens) / len(gens),
            "hit_max": sum(g.hit_max for g in gens),
            "strategy": trees[0].get("strategy", "map_reduce") if trees else None,
            "windows": [t["windows"] for t in trees],
            "merge_rounds": [t["merge_rounds"] for t in trees],
            "cut_merges": sum(t["cut"] for t in trees),
            "dropped_sentences": sum(t.get("dropped_repeated_sentences", 0) for t in trees),
            "window_tokens": trees[0]["window_tokens"] if trees else loaded.formatter.doc_budget(max_new),
            "examples": [{"id": m["id"], "summary": g.text} for m, g in list(zip(meetings, gens))[:2]],
        }
    for name in rows:
        for base in ("head", "head_tail"):
            if base in rows and name not in ("head", "head_tail"):
                out[f"{name}_minus_{base}"] = paired_difference(rows[name], rows[base], samples, seed, protocol)
    out["reference_words"] = sum(len(m["summary"].split()) for m in meetings) / len(meetings)
    return out


# -- batching: continuous vs sorted static vs plain generate ---------------------------------------------------
def plain_generate(loaded, docs: list[str], max_new: int, bs: int) -> list[str]:
    """The floor: model.generate over left-padded batches in the given order, greedy, the same stop tokens (the
    bench's floor, llm_summarizer.bench.floors.plain_generate)."""
    from llm_summarizer.bench.floors import plain_generate as floor  # the ML stack, once the arguments are read

    fmt = loaded.formatter
    prompts = [fmt.generation_prompt(d, max_new)[0] for d in docs]
    return floor(loaded.model, loaded.tokenizer, prompts, max_new, list(fmt.stop_ids), loaded.backend, bs)[0]


def three_ways(loaded, docs: list[str], max_new: int) -> dict:
    """The same prompts through plain generate (before and after ours), sorted static and continuous batches."""
    from llm_summarizer.models.generation import GenerationRequest, generate

    bs, ev = loaded.cfg.eval.batch_size, loaded.cfg.eval

    print(f"bench_long: batching, ROUGE pass: {len(docs)} prompts", file=sys.stderr, flush=True)

    def ours(mode):
        request = GenerationRequest(loaded.formatter, docs, ev, max_new, loaded.backend, batching=mode)
        gens = generate(loaded.model, loaded.tokenizer, request)
        return [g.text for g in gens], sum(g.new_tokens for g in gens)

    ours("static")  # warm-up (first-call costs)
    floor1, t_f1, l_f1 = timed(lambda: plain_generate(loaded, docs, max_new, bs))
    (static, tok_s), t_s, l_s = timed(lambda: ours("static"))
    (cont, tok_c), t_c, l_c = timed(lambda: ours("continuous"))
    floor2, t_f2, l_f2 = timed(lambda: plain_generate(loaded, docs, max_new, bs))
    n, floor = len(docs), (t_f1 + t_f2) / 2
    lengths = sorted(len(loaded.formatter.generation_prompt(d, max_new)[0]) for d in docs)
    return {
        "examples": n,
        "batch_size": bs,
        "max_new_tokens": max_new,
        "prompt_tokens": [lengths[0], lengths[-1]],
        "floor_s": [round(t_f1, 2), round(t_f2, 2)],
        "static_s": round(t_s, 2),
        "continuous_s": round(t_c, 2),
        "tokens": tok_c,
        "ratio_continuous": floor / t_c,
        "ratio_static": floor / t_s,
        "continuous_over_static": t_s / t_c,
        "same_texts_continuous": sum(a == b for a, b in zip(cont, floor1)),
        "same_texts_static": sum(a == b for a, b in zip(static, floor1)),
        "floor_runs_agree": sum(a == b for a, b in zip(floor1, floor2)),
        "load_avg": {"floor": [l_f1, l_f2], "static": l_s, "continuous": l_c},
    }


def chunked_ways(loaded, docs: list[str], max_new: int) -> dict:
    """Chunked summarization (windows and merges) with each batching; the floor is plain generate in order."""
    from llm_summarizer.models.chunked import summarize_long
    from llm_summarizer.models.generation import GenerationRequest, chunk_formatters, generate

    ev = loaded.cfg.eval
    fmt, merge_fmt, refine_fmt = chunk_formatters(loaded, max_new)

    def with_batching(mode):
        def run(texts, formatter, _report):
            request = GenerationRequest(
                formatter,
                texts,
                ev,
                max_new,
                loaded.backend,
                batching="static" if mode == "floor" else mode,
                sort_by_length=mode != "floor",
            )
            return generate(loaded.model, loaded.tokenizer, request)

        return summarize_long(docs, fmt, merge_fmt, ev, max_new, run, refine_formatter=refine_fmt)

    print(f"bench_long: batching, chunked: {len(docs)} documents", file=sys.stderr, flush=True)
    floor, t_f, l_f = timed(lambda: with_batching("floor"))
    static, t_s, l_s = timed(lambda: with_batching("static"))
    cont, t_c, l_c = timed(lambda: with_batching("continuous"))
    gens = sum(g.tree["generations"] if g.tree else 1 for g in cont)
    return {
        "documents": len(docs),
        "generations": gens,
        "batch_size": ev.batch_size,
        "max_new_tokens": max_new,
        "floor_s": round(t_f, 2),
        "static_s": round(t_s, 2),
        "continuous_s": round(t_c, 2),
        "ratio_continuous": t_f / t_c,
        "ratio_static": t_f / t_s,
        "continuous_over_static": t_s / t_c,
        "same_trees_continuous": sum(a.tree == b.tree for a, b in zip(cont, floor)),
        "same_trees_static": sum(a.tree == b.tree for a, b in zip(static, floor)),
        "load_avg": {"floor": l_f, "static": l_s, "continuous": l_c},
    }


def evaluate_ways(model_dir: Path, data: Path, rows: int, work: Path) -> dict:
    from llm_summarizer.evaluation.evaluate import evaluate_model

    out = {}
    print(f"bench_long: batching, evaluate: {rows} rows", file=sys.stderr, flush=True)
    for mode in ("static", "continuous", "static"):
        target = work / f"evaluate-{mode}-{len(out)}"
        shutil.rmtree(target, ignore_errors=True)  # else evaluate resumes from the last run's predictions: 0 s
        res, t, load = timed(
            lambda: evaluate_model(
                model_dir,
                data=str(data / "test.jsonl"),
                output=target,
                limit=rows,
                overrides=[f"eval.batching={mode}"],
                report=False,
            )
        )
        preds = [json.loads(line)["prediction"] for line in (target / "predictions.jsonl").read_text().splitlines()]
        out.setdefault(mode, []).append(
            {
                "seconds": round(t, 2),
                "load_avg": load,
                "texts": preds,
                "rougeL": res.metrics["results"]["model"]["rougeL"]["f1"],
            }
        )
    static_s = sum(r["seconds"] for r in out["static"]) / 2
    cont = out["continuous"][0]
    same = sum(a == b for a, b in zip(sorted(cont["texts"]), sorted(out["static"][0]["texts"])))
    return {
        "rows": rows,
        "static_s": [r["seconds"] for r in out["static"]],
        "continuous_s": cont["seconds"],
        "continuous_over_static": static_s / cont["seconds"],
        "same_texts": same,
        "rougeL": {"static": out["static"][0]["rougeL"], "continuous": cont["rougeL"]},
        "load_avg": {"static": [r["load_avg"] for r in out["static"]], "continuous": cont["load_avg"]},
    }


# -- rows -----------------------------------------------------------------------------------------------------
def _ci(block: dict, k: str) -> str:
    b = block[k]
    return f"{100 * b['f1']:.2f} [{100 * b['ci95'][0]:.2f}, {100 * b['ci95'][1]:.2f}]"


def _diff(d: dict) -> str:
    return " / ".join(
        f"{100 * d[k]['diff']:+.2f} [{100 * d[k]['ci95'][0]:+.2f}, {100 * d[k]['ci95'][1]:+.2f}]"
        for k in ("rouge1", "rouge2", "rougeL")
    )


def quality_rows(r: dict, head: str, cmd: str) -> list[str]:
    q = r["quality"]
    rows = []
    for name, m in q["methods"].items():
        s = m["scores"]
        how = {"head": "truncate (head)", "head_tail": "truncate (head_tail)"}.get(name)
        extra = ""
        if how is None:
            w = m["windows"]
            how = f"{name} ({m['strategy']}, {m['window_tokens']}-token windows)"
            merges = (
                f", merge rounds {min(m['merge_rounds'])}-{max(m['merge_rounds'])}, last round cut in {m['cut_merges']}"
                if m["strategy"] == "map_reduce"
                else ""
            )
            extra = (
                f"; {sum(w) / len(w):.1f} windows per meeting{merges}; {m['dropped_sentences']} repeated "
                f"sentences dropped; planned at most {m['planned_generations']} generations"
            )
        vs = [f"minus {b}: {_diff(q[f'{name}_minus_{b}'])}" for b in ("head", "head_tail") if f"{name}_minus_{b}" in q]
        d = m["diagnostics"]
        diag = " · ".join(f"{k} {d[k]:.2f}" if d.get(k) is not None else f"{k} -" for k in DIAGNOSTICS)
        rows.append(
            f"{head}| {how} | {_ci(s, 'rouge1')} | {_ci(s, 'rouge2')} | {_ci(s, 'rougeL')} | "
            f"{'<br>'.join(vs) or '-'} | {diag} | "
            f"{m['summary_words']:.0f} ({q['reference_words']:.0f}) | {m['generations']} | "
            f"{m['tokens_generated']} | {m['seconds']:.0f} s, {m['seconds_per_meeting']:.0f} s a meeting (load "
            f"{m['load_avg'][0]}-{m['load_avg'][1]}){extra} | `{cmd}` |"
        )
    return rows


def batching_rows(r: dict, head: str, cmd: str) -> list[str]:
    b = r["batching"]
    rows = []
    t = b.get("threads")
    load = f"{'busy: ' + str(b['busy']) + ' process(es) spinning beside' if b.get('busy') else 'quiet'}" + (
        f"; ours on {t['ours']} torch thread(s), the floor on torch's {t['torch']}" if t else ""
    )
    g = b.get("rouge_pass")
    if g:
        floor = sum(g["floor_s"]) / 2
        rows.append(
            f"{head}| generation, continuous batching (the ROUGE pass: {g['examples']} DialogSum prompts of "
            f"{g['prompt_tokens'][0]}-{g['prompt_tokens'][1]} tokens, batch {g['batch_size']}, max_new "
            f"{g['max_new_tokens']}; {load}) | continuous: {g['examples'] / g['continuous_s']:.2f} ex/s, "
            f"{g['tokens'] / g['continuous_s']:.0f} tok/s<br>sorted static: {g['examples'] / g['static_s']:.2f} ex/s | "
            f"{g['examples'] / floor:.2f} ex/s | **continuous {g['ratio_continuous']:.2f}x**<br>sorted "
            f"{g['ratio_static']:.2f}x | same texts as the floor: continuous {g['same_texts_continuous']}/"
            f"{g['examples']}, sorted {g['same_texts_static']}/{g['examples']}; floor runs {g['floor_s']} s; load "
            f"avg {g['load_avg']} | `{cmd}` |"
        )
    e = b.get("evaluate")
    if e:
        rows.append(
            f"{head}| evaluate ({e['rows']} DialogSum test rows, end to end; {load}) | continuous: "
            f"{e['continuous_s']:.0f} s "
            f"| sorted static: {e['static_s']} s | **{e['continuous_over_static']:.2f}x** of static | same texts "
            f"{e['same_texts']}/{e['rows']}; ROUGE-L {100 * e['rougeL']['continuous']:.2f} both ways; load avg "
            f"{e['load_avg']} | `{cmd}` |"
        )
    c = b.get("chunked")
    if c:
        rows.append(
            f"{head}| chunked summarization ({c['documents']} QMSum meetings, {c['generations']} generations: "
            f"windows and merges, batch {c['batch_size']}, max_new {c['max_new_tokens']}; {load}) | continuous: "
            f"{c['continuous_s']:.0f} s<br>sorted static: {c['static_s']:.0f} s | plain generate in order: "
            f"{c['floor_s']:.0f} s | **continuous {c['ratio_continuous']:.2f}x**<br>sorted {c['ratio_static']:.2f}x "
            f"| same trees as the floor: continuous {c['same_trees_continuous']}/{c['documents']}, sorted "
            f"{c['same_trees_static']}/{c['documents']}; load avg {c['load_avg']} | `{cmd}` |"
        )
    return rows


QUALITY_HEADER = (
    "| date | device | model · data | method | ROUGE-1 F1 [95%] | ROUGE-2 F1 [95%] | ROUGE-L F1 [95%] | "
    "this minus a truncation (R-1 / R-2 / R-L, paired 95%) | diagnostics (means) | summary words (reference) | "
    "generations | tokens generated | wall time, notes | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def write_quality(path: Path, rows: list[str]) -> None:
    text = path.read_text(encoding="utf-8")
    if START not in text:
        raise SystemExit(f"{path}: no '{START}' marker; add the Long documents section first")
    a, b = text.index(START) + len(START), text.index(END)
    body = text[a:b].strip("\n")
    lines = body.split("\n") if body else QUALITY_HEADER.rstrip("\n").split("\n")
    path.write_text(text[:a] + "\n\n" + "\n".join(lines + rows) + "\n\n" + text[b:], encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model fine-tuned on DialogSum (default: fine-tune one into --work)")
    ap.add_argument("--parts", default="quality,batching", help="quality, batching, or both")
    ap.add_argument("--meetings", type=int, default=10, help="QMSum test meetings for the quality part")
    ap.add_argument("--batching-meetings", type=int, default=2, help="QMSum meetings chunked in the batching part")
    ap.add_argument(
        "--busy",
        type=int,
        default=0,
        help="batching: this many processes spinning beside the measurements (a busy shared machine; 0: quiet)",
    )
    ap.add_argument("--rouge-rows", type=int, default=24, help="DialogSum validation prompts (the ROUGE pass)")
    ap.add_argument("--evaluate-rows", type=int, default=24, help="DialogSum test rows for evaluate")
    ap.add_argument("--train-rows", type=int, default=160)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--work", default=str(ROOT / OUTPUTS_DIR / "bench_long"))
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", help="JSON results (default <work>/long.json)")
    ap.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"), help="'' to write no rows")
    ap.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="NAME=KEY=VALUE,...",
        help="a chunked method of its own settings beside head, head_tail and chunk (the defaults), e.g. "
        "refine=eval.chunk_strategy=refine or w1k=eval.max_window_tokens=1024",
    )
    ap.add_argument("--only", help="measure only these methods (comma-separated names), e.g. head,chunk")
    ap.add_argument("overrides", nargs="*", help="config overrides for every generation, e.g. eval.chunk_tokens=1024")
    args = ap.parse_args(argv)
    root = Path(args.data_root)
    for name in ("dialogsum", "qmsum"):
        if not (root / name / "test.jsonl").is_file():
            print(
                f"bench_long: {root / name} is not on this machine (see ../shared/data/README.md); nothing measured",
                file=sys.stderr,
            )
            return 2
    parts = set(args.parts.split(","))
    from llm_summarizer.commands.boot import setup_logging
    from llm_summarizer.models.unsloth_first import import_unsloth

    setup_logging()
    import_unsloth()
    from llm_summarizer.bench.floors import append_floor_rows
    from llm_summarizer.bench.measure import device_name
    from llm_summarizer.data.prompt import Formatter
    from llm_summarizer.environment import package_versions
    from llm_summarizer.models.generation import default_max_new_tokens
    from llm_summarizer.models.loading import load_for_generation, model_config

    model_dir = Path(args.model) if args.model else fine_tune(args)
    loaded = load_for_generation(model_dir, overrides=list(args.overrides))

    def loaded_for(extra: list[str]):
        """The loaded model with these settings on top (the same weights: only the config and prompt change)."""
        loaded.cfg = model_config(loaded.info, list(args.overrides) + extra)
        loaded.formatter = Formatter(loaded.tokenizer, loaded.cfg.data, loaded.cfg.model.max_seq_length)
        return loaded

    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name(),
        "versions": package_versions(),
        "model": str(model_dir),
        "overrides": args.overrides,
        "command": "scripts/bench_long.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
    }
    meetings = read_jsonl(root / "qmsum" / "test.jsonl", args.meetings)
    if "quality" in parts:
        methods = dict(METHODS)
        methods.update(parse_method(m) for m in args.method)
        if args.only:
            wanted = args.only.split(",")
            unknown = [w for w in wanted if w not in methods]
            if unknown:
                raise SystemExit(
                    f"bench_long: --only {args.only}: no method {', '.join(unknown)}; known {sorted(methods)}"
                )
            methods = {w: methods[w] for w in wanted}
        result["quality"] = quality(loaded_for, meetings, args.bootstrap, 1234, methods)
    if "batching" in parts:
        max_new, _ = default_max_new_tokens(loaded_for([]))
        val = [r["document"] for r in read_jsonl(root / "dialogsum" / "validation.jsonl", args.rouge_rows)]
        with Busy(args.busy):
            result["batching"] = {"busy": args.busy, "threads": threads_used(loaded.cfg.eval)}
            print(f"bench_long: batching, {args.busy} busy process(es), {result['batching']['threads']}", flush=True)
            result["batching"]["rouge_pass"] = three_ways(loaded, val, max_new)
            result["batching"]["chunked"] = chunked_ways(
                loaded_for(["eval.long_documents=chunk"]),
                [m["document"] for m in meetings[: args.batching_meetings]],
                max_new,
            )
            result["batching"]["evaluate"] = evaluate_ways(
                model_dir, root / "dialogsum", args.evaluate_rows, Path(args.work)
            )
    out = Path(args.out) if args.out else Path(args.work) / "long.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {out}")
    head = f"| {result['date']} | {result['device']} | SmolLM2-135M-Instruct fine-tuned on DialogSum · qmsum "
    cmd = result["command"]
    if args.markdown:
        md = Path(args.markdown)
        if "quality" in result:
            write_quality(md, quality_rows(result, head, cmd))
        if "batching" in result:
            append_floor_rows(md, batching_rows(result, head.replace(" · qmsum", " · dialogsum, qmsum"), cmd))
        print(f"rows written into {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
