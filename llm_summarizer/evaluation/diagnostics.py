"""Beyond ROUGE: how each summary relates to its own document (copying, invention, length, endings).

Pure string statistics, computed per summary against the document it summarizes (and its reference where one
is given), in any language the ROUGE tokenizers handle, offline, in milliseconds. `STATS` below is the one list
of their names: trackers, metrics.json, the reports, the model card, `score`, `data` and the `evaluate` module
all read it.

Tokens: the ROUGE protocol's tokenizer (`eval.rouge_tokenizer`, resolved on the references and recorded in the
protocol: `default`, `unicode` or `chars`; scoring.py) without its Porter stemming: the same split and
lowercasing, each word as written, because a copied span is made of the document's own words ("runs" is not
a copy of "run").

Extractive fragments (Grusky, Naaman and Artzi 2018, "Newsroom", NAACL, Algorithm 1), for document tokens A
and summary tokens S: F(A, S) is built greedily from the start of the summary. At summary position i the
document is scanned from its start; at each document position j where S[i] = A[j] the shared run is extended
as far as both texts agree, the longest run seen so far is kept (a later run of the same length does not
replace it: ties go to the earliest place in the document), and the scan continues after the end of that run
(positions inside it are not tried again). The longest run found becomes a fragment and i moves past it, or
by one token when S[i] is not in the document. Then

    coverage    = sum |f| / |S|         the share of summary tokens inside some copied fragment, in [0, 1]
    density     = sum |f|^2 / |S|       the mean length of the fragment each summary token belongs to;
                                        >= coverage; an exact copy of the document has density |S|
    compression = |A| / |S|             document tokens per summary token

This is the published procedure, not the maximal one: on A = "a a a b", S = "a a b" the scan finds "a a" at
j = 0, skips j = 1 (inside that run) and never sees "a a b"; fragments 2 + 1, density 5/3 (the paper's
numbers are comparable only this way).

The other statistics, per summary:
- novel n-grams (n = 1..4): the share of the summary's n-grams (each occurrence counted) that never occur in
  the document; undefined for a summary shorter than n tokens.
- repeated trigrams: the share of the summary's trigram occurrences that repeat an earlier trigram of the same
  summary (0 = no repetition; a summary looping on one phrase approaches 1).
- unsupported numbers: distinct numbers in the summary that the document does not contain. A number is a run of
  digits not attached to a preceding letter ("Person1", "GPT4" and "COVID19" are names, not numbers), with
  optional thousands separators (a comma followed by exactly three digits) and an optional decimal part; it is
  compared by value as written in decimal: "1,000" = "1000", "3.0" = "3", "3.50" = "3.5", "007" = "7".
  Limits: number words ("three"), spaces as thousands separators ("1 000"), decimal commas ("3,5" reads as 3
  and 5), CJK numerals and unit conversions are not recognised.
- unsupported names: distinct name-like words of the summary absent from the document, where a name-like word
  is one that starts with a capital letter, has at least two characters and does not open a sentence (it is
  neither the first word nor the first after . ! ? : ; or a line break); compared case-insensitively with the
  document's words. A heuristic: it misses names written in lowercase or opening a sentence, and counts
  capitalised common words (German nouns, titles, "Monday"). Summaries without any cased letter (Chinese,
  Japanese, Thai, Arabic, Hebrew, ...) get no value.
- lead copy: 1 when the summary opens with the document's first words (its first LEAD_TOKENS tokens, or all of
  a shorter summary, equal the document's first ones), else 0; the mean is the share of such summaries.
- length ratio: summary tokens / reference tokens (1 = as long as the reference).
- cut by max_new_tokens: 1 when generation stopped at max_new_tokens without an end of turn (the summary was
  cut), 0 when it ended by itself; only where generation recorded it.

An empty summary (no token) or an empty document has no value for the statistics that divide by it (None
here, null in JSON, left out of the means) and a note saying why; nothing divides by zero.
"""

from __future__ import annotations

import re
import statistics
import unicodedata
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .scoring import resolve_tokenizer, word_tokens


@dataclass(frozen=True)
class Stat:
    """One statistic: its key (the same in every file, tracker and table), how people read it, and what its
    mean over summaries is (`mean` of values, or `share` of summaries with a 1)."""

    key: str
    label: str
    short: str
    kind: str = "mean"
    needs_document: bool = True


STATS: tuple[Stat, ...] = (
    Stat("coverage", "extractive fragment coverage (share of summary words copied)", "coverage"),
    Stat("density", "extractive fragment density (mean copied-fragment length per word)", "density"),
    Stat("compression", "compression (document words per summary word)", "compression"),
    Stat("novel_1gram", "novel unigrams (share not in the document)", "novel 1-grams"),
    Stat("novel_2gram", "novel bigrams (share not in the document)", "novel 2-grams"),
    Stat("novel_3gram", "novel trigrams (share not in the document)", "novel 3-grams"),
    Stat("novel_4gram", "novel 4-grams (share not in the document)", "novel 4-grams"),
    Stat("repeated_3gram", "repeated trigrams inside the summary (share)", "repeated 3-grams", needs_document=False),
    Stat("unsupported_numbers", "numbers absent from the document (per summary)", "unsupported numbers"),
    Stat("unsupported_names", "name-like words absent from the document (per summary)", "unsupported names"),
    Stat("lead_copy", "summaries opening with the document's first words (share)", "lead copy", kind="share"),
    Stat(
        "length_ratio",
        "length against the reference (summary / reference words)",
        "length / reference",
        needs_document=False,
    ),
    Stat(
        "cut_by_max_new_tokens",
        "summaries cut by max_new_tokens, no end of turn (share)",
        "cut at max_new_tokens",
        kind="share",
        needs_document=False,
    ),
)
DIAGNOSTIC_KEYS: tuple[str, ...] = tuple(s.key for s in STATS)
BY_KEY = {s.key: s for s in STATS}
NOVEL_NS = (1, 2, 3, 4)
LEAD_TOKENS = 5  # "opens with the document's first words": five tokens, or the whole of a shorter summary

# the end-of-run warnings: "copies much more than the references" = at least this many times their density
COPY_FACTOR = 2.0

EVALUATE_MODULE = Path(__file__).resolve().parent / "summary_metrics"  # evaluate.load(str(EVALUATE_MODULE))

_NUMBER = re.compile(r"(?<![^\W\d_])\d+(?:,\d{3}(?!\d))*(?:\.\d+)?")
_WORD = re.compile(r"[^\W\d_][^\W_]*")
_SENTENCE_BREAK = re.compile(r"[.!?:;。！？\n]")


# -- the fragment algorithm -------------------------------------------------------------------------------------


def fragments(document: Sequence[str], summary: Sequence[str]) -> list[tuple[int, int, int]]:
    """Grusky et al.'s greedy extractive fragments of `summary` in `document` (token lists), as
    (summary start, document start, length), in summary order. The document scan visits only the positions
    holding the summary token (an index), which gives the published loop's result at a fraction of its cost."""
    where: dict[str, list[int]] = {}
    for j, t in enumerate(document):
        where.setdefault(t, []).append(j)
    n_a, n_s = len(document), len(summary)
    out = []
    i = 0
    while i < n_s:
        best, best_len = None, 0
        positions = where.get(summary[i], ())
        k = 0
        next_j = 0  # the scan resumes after the end of the last run (the published loop's j <- j')
        while k < len(positions):
            j = positions[k]
            if j < next_j:
                k = bisect_left(positions, next_j, k)
                continue
            a, b = i, j
            while a < n_s and b < n_a and summary[a] == document[b]:
                a += 1
                b += 1
            if a - i > best_len:
                best, best_len = (i, j, a - i), a - i
            next_j = b
            k += 1
        if best is not None:
            out.append(best)
            i += best_len
        else:
            i += 1
    return out


def fragment_stats(document: Sequence[str], summary: Sequence[str]) -> dict[str, Optional[float]]:
    """coverage, density and compression of token lists (None where a length they divide by is 0)."""
    if not summary or not document:
        return {"coverage": None, "density": None, "compression": None}
    lengths = [n for _, _, n in fragments(document, summary)]
    s = len(summary)
    return {"coverage": sum(lengths) / s, "density": sum(n * n for n in lengths) / s, "compression": len(document) / s}


# -- the other statistics ---------------------------------------------------------------------------------------


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def novel_share(
    document: Sequence[str], summary: Sequence[str], n: int, _doc_set: Optional[set] = None
) -> Optional[float]:
    grams = _ngrams(summary, n)
    if not grams:
        return None
    seen = _doc_set if _doc_set is not None else set(_ngrams(document, n))
    return sum(g not in seen for g in grams) / len(grams)


def repeated_share(summary: Sequence[str], n: int = 3) -> Optional[float]:
    grams = _ngrams(summary, n)
    if not grams:
        return None
    return (len(grams) - len(set(grams))) / len(grams)


def _digits(s: str) -> str:
    return "".join(str(unicodedata.decimal(c)) for c in s)


def numbers(text: str) -> set[str]:
    """The numbers of `text`, by value as written in decimal (the rule in the module docstring)."""
    out = set()
    for m in _NUMBER.finditer(unicodedata.normalize("NFKC", text)):
        whole, _, frac = m.group().replace(",", "").partition(".")
        whole = _digits(whole).lstrip("0") or "0"
        frac = _digits(frac).rstrip("0")
        out.add(f"{whole}.{frac}" if frac else whole)
    return out


def _has_case(text: str) -> bool:
    return any(c.isupper() or c.islower() for c in text if c.isalpha())


def name_like(text: str) -> list[str]:
    """Capitalised words of `text` that do not open a sentence, in order of appearance (the heuristic in the
    module docstring)."""
    text = unicodedata.normalize("NFKC", text)
    out, prev_end = [], None
    for m in _WORD.finditer(text):
        w = m.group()
        opens = prev_end is None or bool(_SENTENCE_BREAK.search(text, prev_end, m.start()))
        prev_end = m.end()
        if not opens and len(w) > 1 and w[0].isupper():
            out.append(w)
    return out


def _document_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(unicodedata.normalize("NFKC", text))}


def lead_copy(document: Sequence[str], summary: Sequence[str]) -> Optional[float]:
    if not summary or not document:
        return None
    k = min(LEAD_TOKENS, len(summary))
    return 1.0 if list(summary[:k]) == list(document[:k]) else 0.0


# -- one summary, many summaries --------------------------------------------------------------------------------


def example(
    summary: str,
    document: Optional[str] = None,
    reference: Optional[str] = None,
    hit_max_new_tokens: Optional[bool] = None,
    tokenizer: str = "default",
) -> dict:
    """Every statistic of one summary against its document (and reference), under a resolved ROUGE tokenizer
    name. Keys: DIAGNOSTIC_KEYS (None where undefined), `unsupported` ({numbers, names}: what was counted) and
    `notes` (why values are missing; empty when none are)."""
    summary = summary or ""
    s_tok = word_tokens(summary, tokenizer)
    out: dict = {k: None for k in DIAGNOSTIC_KEYS}
    notes: list[str] = []
    unsupported = {"numbers": [], "names": []}
    if not s_tok:
        notes.append("empty summary" if not summary.strip() else f"summary has no {tokenizer} tokens")
    if hit_max_new_tokens is not None:
        out["cut_by_max_new_tokens"] = 1.0 if hit_max_new_tokens else 0.0
    if reference is not None and s_tok:
        r_tok = word_tokens(reference, tokenizer)
        if r_tok:
            out["length_ratio"] = len(s_tok) / len(r_tok)
        else:
            notes.append("empty reference")
    if s_tok:
        out["repeated_3gram"] = repeated_share(s_tok, 3)
    if document is not None:
        d_tok = word_tokens(document, tokenizer)
        if not d_tok:
            notes.append("empty document" if not document.strip() else f"document has no {tokenizer} tokens")
        elif s_tok:
            out.update(fragment_stats(d_tok, s_tok))
            for n in NOVEL_NS:
                out[f"novel_{n}gram"] = novel_share(d_tok, s_tok, n)
            out["lead_copy"] = lead_copy(d_tok, s_tok)
            unsupported["numbers"] = sorted(numbers(summary) - numbers(document), key=_number_order)
            out["unsupported_numbers"] = float(len(unsupported["numbers"]))
            if _has_case(summary):
                doc_words = _document_words(document)
                names = list(dict.fromkeys(w for w in name_like(summary) if w.lower() not in doc_words))
                unsupported["names"] = names
                out["unsupported_names"] = float(len(names))
    out["unsupported"] = unsupported
    out["notes"] = notes
    return out


def _number_order(x: str):
    try:
        return (float(x), x)
    except ValueError:
        return (float("inf"), x)


def corpus(
    summaries: Sequence[str],
    documents: Optional[Sequence[Optional[str]]] = None,
    references: Optional[Sequence[Optional[str]]] = None,
    hit_max_new_tokens: Optional[Sequence[Optional[bool]]] = None,
    tokenizer: str = "default",
) -> list[dict]:
    """`example` for each summary (documents, references and the cut flags optional, position by position)."""
    n = len(summaries)
    for name, seq in (("documents", documents), ("references", references), ("hit_max_new_tokens", hit_max_new_tokens)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{n} summaries but {len(seq)} {name}")
    pick = lambda seq, i: None if seq is None else seq[i]  # noqa: E731
    return [
        example(summaries[i], pick(documents, i), pick(references, i), pick(hit_max_new_tokens, i), tokenizer)
        for i in range(n)
    ]


def for_display(
    summary: str, document: str, hit_max_new_tokens: Optional[bool] = None, tokenizer: str = "auto"
) -> dict:
    """One generated summary's statistics for a page or an API answer (`serve` does not show them yet):
    {"tokenizer", "values": {key: number or None}, "shown": {key: text}, "labels": {key: words},
    "unsupported": {"numbers": [...], "names": [...]}, "notes": [...]}. With `auto`, the tokenizer is chosen on
    the document (there is no reference); no reference either, so no length ratio."""
    tok = resolve_tokenizer(tokenizer, [document])
    x = example(summary, document, None, hit_max_new_tokens, tok)
    keys = [k for k in DIAGNOSTIC_KEYS if x[k] is not None]
    return {
        "tokenizer": tok,
        "values": flat(x),
        "shown": {k: fmt(k, x[k]) for k in keys},
        "labels": {k: BY_KEY[k].label for k in keys},
        "unsupported": x["unsupported"],
        "notes": x["notes"],
    }


def values(per: Iterable[dict], key: str) -> list[float]:
    return [p[key] for p in per if p.get(key) is not None]


def means(per: Sequence[dict]) -> dict[str, Optional[float]]:
    """The mean of each statistic over the summaries that have a value (None when none has): for a `share`
    statistic, the share of summaries with a 1."""
    out = {}
    for k in DIAGNOSTIC_KEYS:
        v = values(per, k)
        out[k] = float(statistics.fmean(v)) if v else None
    return out


def note_counts(per: Iterable[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in per:
        for note in p.get("notes") or ():
            counts[note] = counts.get(note, 0) + 1
    return counts


def flat(per_example: dict) -> dict[str, Optional[float]]:
    """The numeric values of one example (for tables and trackers)."""
    return {k: per_example.get(k) for k in DIAGNOSTIC_KEYS}


def reference_statistics(splits: dict[str, list[dict]], tokenizer: str = "auto") -> dict[str, dict]:
    """What kind of summaries the data teaches: each split's references ({document, summary} rows) against their
    documents. {split: {"tokenizer", "examples", "means", "notes"}}; `tokenizer` as eval.rouge_tokenizer (auto
    resolved on each split's references)."""
    out = {}
    for name, rows in splits.items():
        refs = [r["summary"] for r in rows]
        tok = resolve_tokenizer(tokenizer, refs)
        per = corpus(refs, [r["document"] for r in rows], tokenizer=tok)
        out[name] = {"tokenizer": tok, "examples": len(rows), "means": means(per), "notes": note_counts(per)}
    return out


def protocol(tokenizer: str) -> dict:
    """How the statistics were computed, for metrics.json, reports and cards."""
    return {
        "tokens": f"the ROUGE tokenizer ({tokenizer}) without stemming",
        "fragments": "Grusky et al. 2018 (Newsroom) greedy extractive fragments: coverage = sum|f|/|S|, "
        "density = sum|f|^2/|S|, compression = |A|/|S| (A document, S summary, in tokens)",
        "novel_ngrams": "share of the summary's n-gram occurrences (n = 1..4) not in the document",
        "repeated_3gram": "share of the summary's trigram occurrences repeating an earlier one",
        "unsupported_numbers": "distinct numbers (by value: 1,000 = 1000, 3.0 = 3) absent from the document, "
        "per summary",
        "unsupported_names": "distinct capitalised words of 2+ letters not opening a sentence, absent from the "
        "document (case-insensitive), per summary; none for scripts without case",
        "lead_copy": f"the summary's first {LEAD_TOKENS} tokens (all of a shorter one) are the document's first",
        "length_ratio": "summary tokens / reference tokens",
        "cut_by_max_new_tokens": "generation stopped at max_new_tokens without an end of turn",
        "aggregation": "mean over the summaries with a value (empty summaries or documents have none)",
    }


# -- words for people ------------------------------------------------------------------------------------------


def fmt(key: str, value: Optional[float]) -> str:
    """A value as tables show it: shares in percent, the rest with two decimals."""
    if value is None:
        return "n/a"
    st = BY_KEY[key]
    if st.kind == "share" or key.startswith("novel_") or key in ("coverage", "repeated_3gram"):
        return f"{100 * value:.1f}%"
    return f"{value:.2f}"


def warnings(
    final: Optional[dict],
    base: Optional[dict],
    references: Optional[dict],
    name: str = "fine-tuned",
    base_name: str = "base model",
) -> list[str]:
    """What the end of a run says in words: the fine-tuned model copies much more than the references do, or
    states more unsupported numbers than the base model. `final`, `base`, `references`: means by key; `name`: what
    the final model is called (fine-tuned, GRPO), `base_name` the model it started from."""
    final, base, references = final or {}, base or {}, references or {}
    out = []
    fd, rd = final.get("density"), references.get("density")
    if fd is not None and rd is not None and fd >= COPY_FACTOR * max(rd, 1.0):
        fc, rc = final.get("coverage"), references.get("coverage")
        out.append(
            f"the {name} model copies much more than the references do: its summaries copy fragments "
            f"of mean length {fd:.1f} words per word (density; references {rd:.1f})"
            + (
                f", {100 * fc:.0f}% of their words from the document (references {100 * rc:.0f}%)"
                if fc is not None and rc is not None
                else ""
            )
            + ": it tends to extract rather than summarize"
        )
    fn, bn = final.get("unsupported_numbers"), base.get("unsupported_numbers")
    if fn is not None and bn is not None and fn > bn:
        out.append(
            f"the {name} model states more numbers that are not in the document than the {base_name}: "
            f"{fn:.2f} per summary against {bn:.2f}; check them before trusting its figures"
        )
    return out


def diff_cell(key: str, d: Optional[dict]) -> str:
    if not d or d.get("diff") is None:
        return "n/a"
    pct = fmt(key, 0.0).endswith("%")
    scale, unit = (100, " pts") if pct else (1, "")
    lo, hi = d.get("ci95") or (None, None)
    s = f"{scale * d['diff']:+.2f}{unit}"
    return s + (f" [{scale * lo:+.2f}, {scale * hi:+.2f}]" if lo is not None else "")


def lines(
    blocks: dict[str, Optional[dict]],
    diff: Optional[dict] = None,
    diff_name: str = "change [95% CI]",
    keys: Sequence[str] = DIAGNOSTIC_KEYS,
    indent: str = "   ",
) -> list[str]:
    """A text table: one row per statistic, one column per block of means (e.g. references, base, fine-tuned),
    and the paired differences (`diff`: {key: {diff, ci95}}) when given."""
    names = [n for n, b in blocks.items() if b]
    if not names:
        return []
    width = max(len(BY_KEY[k].short) for k in keys)
    cols = [max(10, len(n)) for n in names]
    out = [
        f"{indent}{'':<{width}}  "
        + "  ".join(f"{n:>{w}}" for n, w in zip(names, cols))
        + (f"   {diff_name}" if diff else "")
    ]
    for k in keys:
        cells = [fmt(k, (blocks[n] or {}).get(k)) for n in names]
        if all(c == "n/a" for c in cells):
            continue
        out.append(
            f"{indent}{BY_KEY[k].short:<{width}}  "
            + "  ".join(f"{c:>{w}}" for c, w in zip(cells, cols))
            + (f"   {diff_cell(k, diff.get(k))}" if diff else "")
        )
    return out


def _cell(key: str, v) -> str:
    if isinstance(v, dict):  # {mean, ci95} of an evaluation
        s = fmt(key, v.get("mean"))
        if v.get("ci95"):
            s += f" [{fmt(key, v['ci95'][0])}, {fmt(key, v['ci95'][1])}]"
        return s
    return fmt(key, v)


def markdown_table(columns: dict[str, Optional[dict]], diff: Optional[dict] = None) -> list[str]:
    """A Markdown table: one row per statistic, one column per block ({key: mean} of a training run, or
    {key: {mean, ci95}} of an evaluation); `diff` (paired differences by key) adds a change column."""
    cols = {n: b for n, b in columns.items() if b}
    if not cols:
        return []
    head = ["statistic", *cols] + (["change [95% CI]"] if diff else [])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for st in STATS:
        cells = [_cell(st.key, b.get(st.key)) for b in cols.values()]
        if all(c == "n/a" for c in cells):
            continue
        rows.append(
            f"| {st.label} | "
            + " | ".join(cells)
            + (f" | {diff_cell(st.key, diff.get(st.key))}" if diff else "")
            + " |"
        )
    return rows


# what counts as "grew" for the reward-gaming check: this many times the starting model's length when the
# similarity rose with it, LENGTH_DRIFT times (beyond noise) whatever the similarity did
LENGTH_GROWTH = 1.5
LENGTH_DRIFT = 1.2


def _beyond_noise(d: Optional[dict], sign: int) -> bool:
    """A paired difference whose 95% interval lies wholly above 0 (sign=1) or below it (sign=-1)."""
    lo, hi = (d or {}).get("ci95") or (None, None)
    if lo is None or hi is None:
        return False
    return lo > 0 if sign > 0 else hi < 0


def gaming_warnings(
    base: Optional[dict],
    final: Optional[dict],
    comparison: Optional[dict],
    similarity: str = "rougeL",
    names: tuple[str, str] = ("SFT model", "GRPO"),
) -> list[str]:
    """After a reward-trained stage, in words: where the summaries moved in a way a summary reward is known to be
    gamed (longer summaries for ROUGE, copying, repetition, invented numbers or names, cut endings), or where the
    similarity itself fell; each judged by the paired 95% interval of the change (noise is not a warning).
    `base`/`final`: score and statistic means of the two models; `comparison`: metrics.json's final_vs_base."""
    base, final, cmp = base or {}, final or {}, comparison or {}
    scores, stats = cmp.get("model_minus_base") or {}, cmp.get("diagnostics_model_minus_base") or {}
    before, after = names
    out = []
    sim = scores.get(similarity)
    lb, lf = base.get("length_ratio"), final.get("length_ratio")
    if _beyond_noise(sim, 1) and lb and lf and lf >= LENGTH_GROWTH * lb:
        out.append(
            f"{similarity} rose ({100 * sim['diff']:+.2f}) while the summaries grew from {lb:.2f} to {lf:.2f} times "
            f"the reference's length: the length guard was gamed (raise rl.weights.length or narrow rl.length_band)"
        )
    elif _beyond_noise(stats.get("length_ratio"), 1) and lb and lf and lf >= LENGTH_DRIFT * lb:
        grew = f"the summaries grew from {lb:.2f} to {lf:.2f} times the reference's length"
        cell = diff_cell("length_ratio", stats["length_ratio"])
        out.append(
            f"{grew} ({cell}) "
            f"while {similarity} moved {100 * sim['diff']:+.2f}: the length guard lost to the other components "
            f"(raise rl.weights.length or narrow rl.length_band)"
            if sim
            else f"{grew} ({cell}): raise rl.weights.length or narrow rl.length_band"
        )
    if _beyond_noise(sim, -1):
        lo, hi = sim["ci95"]
        out.append(
            f"{similarity} fell beyond noise ({100 * sim['diff']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]): the other "
            f"components outweighed similarity (raise rl.weights.similarity or lower the others)"
        )
    checks = (
        ("density", "copies longer fragments of the document", "rl.weights.copying or lower rl.copy_slack"),
        ("repeated_3gram", "repeats itself more", "rl.weights.repetition"),
        ("unsupported_numbers", "states more numbers absent from the document", "rl.weights.unsupported"),
        ("unsupported_names", "names more things absent from the document", "rl.weights.unsupported"),
        ("cut_by_max_new_tokens", "leaves more summaries cut at the budget", "rl.weights.cut"),
    )
    for key, what, knob in checks:
        d = stats.get(key)
        if _beyond_noise(d, 1):
            out.append(
                f"the {after} model {what} than the {before}: {BY_KEY[key].short} {fmt(key, base.get(key))} -> "
                f"{fmt(key, final.get(key))} ({diff_cell(key, d)}); raise {knob}"
            )
    return out
