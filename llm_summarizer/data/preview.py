"""What training would see, for people: split sizes, drops and truncations by reason, token-length
histograms, and rendered examples with the loss-carrying tokens in [[...]] (`llm-summarizer data`; the command
adds what kind of summaries the references are, from evaluation/diagnostics.py).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional

from .tokenize import PreparedData


def _histogram(values: list[int], bins: int = 8, width: int = 30) -> list[str]:
    if not values:
        return ["    (no rows)"]
    lo, hi = min(values), max(values)
    step = max(1, -(-(hi - lo + 1) // bins))
    counts = Counter((v - lo) // step for v in values)
    top = max(counts.values())
    lines = []
    for b in range(0, (hi - lo) // step + 1):
        c = counts.get(b, 0)
        lines.append(
            f"    {lo + b * step:>6}-{lo + (b + 1) * step - 1:<6} "
            f"{'#' * max(1 if c else 0, round(c / top * width)):<{width}} {c}"
        )
    return lines


def render_marked(tokenizer, input_ids: list[int], completion_mask: list[int]) -> str:
    """The example as text, with the loss-carrying tokens inside [[...]]."""
    out, cur, in_loss = [], [], False
    for tid, m in zip(input_ids, completion_mask):
        if bool(m) != in_loss and cur:
            text = tokenizer.decode(cur, skip_special_tokens=False)
            out.append(f"[[{text}]]" if in_loss else text)
            cur = []
        in_loss = bool(m)
        cur.append(tid)
    if cur:
        text = tokenizer.decode(cur, skip_special_tokens=False)
        out.append(f"[[{text}]]" if in_loss else text)
    return "".join(out)


def preview_text(prepared: PreparedData, tokenizer, n_examples: int = 1) -> str:
    lines = []
    for role, st in prepared.stats.items():
        s = st.summary()
        lines.append(f"== {role}: {s['rows']} rows (read {s['rows_read']}) from {s['source']}")
        if s["dropped"]:
            for reason, n in s["dropped"].items():
                lines.append(
                    f"   dropped {n} row(s): {reason.replace('_', ' ')} "
                    f"(first rows: {s['dropped_first_rows'].get(reason)})"
                )
        lines.append(
            f"   truncated documents: {s['truncated']} (policy {prepared.formatter.data.truncation}, "
            f"max_seq_length {prepared.formatter.max_seq_length})"
        )
        for name, key in (("prompt tokens", "prompt_tokens"), ("summary tokens (incl. EOS)", "summary_tokens")):
            if s[key]:
                lines.append(f"   {name}: " + ", ".join(f"{k} {v}" for k, v in s[key].items()))
        if st.prompt_tokens:
            lines.append("   total tokens per example:")
            lines.extend(_histogram([p + c for p, c in zip(st.prompt_tokens, st.completion_tokens)]))
    train = prepared.splits["train"]
    mode = "chat template" if prepared.formatter.use_chat else "plain text"
    for i in range(min(n_examples, len(train))):
        ex = train[i]
        lines.append(f"\n== example {i} (train, id {ex['id']}; {mode}; loss-carrying tokens in [[...]]):")
        lines.append(render_marked(tokenizer, ex["input_ids"], ex["completion_mask"]))
    return "\n".join(lines)


def write_processed(
    prepared: PreparedData, out_dir: Path, reference_stats: Optional[dict] = None, lengths: Optional[dict] = None
) -> list[Path]:
    """The processed splits as JSONL and data_stats.json (with `reference_stats`, the references' statistics
    against their documents by split, and `lengths`, data.lengths' report by split, when given)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for role, ds in prepared.splits.items():
        p = out_dir / f"{role}.jsonl"
        with open(p, "w", encoding="utf-8") as f:
            for ex in ds:
                f.write(
                    json.dumps(
                        {k: ex[k] for k in ("id", "document", "summary", "input_ids", "completion_mask")},
                        ensure_ascii=False,
                    )
                    + "\n"
                )
        written.append(p)
    stats = prepared.report()
    if reference_stats:
        stats["reference_statistics"] = reference_stats
    if lengths:
        stats["lengths"] = lengths
    (out_dir / "data_stats.json").write_text(json.dumps(stats, indent=2))
    written.append(out_dir / "data_stats.json")
    return written
