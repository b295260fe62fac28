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
from typing import Callable, Optional

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
    texts: list[str] = []
    owners: list[tuple[int, int]] = []  # (document, window) per text of the first call
    chunked = {d.index: d for d in docs}
    for i, doc in enumerate(documents):
        d = chunked.get(i)
        if d is None:
            texts.append(doc)
            owners.append((i, -1))
        else:
            texts += [doc[w.start : w.end] for w in d.windows]
            owners += [(i, k) for k in range(len(d.windows))]
    total = [len(texts)]
    done = [0]

    def stage(k: int):
        base = done[0]

        def report(d: int, _t: int) -> None:
            if progress:
                progress(base + d, total[0])

        done[0] += k
        return report

    # 1. every window of every document, and the documents that fit whole, in one call
    gens = generate(texts, formatter, stage(len(texts)))
    first: dict[int, list[Node]] = {d.index: [] for d in docs}
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
    for d in docs:
        d.rounds.append(first[d.index])
    # 2. merge rounds until each chunked document has one summary
    active = [d for d in docs]
    r = 0
    while active:
        r += 1
        texts, planned = [], []  # (doc, [(child ids, tokens, cut)])
        for d in active:
            pieces = [p for p in d.rounds[-1] if p.summary.strip()] or d.rounds[-1][:1]
            joined, spans, at = "", [], 0
            for p in pieces:
                spans.append((p.id, at, at + len(p.summary)))
                joined += p.summary + "\n"
                at = len(joined)
            joined = joined[:-1]
            starts = token_starts(merge_formatter.tok, joined)
            if len(starts) <= merge_window:
                parts = [(0, len(joined), len(starts), False)]
            else:
                windows = split_windows(joined, starts, merge_window, 0)
                if r >= ev.max_merge_rounds or len(windows) >= len(pieces):
                    # bounded: the joined summaries, cut to one window by data.truncation
                    parts = [(0, len(joined), merge_window, True)]
                    d.cut = True
                    log.warning(
                        "%s: %d partial summaries (%d tokens) do not fit one window of %d tokens after %d "
                        "merge round(s); the last round reads them cut by data.truncation",
                        _where(names, d.index, n),
                        len(pieces),
                        len(starts),
                        merge_window,
                        r,
                    )
                else:
                    parts = [(w.start, w.end, w.tokens, False) for w in windows]
            entries = []
            for a, b, tokens, cut in parts:
                children = [pid for pid, s, e in spans if s < b and e > a]
                texts.append(joined[a:b])
                entries.append((children, tokens, cut))
            planned.append((d, entries))
        total[0] += len(texts)
        gens = iter(generate(texts, merge_formatter, stage(len(texts))))
        still = []
        for d, entries in planned:
            nodes = []
            for k, (children, tokens, cut) in enumerate(entries):
                g = last = next(gens)
                nodes.append(
                    Node(
                        f"{r}.{k}",
                        g.text,
                        g.new_tokens,
                        g.hit_max,
                        tokens,
                        children=children,
                        cut=cut or g.truncated_input,
                    )
                )
            d.rounds.append(nodes)
            if len(nodes) > 1:
                still.append(d)
                continue
            tree = describe_tree(d, window, applied_overlap(ev.chunk_overlap, window), max_new_tokens)
            results[d.index] = dataclasses.replace(last, truncated_input=d.cut, method="chunked", tree=tree)
            if on_done:
                on_done(d.index, results[d.index])
        active = still
    return results


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
