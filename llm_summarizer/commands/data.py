"""Show what training would see: llm-summarizer data --config NAME_OR_FILE [key=value ...]

    llm-summarizer data --config demo
    llm-summarizer data --config demo --output /tmp/processed --examples 2
    llm-summarizer data --config my.yaml model.max_seq_length=512

Sizes per split, rows dropped and documents truncated by reason (with the first row numbers), token
statistics and a histogram, the token lengths of documents and summaries against the budget (percentiles,
the rows and tokens each data.truncation policy cuts, the model.max_seq_length that fits 95% of the examples,
the documents over the generation budget and the windows eval.long_documents=chunk would read), rendered
examples with the loss-carrying tokens in [[...]], and what kind of
summaries the references are: each against its document (extractive fragment coverage and density, novel
n-grams, numbers and names not in the document, lead copy; evaluation/diagnostics.py), so you see whether
the data teaches copying or rewriting. --output writes the processed splits as JSONL with data_stats.json.
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
    # after the arguments are checked: tokenizers and datasets load only for a valid command
    from ..data.lengths import length_lines, length_report
    from ..data.preview import preview_text, write_processed
    from ..data.prompt import Formatter
    from ..data.rows import load_raw_splits
    from ..data.tokenize import prepare
    from ..evaluation import diagnostics
    from ..models.generation import derive_max_new_tokens, window_for
    from ..models.loading import load_tokenizer, saved_model_config

    raw = load_raw_splits(cfg)
    tokenizer = load_tokenizer(cfg, raw)
    prepared = prepare(cfg, tokenizer, raw)
    print(preview_text(prepared, tokenizer, args.examples))
    # token lengths against the budget, at training and at generation (the ROUGE pass's max_new_tokens)
    max_new = derive_max_new_tokens(prepared.stats["train"].completion_tokens, cfg.eval)
    # chunking's windows as summarize would cut them: the model's context, capped (eval.max_window_tokens)
    length, _why = window_for(cfg, prepared.formatter.template_tokens, max_new, saved_model_config(cfg), tokenizer)
    window = Formatter(tokenizer, cfg.data, length) if length != prepared.formatter.max_seq_length else None
    lengths = {
        role: length_report(prepared.formatter, split.rows, max_new, cfg.eval.chunk_overlap, window)
        for role, split in raw.items()
    }
    for role, report in lengths.items():
        print("\n" + "\n".join(length_lines(role, report)))
    stats = diagnostics.reference_statistics(
        {role: split.rows for role, split in raw.items()}, cfg.eval.rouge_tokenizer
    )
    print(reference_lines(stats))
    if args.output:
        for p in write_processed(prepared, Path(args.output), stats, lengths):
            print(f"wrote {p}")
    return 0


def reference_lines(stats: dict) -> str:
    # after the arguments are checked
    from ..evaluation import diagnostics

    toks = sorted({s["tokenizer"] for s in stats.values()})
    out = [
        f"\n== the references against their documents (mean per summary; tokens: {', '.join(toks)}): "
        "coverage = share of summary words inside text copied from the document, density = mean length of the "
        "copied fragment each word is in (higher: longer copied pieces), compression = document words per "
        "summary word"
    ]
    out += diagnostics.lines({f"{role} ({s['examples']})": s["means"] for role, s in stats.items()})
    notes = {f"{role}: {k}": v for role, s in stats.items() for k, v in s["notes"].items()}
    if notes:
        out.append("   values missing: " + ", ".join(f"{k} {v}" for k, v in notes.items()))
    return "\n".join(out)


def main(argv=None, prog: str = PROG) -> int:
    return boot.run_command(build_parser(prog), run, argv)
