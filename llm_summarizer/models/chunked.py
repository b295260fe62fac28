"""Summaries of documents longer than the model's window (eval.long_documents: chunk): map, then reduce in rounds.

1. Each document over the window is cut into windows at line, sentence or word ends, with some overlap
   (data/chunking.py); a document that fits is one window, summarized exactly as with `truncate`.
2. Every window of every document is summarized with the fine-tuned model and its training prompt, all in one
   generation call (so continuous batching keeps the batch full across documents).
3. A document's window summaries are joined, one per line. When the joined text fits one window, one more
   generation gives the summary; when it does not, it is cut into windows again at summary ends and the round
   repeats. At most eval.max_merge_rounds rounds: when a round would not reduce the number of pieces (windows
   too small for two summaries) or the last round comes, the joined summaries are cut to one window by
   data.truncation (the output says so: `cut`). So a document costs at most windows + the sum over rounds of
   ever fewer pieces generations, and the loop always ends.

The tree (which window produced which partial summary, which summaries each merge read) is returned with the
summary. Under greedy decoding the result is deterministic: the windows are a function of the text and the
tokenizer, and each generation a function of its prompt.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

from ..data.chunking import applied_overlap, split_windows, token_starts
from ..errors import UserError

log = logging.getLogger("llm_summarizer.generation")


@dataclass
class Node:
    id: str  # "round.index": round 0 is the document's windows
    summary: str
    new_tokens: int
    hit_max: bool
    input_tokens: int
    span: Optional[tuple[int, int]] = None  # round 0: the window's characters in the document
    children: Optional[list[str]] = None  # later rounds: the summaries joined into this input, by id
    cut: bool = False  # the input was cut to fit (only a last merge round's)

    def as_dict(self) -> dict:
        d = {"id": self.id, "input_tokens": self.input_tokens}
        if self.span is not None:
            d["span"] = list(self.span)
        if self.children is not None:
            d["from"] = list(self.children)
        d.update(summary=self.summary, new_tokens=self.new_tokens, hit_max_new_tokens=self.hit_max)
        if self.cut:
            d["cut"] = True
        return d


@dataclass
class _Doc:
    index: int
    tokens: int
    windows: list = field(default_factory=list)
    rounds: list = field(default_factory=list)  # list of lists of Node
    cut: bool = False


def _where(names: Optional[list[str]], i: int, n: int) -> str:
    return names[i] if names and i < len(names) else f"document {i + 1} of {n}"


def window_tokens(formatter, max_new_tokens: int, what: str = "model.max_seq_length") -> int:
    """The document tokens one window holds beside the prompt and the summary; a clear refusal when none fit."""
    budget = formatter.doc_budget(max_new_tokens)
    if budget < 1:
        raise UserError(
            f"{what}={formatter.max_seq_length} leaves no room for a document: the prompt takes "
            f"{formatter.template_tokens} tokens and the summary up to {max_new_tokens} (max_new_tokens). Raise "
            f"model.max_seq_length, lower max_new_tokens, or set eval.chunk_tokens"
        )
    return budget


def plan(
    documents: list[str], formatter, ev, max_new_tokens: int, names: Optional[list[str]] = None
) -> tuple[int, list[_Doc]]:
    """The window size and the documents that need more than one window, with their windows; a UserError naming
    the document for an empty one, one that needs more than eval.max_chunks windows, or a budget with no room for
    a document. Cheap (tokenizing only): callers run it on every input before generating anything."""
    n = len(documents)
    window = window_tokens(
        formatter, max_new_tokens, "model.max_seq_length" if not ev.chunk_tokens else "the window (eval.chunk_tokens)"
    )
    docs = []
    for i, doc in enumerate(documents):
        if not isinstance(doc, str) or not doc.strip():
            raise UserError(f"{_where(names, i, n)}: the document is empty; there is nothing to summarize")
        starts = token_starts(formatter.tok, doc)
        if len(starts) <= window:
            continue
        d = _Doc(i, len(starts), split_windows(doc, starts, window, ev.chunk_overlap))
        if len(d.windows) > ev.max_chunks:
            raise UserError(
                f"{_where(names, i, n)}: {len(starts)} tokens need {len(d.windows)} windows of at most {window} "
                f"tokens, more than eval.max_chunks={ev.max_chunks} (each window is one generation). Raise "
                f"eval.max_chunks, summarize a part of it, or set eval.long_documents=truncate"
            )
        docs.append(d)
    return window, docs


class _Owner(NamedTuple):
    """What one text of the first generation call is: a document's window, or (window -1) a whole document."""

    document: int
    window: int


class _Span(NamedTuple):
    """Where one partial summary lies in the joined text a merge round reads."""

    id: str
    start: int
    end: int


class _Part(NamedTuple):
    """One input of a merge round: the joined summaries' characters [start, end), its tokens, whether it was cut."""

    start: int
    end: int
    tokens: int
    cut: bool


class _Merge(NamedTuple):
    """One planned merge generation: its input text, the ids of the summaries it reads, its tokens, whether cut."""

    text: str
    children: list[str]
    tokens: int
    cut: bool


@dataclass
class _Counts:
    """The generations of one summarize_long so far, over all its generation calls: planned (the total, growing as
    merge rounds are planned) and handed out; `progress(done, total)` hears them."""

    progress: Optional[Callable[[int, int], None]]
    total: int = 0
    handed: int = 0

    def stage(self, k: int) -> Callable[[int, int], None]:
        """The progress callback of the next generation call, of `k` texts: it counts on from the calls before it."""
        base = self.handed
        self.total += k
        self.handed += k

        def report(d: int, _t: int) -> None:
            if self.progress:
                self.progress(base + d, self.total)

        return report


def summarize_long(
    documents: list[str],
    formatter,
    merge_formatter,
    ev,
    max_new_tokens: int,
    generate: Callable[[list[str], object, Callable], list],
    names: Optional[list[str]] = None,
    progress=None,
    on_done=None,
) -> list:
    """Generated summaries of `documents`, in order; chunked ones carry `method="chunked"` and the `tree`.

    generate(texts, formatter, progress) -> list[Generated] runs one generation call (texts in, summaries out, in
    order); `progress(done, total)` counts generations, the total growing as merge rounds are planned;
    `on_done(i, generated)` is called as each document's summary is final."""
    n = len(documents)
    window, docs = plan(documents, formatter, ev, max_new_tokens, names)
    merge_window = window_tokens(merge_formatter, max_new_tokens)
    results: list = [None] * n
    counts = _Counts(progress)
    chunked = {d.index: d for d in docs}
    # 1. every window of every document, and the documents that fit whole, in one call
    texts, owners = _first_texts(documents, chunked)
    gens = generate(texts, formatter, counts.stage(len(texts)))
    _first_round(owners, gens, chunked, results, on_done)
    # 2. merge rounds until each chunked document has one summary
    active = [d for d in docs]
    r = 0
    while active:
        r += 1
        planned = [
            (d, _merge_inputs(d, r, merge_formatter, merge_window, ev.max_merge_rounds, _where(names, d.index, n)))
            for d in active
        ]
        texts = [m.text for _, merges in planned for m in merges]
        gens = iter(generate(texts, merge_formatter, counts.stage(len(texts))))
        still = []
        for d, merges in planned:
            last = _merge_round(d, r, merges, gens)
            if len(merges) > 1:
                still.append(d)
                continue
            tree = describe_tree(d, window, applied_overlap(ev.chunk_overlap, window), max_new_tokens)
            results[d.index] = dataclasses.replace(last, truncated_input=d.cut, method="chunked", tree=tree)
            if on_done:
                on_done(d.index, results[d.index])
        active = still
    return results


def _first_texts(documents: list[str], chunked: dict[int, _Doc]) -> tuple[list[str], list[_Owner]]:
    """The texts of the first generation call: each chunked document's windows, each other document whole."""
    texts: list[str] = []
    owners: list[_Owner] = []
    for i, doc in enumerate(documents):
        d = chunked.get(i)
        if d is None:
            texts.append(doc)
            owners.append(_Owner(i, -1))
        else:
            texts += [doc[w.start : w.end] for w in d.windows]
            owners += [_Owner(i, k) for k in range(len(d.windows))]
    return texts, owners


def _first_round(owners: list[_Owner], gens: list, chunked: dict[int, _Doc], results: list, on_done) -> None:
    """The first call's summaries: a whole document's is its result; a window's is a node of its document's round 0."""
    first: dict[int, list[Node]] = {i: [] for i in chunked}
    for (i, k), g in zip(owners, gens):
        if k < 0:
            results[i] = g
            if on_done:
                on_done(i, g)
            continue
        w = chunked[i].windows[k]
        first[i].append(
            Node(f"0.{k}", g.text, g.new_tokens, g.hit_max, w.tokens, span=(w.start, w.end), cut=g.truncated_input)
        )
    for d in chunked.values():
        d.rounds.append(first[d.index])


def _merge_inputs(d: _Doc, r: int, merge_formatter, merge_window: int, max_rounds: int, where: str) -> list[_Merge]:
    """The inputs of merge round `r` of `d`: its last round's summaries joined one per line; one input when they fit
    a window, else cut into windows at summary ends, or (in the last round, or when that would not reduce the pieces)
    cut to one window by data.truncation (`d.cut`)."""
    pieces = [p for p in d.rounds[-1] if p.summary.strip()] or d.rounds[-1][:1]
    joined, spans, at = "", [], 0
    for p in pieces:
        spans.append(_Span(p.id, at, at + len(p.summary)))
        joined += p.summary + "\n"
        at = len(joined)
    joined = joined[:-1]
    starts = token_starts(merge_formatter.tok, joined)
    if len(starts) <= merge_window:
        parts = [_Part(0, len(joined), len(starts), False)]
    else:
        windows = split_windows(joined, starts, merge_window, 0)
        if r >= max_rounds or len(windows) >= len(pieces):
            # bounded: the joined summaries, cut to one window by data.truncation
            parts = [_Part(0, len(joined), merge_window, True)]
            d.cut = True
            log.warning(
                "%s: %d partial summaries (%d tokens) do not fit one window of %d tokens after %d "
                "merge round(s); the last round reads them cut by data.truncation",
                where,
                len(pieces),
                len(starts),
                merge_window,
                r,
            )
        else:
            parts = [_Part(w.start, w.end, w.tokens, False) for w in windows]
    return [
        _Merge(joined[p.start : p.end], [s.id for s in spans if s.start < p.end and s.end > p.start], p.tokens, p.cut)
        for p in parts
    ]


def _merge_round(d: _Doc, r: int, merges: list[_Merge], gens) -> object:
    """Round `r`'s nodes of `d`, from the next of `gens`, one per planned merge; the last of those generations."""
    nodes, last = [], None
    for k, m in enumerate(merges):
        g = last = next(gens)
        nodes.append(
            Node(
                f"{r}.{k}",
                g.text,
                g.new_tokens,
                g.hit_max,
                m.tokens,
                children=m.children,
                cut=m.cut or g.truncated_input,
            )
        )
    d.rounds.append(nodes)
    return last


def describe_tree(d: _Doc, window: int, overlap: int, max_new_tokens: int) -> dict:
    merges = len(d.rounds) - 1
    how = (
        f"chunked: {d.tokens} document tokens in {len(d.windows)} windows of at most {window} tokens "
        f"({overlap} overlapping), each summarized, then {merges} merge round(s) over the joined summaries"
        + ("; the last round read them cut to one window (data.truncation)" if d.cut else "")
    )
    return {
        "how": how,
        "document_tokens": d.tokens,
        "windows": len(d.windows),
        "window_tokens": window,
        "overlap_tokens": overlap,
        "merge_rounds": merges,
        "max_new_tokens": max_new_tokens,
        "cut": d.cut,
        "generations": sum(len(r) for r in d.rounds),
        "generated_tokens": sum(p.new_tokens for r in d.rounds for p in r),
        "rounds": [[p.as_dict() for p in r] for r in d.rounds],
    }
