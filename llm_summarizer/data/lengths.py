"""How long the documents and summaries are against the token budget, and what each truncation policy would cost.

`llm-summarizer data` prints it per split; training logs one line of it for the train split. Lengths are in the
model's tokens, encoded as the prompt encodes them (the document alone; the summary with its end-of-turn and
EOS as the completion). The budget of a training example is model.max_seq_length minus the prompt's own tokens
and the example's completion; at generation it is max_seq_length minus the prompt and max_new_tokens.
"""

from __future__ import annotations

from typing import Optional

from ..stats import percentile
from .chunking import split_windows, token_starts
from .tokenize import arrow_column, token_lengths

PERCENTILES = (50, 90, 95, 99)  # in percent; stats.percentile (the rule the generation budget uses) takes q / 100


def _spread(values: list[int]) -> dict:
    return {
        "mean": round(sum(values) / len(values), 1) if values else 0,
        **{f"p{q}": percentile(values, q / 100, 0) for q in PERCENTILES},
        "max": max(values, default=0),
    }


def length_report(
    formatter, rows: list[dict], max_new_tokens: Optional[int] = None, chunk_overlap: int = 0, window_formatter=None
) -> dict:
    """Token lengths of `rows` ({document, summary}) against `formatter`'s budget: percentiles, the rows and tokens
    each truncation policy cuts, the max_seq_length that fits 95% of the examples whole, and (given
    max_new_tokens) the documents over the generation budget and the windows chunking would use (cut at
    `window_formatter`'s budget: the window chunking reads, when longer than the training one)."""
    docs = formatter._enc_many([r["document"] for r in rows])
    doc_tokens = [len(d) for d in docs]
    # the completion as training encodes it (Formatter.examples), in one batched call
    comp = [
        len(formatter._with_one_eos(c))
        for c in formatter._enc_many([formatter._summary_text(r["summary"]) for r in rows])
    ]
    rooms = [formatter.doc_budget(c) for c in comp]
    over = [(d, room) for d, room in zip(doc_tokens, rooms) if room >= 1 and d > room]
    no_room = sum(1 for room in rooms if room < 1)
    lost = sum(d - room for d, room in over)
    n = len(rows)
    out = _budget_report(formatter, n, doc_tokens, comp, len(over), lost, sum(d for d, _ in over), no_room)
    out["policies"] = {
        "head": f"keeps the first tokens of {len(over)} document(s); {lost} tokens cut",
        "head_tail": f"keeps both ends of {len(over)} document(s); {lost} tokens cut from the middle",
        "drop": f"drops {len(over)} row(s) ({100 * len(over) / n if n else 0:.1f}%)",
    }
    if no_room:
        out["policies"]["drop"] += f"; all policies drop {no_room} row(s) whose summary alone does not fit"
    if max_new_tokens:
        budget = formatter.doc_budget(max_new_tokens)
        longer = [i for i, d in enumerate(doc_tokens) if d > budget]
        gen = {
            "max_new_tokens": max_new_tokens,
            "document_budget": budget,
            "over_budget": len(longer),
            "share": round(len(longer) / n, 4) if n else 0.0,
        }
        window = (window_formatter or formatter).doc_budget(max_new_tokens)
        if window >= 1 and longer:
            windows = []
            for i in longer:
                text = rows[i]["document"]
                # windows from the document's own token starts; a tokenizer without offsets: counted from the ids
                starts = _starts(formatter, text, len(docs[i]))
                windows.append(len(split_windows(text, starts, window, chunk_overlap)) if len(starts) > window else 1)
            gen["chunk_windows"] = _spread(windows)
            gen["window_tokens"] = window
        out["generation"] = gen
    return out


def prepared_report(formatter, dataset, stats) -> dict:
    """The training half of `length_report` from a tokenized split (data.tokenize: its prompt lengths and
    statuses), re-encoding only the documents that were cut: what training logs without a second pass over the
    data. Rows the policy dropped are counted, not measured."""
    status = arrow_column(dataset, "status").to_pylist()
    prompt = arrow_column(dataset, "prompt_len").to_pylist()
    total = token_lengths(dataset)
    template = formatter.template_tokens
    comp = [t - p for t, p in zip(total, prompt)]
    cut = [i for i, st in enumerate(status) if st == "truncated"]
    full = dict(zip(cut, (len(d) for d in formatter._enc_many(dataset.select(cut)["document"])))) if cut else {}
    doc_tokens = [full.get(i, p - template) for i, p in enumerate(prompt)]
    rooms = [formatter.doc_budget(c) for c in comp]
    lost = sum(doc_tokens[i] - rooms[i] for i in cut)
    n = len(status) + sum(stats.dropped.get(k, 0) for k in ("document_too_long", "summary_too_long"))
    over = len(cut) + stats.dropped.get("document_too_long", 0)
    too_long = stats.dropped.get("summary_too_long", 0)
    return _budget_report(formatter, n, doc_tokens, comp, over, lost, sum(doc_tokens[i] for i in cut), too_long)


def _budget_report(
    formatter, n: int, doc_tokens: list[int], comp: list[int], over: int, lost: int, their_tokens: int, too_long: int
) -> dict:
    """The part both reports share: `n` rows, the measured documents' and completions' token lengths, `over` rows
    over the budget losing `lost` of their `their_tokens` document tokens, `too_long` summaries that alone do not
    fit."""
    template = formatter.template_tokens
    return {
        "rows": n,
        "max_seq_length": formatter.max_seq_length,
        "prompt_tokens": template,
        "document_tokens": _spread(doc_tokens),
        "summary_tokens": _spread(comp),
        "over_budget": {
            "rows": over,
            "share": round(over / n, 4) if n else 0.0,
            "tokens_lost": lost,
            "share_of_their_tokens": round(lost / their_tokens, 4) if their_tokens else 0.0,
        },
        "summary_too_long": too_long,
        "fit_95": percentile([template + d + c for d, c in zip(doc_tokens, comp)], 0.95, 0),
    }


def _starts(formatter, text: str, n: int) -> list[int]:
    starts = token_starts(formatter.tok, text)
    return starts if len(starts) == n else [round(i * len(text) / n) for i in range(n)]


def length_lines(role: str, r: dict) -> list[str]:
    """The report for people (`llm-summarizer data`)."""
    d, s, o = r["document_tokens"], r["summary_tokens"], r["over_budget"]
    pct = ", ".join(f"p{q} {d[f'p{q}']}" for q in PERCENTILES)
    lines = [
        f"== {role}: token lengths against the budget (model.max_seq_length {r['max_seq_length']}, the prompt "
        f"{r['prompt_tokens']} tokens)",
        f"   documents: mean {d['mean']}, {pct}, max {d['max']}",
        f"   summaries (completion incl. end of turn): mean {s['mean']}, p50 {s['p50']}, p95 {s['p95']}, "
        f"max {s['max']}",
        f"   over the budget in training: {o['rows']} of {r['rows']} ({100 * o['share']:.1f}%), "
        f"{o['tokens_lost']} tokens cut ({100 * o['share_of_their_tokens']:.1f}% of theirs)",
    ]
    lines += [f"     data.truncation={k}: {v}" for k, v in r["policies"].items()]
    lines.append(f"   model.max_seq_length={r['fit_95']} would fit 95% of the examples whole")
    g = r.get("generation")
    if g:
        line = (
            f"   at generation (max_new_tokens {g['max_new_tokens']}, {g['document_budget']} document tokens): "
            f"{g['over_budget']} document(s) over ({100 * g['share']:.1f}%)"
        )
        if "chunk_windows" in g:
            w = g["chunk_windows"]
            line += (
                f"; eval.long_documents=chunk reads them in {w['mean']} windows of {g['window_tokens']} document "
                f"tokens on average (max {w['max']})"
            )
        lines.append(line)
    return lines


def length_line(role: str, r: dict) -> str:
    """The same in one line (training's log)."""
    d, o = r["document_tokens"], r["over_budget"]
    return (
        f"data.{role} lengths: documents p50 {d['p50']} / p95 {d['p95']} / max {d['max']} tokens, summaries p95 "
        f"{r['summary_tokens']['p95']}; {o['rows']} of {r['rows']} ({100 * o['share']:.1f}%) over "
        f"model.max_seq_length={r['max_seq_length']}, {o['tokens_lost']} tokens cut "
        f"({100 * o['share_of_their_tokens']:.1f}% of theirs); max_seq_length {r['fit_95']} would fit 95% whole"
    )
