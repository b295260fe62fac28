"""Benchmark the training path: llm-summarizer bench [--shape S | --model DIR] [--data D] [key=value ...]

See llm_summarizer.bench for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import bench as bench_package  # its __init__ is documentation only
from ..errors import UserError
from . import boot

PROG = "llm-summarizer bench"
BACKENDS = ("unsloth", "transformers")
DOC = bench_package.__doc__



def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = boot.parser(prog, DOC)
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
