"""Score any predictions file with the evaluation's ROUGE protocol and intervals: llm-summarizer score FILE

    llm-summarizer score predictions.jsonl                           # columns prediction + reference
    llm-summarizer score outputs.csv --prediction-column summary --reference-column gold
    llm-summarizer score ours.jsonl --base theirs.jsonl              # paired differences, same references
    llm-summarizer score preds.jsonl --tokenizer chars --output scores.json

FILE is JSONL, JSON (a list of objects), CSV, TSV or parquet, one row per example. The scores are those
`evaluate` reports (ROUGE-1/2/L/Lsum F1 x 100 with bootstrap 95% intervals, the same tokenizer choice and
sentence split), so systems trained elsewhere compare with ours on equal terms. With --base, rows are matched
by the id column when both files have it, else by position, and must share their references.

When the file has the documents (a 'document' column, or --document-column; evaluate's predictions.jsonl has
them), each summary is also measured against its document, as evaluate does: extractive fragment coverage,
density and compression, novel n-grams, repeated trigrams, numbers and name-like words not in the document,
lead copy, length against the reference (and the share cut by max_new_tokens when a hit_max_new_tokens column
says so), with the references' own values beside them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DataError, UserError
from . import boot

PROG = "llm-summarizer score"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = boot.parser(prog, __doc__)
    ap.add_argument("file", help="the predictions file (JSONL, JSON, CSV, TSV or parquet)")
    ap.add_argument("--base", help="a second predictions file of the same examples: paired differences FILE - BASE")
    ap.add_argument("--prediction-column", default="prediction", help="default: prediction")
    ap.add_argument("--reference-column", default="reference", help="default: reference")
    ap.add_argument("--id-column", default="id", help="matches rows with --base when both files have it (default id)")
    ap.add_argument(
        "--document-column",
        help="the documents, for the statistics of each summary against its "
        "document (default: 'document' when the file has it)",
    )
    ap.add_argument(
        "--tokenizer",
        default="auto",
        choices=["auto", "default", "unicode", "chars"],
        help="ROUGE tokens (as eval.rouge_tokenizer; default auto: rouge-score's for ASCII references)",
    )
    ap.add_argument(
        "--lsum-split",
        default="regex",
        choices=["regex", "punkt", "newline"],
        help="ROUGE-Lsum sentence split (as eval.rouge_lsum_split; default regex)",
    )
    ap.add_argument("--bootstrap-samples", type=int, default=1000, help="resamples for the intervals (default 1000)")
    ap.add_argument("--seed", type=int, default=1234, help="bootstrap seed (default 1234)")
    ap.add_argument("--output", help="write the scores and the protocol to this JSON file")
    return ap


def read_predictions(path: str, args, base: bool = False) -> list[dict]:
    """Rows as {id, reference, prediction, document, hit_max_new_tokens}; a missing column or a non-text value names
    the file and row. A --base file may leave the documents out (the file's own are the same examples')."""
    # after the arguments are checked: the readers load only for a valid command
    from ..data.readers import read_file

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such file; give a JSONL, JSON, CSV, TSV or parquet predictions file")
    rows = read_file(p)
    if not rows:
        raise DataError(f"{path}: no rows")
    pc, rc, ic = args.prediction_column, args.reference_column, args.id_column
    dc = args.document_column or "document"
    if dc not in rows[0] and (base or not args.document_column):
        dc = None
    out = []
    for i, row in enumerate(rows, 1):
        for col in (pc, rc):
            if col not in row:
                cols = ", ".join(map(str, row)) or "none"
                raise DataError(
                    f"{path} row {i}: no column '{col}' (columns: {cols}); name the right one with "
                    f"--{'prediction' if col == pc else 'reference'}-column"
                )
        pred, ref = row[pc], row[rc]
        pred = "" if pred is None else pred
        if not isinstance(pred, str) or not isinstance(ref, str):
            bad = pc if not isinstance(pred, str) else rc
            raise DataError(f"{path} row {i}: column '{bad}' is {type(row[bad]).__name__}, not text")
        if not ref.strip():
            raise DataError(f"{path} row {i}: the reference ('{rc}') is empty; ROUGE needs a reference per row")
        doc = None
        if dc is not None:
            doc = row.get(dc)
            if not isinstance(doc, str):
                what = f"no column '{dc}'" if dc not in row else f"column '{dc}' is {type(doc).__name__}, not text"
                raise DataError(
                    f"{path} row {i}: {what}; every row needs its document for the statistics against "
                    f"it (name the column with --document-column)"
                )
        hit = row.get("hit_max_new_tokens")
        out.append(
            {
                "id": row.get(ic),
                "reference": ref,
                "prediction": pred,
                "document": doc,
                "hit_max_new_tokens": hit if isinstance(hit, bool) else None,
            }
        )
    return out


def check_unique_ids(rows: list[dict], path: str) -> None:
    """Rows are paired and reported by id: a repeated id (a row scored twice, another never) is refused, naming it."""
    first: dict = {}
    for i, r in enumerate(rows, 1):
        if r["id"] is None:
            continue
        key = str(r["id"])
        if key in first:
            raise DataError(
                f"{path} row {i}: id {key!r} is already row {first[key]}'s; each example needs its own id to be "
                f"paired and reported (make the ids unique, or leave the id column out to pair rows by position)"
            )
        first[key] = i


def pair_with_base(rows: list[dict], base_rows: list[dict], path: str, base_path: str) -> list[dict]:
    check_unique_ids(base_rows, f"--base {base_path}")
    if all(r["id"] is not None for r in rows + base_rows):
        by_id = {str(r["id"]): r for r in base_rows}
        missing = [str(r["id"]) for r in rows if str(r["id"]) not in by_id]
        if missing or len(by_id) != len(rows):
            raise DataError(
                f"--base {base_path}: its ids are not those of {path} (for example "
                f"{(missing or ['(extra rows)'])[0]!r}); both files must hold the same examples"
            )
        paired = [by_id[str(r["id"])] for r in rows]
    elif len(base_rows) != len(rows):
        raise DataError(
            f"--base {base_path}: {len(base_rows)} rows but {path} has {len(rows)}, and without an id "
            f"column in both files rows are matched by position"
        )
    else:
        paired = base_rows
    for i, (a, b) in enumerate(zip(rows, paired), 1):
        if a["reference"].strip() != b["reference"].strip():
            raise DataError(
                f"--base {base_path}: the reference of row {i} (id {a['id']!r}) differs from {path}'s; "
                f"paired differences need the same examples"
            )
    return paired


def summary_statistics(rows: list[dict], tokenizer: str, documents: list = None) -> list[dict]:
    """The statistics of each prediction against its document (the row's own, else `documents`' at its position),
    reference and generation flag (diagnostics.py)."""
    # after the arguments are checked: the scorers load only for a valid command
    from ..evaluation import diagnostics

    docs = [
        r["document"] if r["document"] is not None else (documents[i] if documents else None)
        for i, r in enumerate(rows)
    ]
    return diagnostics.corpus(
        [r["prediction"] for r in rows],
        docs,
        [r["reference"] for r in rows],
        [r["hit_max_new_tokens"] for r in rows],
        tokenizer,
    )


def _fmt(block: dict, keys) -> str:
    return "  ".join(
        f"{k} {100 * block[k]['f1']:.2f} [{100 * block[k]['ci95'][0]:.2f}, {100 * block[k]['ci95'][1]:.2f}]"
        for k in keys
    )


def run(args, _cfg) -> int:
    if args.bootstrap_samples < 100:
        raise UserError(f"--bootstrap-samples {args.bootstrap_samples}: use at least 100")
    # after the arguments are checked: the scorers load only for a valid command
    from ..evaluation import diagnostics
    from ..evaluation.bootstrap import (
        block_means,
        diagnostics_block,
        paired_diagnostics,
        paired_difference,
        score_block,
    )
    from ..evaluation.scoring import protocol_for, warn_empty_references
    from ..files import write_json
    from ..metric_names import ROUGE_KEYS

    if args.output:
        from ..paths import Place, check_places  # no ML imports: checked before anything is read

        check_places([Place("--output", Path(args.output), "file")], [("FILE", args.file), ("--base", args.base)])
    rows = read_predictions(args.file, args)
    check_unique_ids(rows, args.file)
    refs = [r["reference"] for r in rows]
    protocol = protocol_for(refs, args.tokenizer, args.lsum_split)
    warn_empty_references(refs, protocol, "")
    results = {"model": score_block(rows, args.bootstrap_samples, args.seed, protocol)}
    for k in ("generated_tokens_mean", "hit_max_new_tokens_share", "truncated_input_share", "throughput"):
        results["model"].pop(k, None)  # a predictions file says nothing of generation
    if args.base:
        base_rows = pair_with_base(rows, read_predictions(args.base, args, base=True), args.file, args.base)
        results["base"] = score_block(base_rows, args.bootstrap_samples, args.seed, protocol)
        for k in ("generated_tokens_mean", "hit_max_new_tokens_share", "truncated_input_share", "throughput"):
            results["base"].pop(k, None)
        results["file_minus_base"] = paired_difference(rows, base_rows, args.bootstrap_samples, args.seed, protocol)
    # each summary against its document (and the references' own values), as evaluate computes them
    per = {"model": summary_statistics(rows, protocol.tokenizer)}
    if args.base:
        # the same examples: a base file without documents is measured against the file's
        per["base"] = summary_statistics(base_rows, protocol.tokenizer, [r["document"] for r in rows])
    for name, p in per.items():
        results[name]["diagnostics"] = diagnostics_block(p, args.bootstrap_samples, args.seed)
    if args.base:
        results["diagnostics_file_minus_base"] = paired_diagnostics(
            per["model"], per["base"], args.bootstrap_samples, args.seed
        )
    has_documents = all(r["document"] is not None for r in rows)
    if has_documents:
        refs_per = diagnostics.corpus(refs, [r["document"] for r in rows], tokenizer=protocol.tokenizer)
        results["references"] = {"diagnostics": diagnostics_block(refs_per, args.bootstrap_samples, args.seed)}
    proto = {
        **protocol.describe(),
        "examples": len(rows),
        "diagnostics": diagnostics.protocol(protocol.tokenizer),
        "reference": f"the '{args.reference_column}' column (one reference per example)",
        "bootstrap": {
            "resamples": args.bootstrap_samples,
            "seed": args.seed,
            "interval": "95% percentile interval of the mean over resampled examples",
            **({"paired": "file, base and their difference use the same resampled examples"} if args.base else {}),
        },
    }
    print(
        f"\n== llm_summarizer: ROUGE of {args.file}, {len(rows)} examples, F1 x 100 [95% CI], "
        f"tokenizer {protocol.tokenizer}, Lsum split {protocol.lsum_split}"
    )
    print(f"   file:        {_fmt(results['model'], ROUGE_KEYS)}")
    if args.base:
        d = results["file_minus_base"]
        print(f"   base:        {_fmt(results['base'], ROUGE_KEYS)}")
        print(
            "   file - base: "
            + "  ".join(
                f"{k} {100 * d[k]['diff']:+.2f} [{100 * d[k]['ci95'][0]:+.2f}, {100 * d[k]['ci95'][1]:+.2f}]"
                for k in ROUGE_KEYS
            )
        )
    lw = results["model"]["lengths_words"]
    print(
        f"   words per summary: {lw['prediction'].get('mean')} (references {lw['reference'].get('mean')})"
        + (
            f"; empty predictions: {results['model']['empty_predictions']}"
            if results["model"]["empty_predictions"]
            else ""
        )
    )
    print(
        "   each summary against its document (mean per summary"
        + ("; file - base: paired bootstrap 95% interval):" if args.base else "):")
    )
    for line in diagnostics.lines(
        {
            "references": block_means((results.get("references") or {}).get("diagnostics")),
            "file": block_means(results["model"]["diagnostics"]),
            "base": block_means((results.get("base") or {}).get("diagnostics")),
        },
        results.get("diagnostics_file_minus_base"),
        "file - base",
    ):
        print(line)
    if not has_documents:
        print(
            "   (no document column: the statistics against the document are left out; name the column with "
            "--document-column)"
        )
    if args.output:
        write_json(Path(args.output), {"file": args.file, "base": args.base, "results": results, "protocol": proto})
        print(f"   wrote: {args.output}")
    return 0


def main(argv=None, prog: str = PROG) -> int:
    return boot.run_command(build_parser(prog), run, argv)
