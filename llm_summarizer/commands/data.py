"""Show what training would see: llm-summarizer data --config NAME_OR_FILE [key=value ...]

    llm-summarizer data --config demo
    llm-summarizer data --config demo --output /tmp/processed --examples 2
    llm-summarizer data --config my.yaml model.max_seq_length=512

Sizes per split, rows dropped and documents truncated by reason (with the first row numbers), token
statistics and a histogram, and rendered examples with the loss-carrying tokens in [[...]]; --output
writes the processed splits as JSONL with data_stats.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import boot

PROG = "llm-summarizer data"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = boot.parser(prog, __doc__)
    ap.add_argument("--config", required=True, help="a ready config by name (demo, ...) or a YAML file")
    ap.add_argument("--output", help="write processed splits as JSONL to this directory")
    ap.add_argument("--examples", type=int, default=1, help="rendered examples to show")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.max_seq_length=512")
    return ap


def run(args, cfg) -> int:
    boot.ml_stack(cfg.model.backend)
    from ..data.preview import preview_text, write_processed
    from ..data.rows import load_raw_splits
    from ..data.tokenize import prepare
    from ..models.loading import load_tokenizer

    raw = load_raw_splits(cfg)
    tokenizer = load_tokenizer(cfg, raw)
    prepared = prepare(cfg, tokenizer, raw)
    print(preview_text(prepared, tokenizer, args.examples))
    if args.output:
        for p in write_processed(prepared, Path(args.output)):
            print(f"wrote {p}")
    return 0


def main(argv=None, prog: str = PROG) -> int:
    return boot.run_command(build_parser(prog), run, argv)
