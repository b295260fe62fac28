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
    from ..config import EvalSection  # the defaults live in the schema (pydantic only: no ML imports)

    d = EvalSection()
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
        default=d.rouge_tokenizer,
        choices=["auto", "default", "unicode", "chars"],
        help=f"ROUGE tokens (as eval.rouge_tokenizer; default {d.rouge_tokenizer}: rouge-score's for ASCII references)",
    )
    ap.add_argument(
        "--lsum-split",
        default=d.rouge_lsum_split,
        choices=["regex", "punkt", "newline"],
        help=f"ROUGE-Lsum sentence split (as eval.rouge_lsum_split; default {d.rouge_lsum_split})",
    )
    ap.add_argument(
        "--bootstrap-samples",
        type=int,
        default=d.bootstrap_samples,
        help=f"resamples for the intervals (default {d.bootstrap_samples})",
    )
    ap.add_argument("--seed", type=int, default=d.bootstrap_seed, help=f"bootstrap seed (default {d.bootstrap_seed})")
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


def run(args, _cfg) -> int:
    if args.bootstrap_samples < 100:
        raise UserError(f"--bootstrap-samples {args.bootstrap_samples}: use at least 100")
    # after the arguments are checked: the scorers load only for a valid command
    from ..evaluation.scores import ScoreSettings, score_lines, score_predictions, scoring_protocol, statistics_lines
    from ..files import write_json

    if args.output:
        from ..paths import Place, check_places  # no ML imports: checked before anything is read

        check_places([Place("--output", Path(args.output), "file")], [("FILE", args.file), ("--base", args.base)])
    rows = read_predictions(args.file, args)
    check_unique_ids(rows, args.file)
    base_rows = None
    if args.base:
        base_rows = pair_with_base(rows, read_predictions(args.base, args, base=True), args.file, args.base)
    settings = ScoreSettings(args.tokenizer, args.lsum_split, args.bootstrap_samples, args.seed)
    scored = score_predictions(rows, settings, base_rows, difference="file_minus_base", generated=False)
    results, protocol = scored.results, scored.protocol
    proto = scoring_protocol(
        scored,
        settings,
        f"the '{args.reference_column}' column (one reference per example)",
        "file, base and their difference use the same resampled examples" if args.base else "",
    )
    print(
        f"\n== llm_summarizer: scores of {args.file}, {len(rows)} examples, x 100 [95% CI], "
        f"tokenizer {protocol.tokenizer}, Lsum split {protocol.lsum_split}"
    )
    for line in score_lines(results, ("file", "base"), "file_minus_base"):
        print(line)
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
    for line in statistics_lines(results, ("file", "base"), "file_minus_base", base_first=False):
        print(line)
    if "references" not in results:
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
