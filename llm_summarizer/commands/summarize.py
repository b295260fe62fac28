"""Summarize documents with a fine-tuned model: a file, a directory, a JSONL/CSV column, or standard input.

    llm-summarizer summarize --model fine_tuned/demo article.txt
    llm-summarizer summarize --model fine_tuned/demo reports/                # every *.txt and *.md in it
    llm-summarizer summarize --model fine_tuned/demo news.jsonl --column document --output summaries.jsonl
    cat article.txt | llm-summarizer summarize --model fine_tuned/demo
    llm-summarizer summarize --model fine_tuned/demo article.txt eval.num_beams=4 --max-new-tokens 200

Tables (.jsonl .json .csv .tsv .parquet) give one summary per row, from --column (found automatically
when it is one of the usual names: document, text, article, dialogue, ...). Other files are read as
plain UTF-8 text. A document longer than the model's token budget (model.max_seq_length minus the prompt
and max_new_tokens) is, by eval.long_documents:
  chunk (the default): cut into windows as long as the model reads (its context, at most
    eval.max_window_tokens with prompt and summary) at line and sentence ends (eval.chunk_overlap tokens
    repeated); by eval.chunk_strategy, map_reduce (each window summarized, then the joined summaries merged
    under a prompt of their own, in at most eval.max_merge_rounds rounds, until one summary is left) or refine
    (each next window updates the summary so far); repeated sentences are dropped (eval.dedup_sentences). Before
    it starts, the log says what it will cost (windows, generations, tokens to read); after, what it took. The
    JSON output carries the tree (`chunks`: each window's span and summary, which summaries each merge or update
    read) and `method`; progress counts windows and merges.
  truncate: cut by the same rule as in training (data.truncation), with a warning.
    llm-summarizer summarize --model fine_tuned/demo meeting.txt --format jsonl
    llm-summarizer summarize --model fine_tuned/demo meeting.txt eval.long_documents=truncate
Output: the summary text (one input), `== name` blocks (several), or JSON lines with --format jsonl or an
--output ending in .jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional

from ..errors import UserError
from . import boot

log = logging.getLogger("llm_summarizer.summarize")

PROG = "llm-summarizer summarize"

_OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+=.*", re.S)


def _warn_truncated(loaded, items: list, gens, max_new_tokens: int, shown: list) -> None:
    """Say which documents were cut to the token budget, and by how much."""
    f, cfg = loaded.formatter, loaded.cfg
    budget = f.doc_budget(max_new_tokens)
    for it, g in zip(items, gens):
        if not g.truncated_input or g.method == "chunked":  # a chunked one's cut merge round is logged where it happens
            continue
        if len(shown) < 5:
            n = len(loaded.tokenizer(it.text, add_special_tokens=False)["input_ids"])
            log.warning(
                "%s: %d tokens, cut to %d (data.truncation=%s: model.max_seq_length=%d minus %d prompt "
                "tokens and max_new_tokens=%d, the rule used in training)",
                it.name,
                n,
                max(1, budget),
                cfg.data.truncation,
                cfg.model.max_seq_length,
                f.template_tokens,
                max_new_tokens,
            )
        shown.append(it.name)


class _Progress:
    """Progress by generation: a whole document, a window, or a merge round's input; a new bar whenever merge
    rounds add to the count. Where no bar is shown (a log, a pipe) and a long document was planned, a log line at
    most every `every_s` seconds: generations so far of the planned ones, seconds each, and the time left at that
    rate."""

    def __init__(self, bar, planned: Optional[int] = None, exact: bool = False, every_s: float = 30.0, clock=None):
        from ..progress import enabled  # with bar, where summarizing starts (the CLI parses before it)

        self.bar, self.shown, self.total = bar, None, None
        self.planned, self.exact, self.every_s = planned, exact, every_s
        self.logs = bool(planned) and not enabled()
        self.clock = clock or time.monotonic
        self.started = self.said = self.clock()
        self.before, self.done = 0, 0  # generations of the earlier groups of documents, of this one

    def group(self) -> None:
        """The next group of documents starts: its counts go on from the earlier groups'."""
        self.before, self.done = self.before + self.done, 0

    def __call__(self, done: int, total: int) -> None:
        if total != self.total:
            self.close()
            self.shown, self.total = self.bar(total, "summarize: documents, windows and merges", "summary"), total
        self.shown.update_to(done)
        self.done = done
        now = self.clock()
        if self.logs and now - self.said >= self.every_s:
            self.said = now
            made = self.before + done
            each = (now - self.started) / max(1, made)
            left = max(0, self.planned - made) * each
            log.info(
                "summarize: %d of %s %d generations in %.0f s (%.1f s each): %s %s left",
                made,
                "exactly" if self.exact else "at most",
                self.planned,
                now - self.started,
                each,
                "about" if self.exact else "at most about",
                _duration(left),
            )

    def close(self) -> None:
        if self.shown is not None:
            self.shown.close()
        self.shown, self.total = None, None


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def summarize_inputs(args, inputs: list[str], overrides: list[str]) -> int:
    from ..data.documents import DEFAULT_GLOBS, collect_items  # datasets and pyarrow: no torch, no transformers

    # 1. What to summarize (read and checked before the model is loaded).
    items = collect_items(inputs, args.column, tuple(args.glob or DEFAULT_GLOBS))
    if args.output:
        from ..paths import Place, check_places  # no ML imports: checked before the model loads

        check_places(
            [Place("--output", Path(args.output), "file")],
            [("--model", args.model), *((f"input {i}", i) for i in inputs)],
        )
    if args.max_new_tokens:
        overrides = overrides + [f"eval.max_new_tokens={args.max_new_tokens}"]
    boot.ml_stack(boot.saved_model_backend(args.model, args.backend))
    # after the arguments are checked: the ML stack loads only for a valid command
    from ..files import atomic_file
    from ..models.generation import check_documents, default_max_new_tokens, summarize_texts
    from ..models.generation_record import GenerationRecord
    from ..models.loading import load_for_generation
    from ..progress import bar

    # 2. The model, with the prompt format and token budget it was trained with.
    loaded = load_for_generation(args.model, args.backend, args.base, overrides)
    max_new, max_new_source = default_max_new_tokens(loaded)
    cost = check_documents(loaded, [it.text for it in items], max_new, [it.name for it in items])  # before output
    if cost is not None and cost.chunked:
        log.info("summarize: %s", cost.describe())
    started = time.monotonic()
    generated: list = []
    record = GenerationRecord.made(
        loaded.cfg.eval, loaded.backend, max_new, max_new_source, loaded.formatter, loaded.tokenizer
    )
    log.info("generation: %s", record.describe())
    fmt = args.format or ("jsonl" if args.output and args.output.endswith(".jsonl") else "text")
    out_path = Path(args.output) if args.output else None
    shown: list = []
    group = loaded.cfg.eval.batch_size * 8
    # --output appears whole once every summary is written (an interrupted run leaves what was there before)
    with atomic_file(out_path) if out_path else contextlib.nullcontext(sys.stdout) as sink:
        # 3. Generate in groups of documents, writing as they finish.
        chunked = cost is not None and cost.chunked
        shown_progress = _Progress(bar, cost.generations if chunked else None, chunked and cost.exact)
        for start in range(0, len(items), group):
            shown_progress.group()
            part = items[start : start + group]
            gens = summarize_texts(
                loaded, [it.text for it in part], max_new, names=[it.name for it in part], progress=shown_progress
            )
            _warn_truncated(loaded, part, gens, max_new, shown)
            generated.extend(gens)
            for it, g in zip(part, gens):
                if g.tree is not None:
                    log.info("%s: %s", it.name, g.tree["how"])
                if fmt == "jsonl":
                    row = {
                        "source": it.source,
                        **({"id": it.id} if it.id is not None else {}),
                        "summary": g.text,
                        "method": g.method,
                        "truncated_input": g.truncated_input,
                        "hit_max_new_tokens": g.hit_max,
                    }
                    if g.tree is not None:
                        row["chunks"] = g.tree
                    sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                elif len(items) == 1:
                    sink.write(g.text + "\n")
                else:
                    sink.write(f"== {it.name}\n{g.text}\n\n")
            sink.flush()
        shown_progress.close()
    if cost is not None and cost.chunked:
        made = sum(g.tree["generations"] if g.tree else 1 for g in generated)
        seconds = time.monotonic() - started
        log.info(
            "summarize: %d generations in %.0f s (%.1f s each; planned %s %d)",
            made,
            seconds,
            seconds / max(1, made),
            "exactly" if cost.exact else "at most",
            cost.generations,
        )
    if out_path:
        log.info("wrote %d summaries to %s", len(items), out_path)
    if len(shown) > 5:
        log.warning("%d of %d documents were truncated to the token budget in all", len(shown), len(items))
    return 0


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = boot.parser(prog, __doc__)
    ap.add_argument("--model", required=True, help="saved model directory (LoRA adapter or merged model)")
    ap.add_argument(
        "items",
        nargs="*",
        metavar="INPUT or key=value",
        help="files, directories, '-' for standard input (the default); and config overrides",
    )
    ap.add_argument("--column", help="document column of JSONL/CSV/TSV/parquet inputs")
    ap.add_argument("--glob", action="append", help="file patterns for directories (default *.txt and *.md)")
    ap.add_argument("--output", help="write here instead of standard output (JSON lines when it ends in .jsonl)")
    ap.add_argument("--format", choices=["text", "jsonl"], help="output format (default text)")
    ap.add_argument("--max-new-tokens", type=int, help="longest summary in tokens (default: as in training)")
    ap.add_argument("--backend", choices=["unsloth", "transformers"], help="default: the backend of the model's config")
    ap.add_argument("--base", help="base model of an adapter, when it is not where adapter_config.json says")
    return ap


def run(args, _cfg) -> int:
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    overrides = [i for i in args.items if _OVERRIDE.fullmatch(i) and not os.path.exists(i)]
    inputs = [i for i in args.items if i not in overrides]
    return summarize_inputs(args, inputs, overrides)


def main(argv=None, prog: str = PROG) -> int:
    return boot.run_command(build_parser(prog), run, argv)
