"""Benchmark the training path: llm-summarizer bench [--shape S | --model DIR] [--data D] [key=value ...]

See llm_summarizer.bench for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError
from . import boot

PROG = "llm-summarizer bench"
BACKENDS = ("unsloth", "transformers")
DOC = """Benchmark the project's own training path: backend unsloth against backend transformers, in one run.

    llm-summarizer bench --threads 1                         # CPU: tiny random-init Llama, ~8 min
    llm-summarizer bench --steps 8 --warmup-steps 2 --rounds 1 eval.num_samples=4   # a quick look
    llm-summarizer bench --shape llama-1b --data ../shared/data/dialogsum   # GPU: Llama-3.2-1B shape, bf16 LoRA
    llm-summarizer bench --shape llama-1b --data ../shared/data/dialogsum --qlora
    llm-summarizer bench --model /path/to/model --data path/to/data_dir train.padding_free=true
    llm-summarizer bench --from-json outputs/bench/RESULT.json   # append that result's row again
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



def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=DOC.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(DOC.split("\n")[2:]))
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--shape", default="tiny", help="random-init shape: tiny (CPU), llama-1b, qwen-1.5b, llama-8b")
    src.add_argument("--model", help="a local model directory instead of a random-init shape")
    ap.add_argument("--data", default="demo",
                    help="a directory with train.jsonl [+ validation.jsonl], a JSONL file, or the name of such a "
                         "directory under data/ or $LLM_SUMMARIZER_DATA_PATH (default: demo)")
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
    ap.add_argument("--markdown", default="BENCHMARKS.md", help="append the row here ('' for none)")
    ap.add_argument("--work-dir", help="where the runs write (default: beside --out; removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the run directories and logs")
    ap.add_argument("--from-json", nargs="+", metavar="JSON", help="append the rows of earlier results and exit")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config overrides for every run: train.padding_free=true ...")
    return ap


def run(args) -> int:
    if args.child:  # one measured run, in its own process (rule 2: unsloth first on its backend)
        spec = json.loads(Path(args.child).read_text())
        boot.ml_stack(spec["config"]["model"]["backend"])
        from ..bench.measure import child

        return child(args.child)
    from ..bench.results import append_row

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
    from ..bench.harness import bench  # the parent only builds the model; each run is a child process

    bench(args)
    return 0


def main(argv=None, prog: str = PROG) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)

    def go(args, _cfg):
        args.argv = argv
        return run(args)

    return boot.run_command(parser, go, argv)
