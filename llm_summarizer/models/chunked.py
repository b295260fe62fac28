"""Summaries of documents longer than the model's window (eval.long_documents: chunk): map-reduce or refine.

1. Each document over the window is cut into windows at line, sentence or word ends, with some overlap
   (data/chunking.py); a document that fits is one window, summarized exactly as with `truncate`. The window is
   as long as the model reads (its context, capped by eval.max_window_tokens and a GPU's memory: generation.py
   window_length), not the training model.max_seq_length.
2. map_reduce (eval.chunk_strategy, the default): every window of every document is summarized with the fine-tuned
   model and its training prompt, all in one generation call (so continuous batching keeps the batch full across
   documents). A document's window summaries are joined, one per line, sentences that repeat an earlier one dropped
   (eval.dedup_sentences), and merged with a prompt of their own (MERGE_INSTRUCTION: partial summaries of one
   document, in order, to combine). When the joined text fits one window, one more generation gives the summary;
   when it does not, it is cut into windows again at summary ends and the round repeats. At most
   eval.max_merge_rounds rounds: when a round would not reduce the number of pieces (windows too small for two
   summaries) or the last round comes, the joined summaries are cut to one window by data.truncation (the output
   says so: `cut`). So a document costs at most windows + the sum over rounds of ever fewer pieces generations,
   and the loop always ends.
3. refine: the first window is summarized with the training prompt; each next window is read with the summary so
   far (REFINE_INSTRUCTION) and gives the new summary, as LangChain's refine chain does. One generation per
   window, in order (documents side by side in each call); the windows are smaller by the summary they carry.

The tree (which window produced which partial summary, which summaries each merge or update read) is returned with
the summary, and `plan_cost` says before anything runs how many generations a document will take (exactly for
refine, at most for map_reduce). Under greedy decoding the result is deterministic: the windows are a function of
the text and the tokenizer, and each generation a function of its prompt.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

from ..data.chunking import applied_overlap, split_windows, token_starts
from ..errors import UserError

log = logging.getLogger("llm_summarizer.generation")

# The merge rounds' instruction (eval.merge_instruction None): the model is told what the joined text is.
MERGE_INSTRUCTION = (
    "The text below is a series of partial summaries of consecutive parts of one long document, in order. "
    "Combine them into one short summary of the whole document, without repeating yourself."
)
# Each refine update's instruction (eval.refine_instruction None) and the document it reads.
REFINE_INSTRUCTION = (
    "Below are a summary of the first parts of a long document and the next part of it. Write one short "
    "summary of everything so far: keep what matters from the summary and add what the next part says."
)
REFINE_DOCUMENT = "Summary so far:\n{summary}\n\nNext part:\n{part}"
TRAINING_PROMPT = "data.instruction"  # eval.merge_instruction's value for the prompt the model was trained with

_WORD = re.compile(r"\w+")
# a sentence ends after . ! ? or an ellipsis and its closing quotes or brackets, before a space; after a CJK full
# stop, question or exclamation mark with or without one (the sentence places of data/chunking.py)
_SENTENCE_END = re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]]*(?=\s)|[\u3002\uff01\uff1f][\"'\u201d\u2019)\]]*")


def sentences(text: str) -> list[str]:
    """The sentences of `text`, line by line (a line break always ends one)."""
    out = []
    for line in text.split("\n"):
        at = 0
        for m in _SENTENCE_END.finditer(line):
            out.append(line[at : m.end()])
            at = m.end()
        out.append(line[at:])
    return [s.strip() for s in out if s.strip()]


def dedup_sentences(texts: list[str], share: float = 0.8) -> tuple[list[str], int]:
    """`texts` with each sentence that repeats an earlier one (in any earlier text or earlier in the same) removed,
    and how many were: the same words (any order, any case), or, for a sentence of three or more words, `share` of
    them in one earlier sentence (`sentences`); a sentence of no words stays."""
    kept: list[set] = []
    out, removed = [], 0
    for text in texts:
        keep = []
        for sentence in sentences(text):
            words = {w.lower() for w in _WORD.findall(sentence)}
            if words and any(words == k or (len(words) >= 3 and len(words & k) >= share * len(words)) for k in kept):
                removed += 1
                continue
            if words:
                kept.append(words)
            keep.append(sentence)
        out.append(" ".join(keep))
    return out, removed


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
    dropped: int = 0  # sentences dropped as repeats (eval.dedup_sentences): from its input, then from its summary

    def as_dict(self) -> dict:
        d = {"id": self.id, "input_tokens": self.input_tokens}
        if self.span is not None:
            d["span"] = list(self.span)
        if self.children is not None:
            d["from"] = list(self.children)
        d.update(summary=self.summary, new_tokens=self.new_tokens, hit_max_new_tokens=self.hit_max)
        if self.cut:
            d["cut"] = True
        if self.dropped:
            d["dropped_repeated_sentences"] = self.dropped
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
            f"model.max_seq_length or eval.max_window_tokens, lower max_new_tokens, or set eval.chunk_tokens"
        )
    return budget


def refine_reserve(refine_formatter, max_new_tokens: int) -> int:
    """The tokens a refine update's document spends beside the next part: the summary so far (at most
    max_new_tokens) and REFINE_DOCUMENT's words."""
    frame = len(
        refine_formatter.tok(REFINE_DOCUMENT.format(summary="", part=""), add_special_tokens=False)["input_ids"]
    )
    return max_new_tokens + frame + 2


def plan(
    documents: list[str],
    formatter,
    ev,
    max_new_tokens: int,
    names: Optional[list[str]] = None,
    reserve: int = 0,
) -> tuple[int, list[_Doc]]:
    """The window size and the documents that need more than one window, with their windows; a UserError naming
    the document for an empty one, one that needs more than eval.max_chunks windows, or a budget with no room for
    a document. `reserve`: tokens of each window kept for something else (refine's summary so far). Cheap
    (tokenizing only): callers run it on every input before generating anything."""
    n = len(documents)
    window = (
        window_tokens(
            formatter,
            max_new_tokens,
            "the window (model context, eval.max_window_tokens)"
            if not ev.chunk_tokens
            else "the window (eval.chunk_tokens)",
        )
        - reserve
    )
    if window < 16:
        raise UserError(
            f"eval.chunk_strategy=refine: a window of {window + reserve} document tokens leaves {window} for the next "
            f"part beside the summary so far ({reserve} tokens with max_new_tokens); raise eval.chunk_tokens or "
            f"eval.max_window_tokens, or use eval.chunk_strategy=map_reduce"
        )
    docs = []
    for i, doc in enumerate(documents):
        if not isinstance(doc, str) or not doc.strip():
            raise UserError(f"{_where(names, i, n)}: the document is empty; there is nothing to summarize")
        starts = token_starts(formatter.tok, doc)
        if len(starts) <= window + reserve:
            continue  # fits one window whole: summarized as it is, whatever the strategy
        d = _Doc(i, len(starts), split_windows(doc, starts, window, ev.chunk_overlap))
        if len(d.windows) > ev.max_chunks:
            raise UserError(
                f"{_where(names, i, n)}: {len(starts)} tokens need {len(d.windows)} windows of at most {window} "
                f"tokens, more than eval.max_chunks={ev.max_chunks} (each window is one generation). Raise "
                f"eval.max_chunks, summarize a part of it, or set eval.long_documents=truncate"
            )
        docs.append(d)
    return window, docs


@dataclass(frozen=True)
class Cost:
    """What summarizing some documents will take, known before anything is generated (plan_cost)."""

    documents: int
    chunked: int  # documents over one window
    windows: int  # of the chunked documents
    window_tokens: int
    generations: int  # exactly (refine, or nothing chunked) or at most (map_reduce's merges)
    exact: bool
    prompt_tokens: int  # document tokens read by the first pass (windows and whole documents)
    max_new_tokens: int
    strategy: str

    def describe(self) -> str:
        if not self.chunked:
            return f"{self.documents} document(s), each within one window: {self.generations} generation(s)"
        how = "exactly" if self.exact else "at most"
        return (
            f"{self.documents} document(s), {self.chunked} over one window: {self.windows} windows of at most "
            f"{self.window_tokens} tokens ({self.strategy}), {how} {self.generations} generations of up to "
            f"{self.max_new_tokens} tokens each, {self.prompt_tokens} document tokens to read"
        )


def _merge_generations(pieces: int, per_merge: int, max_rounds: int) -> int:
    """At most how many merge generations `pieces` partial summaries take when one merge input holds `per_merge`
    of them (each as long as max_new_tokens): the rounds of _merge_inputs, every summary at its longest."""
    total, r = 0, 0
    while True:
        r += 1
        parts = math.ceil(pieces / max(1, per_merge))
        if parts <= 1 or r >= max_rounds or parts >= pieces:
            return total + 1  # the joined summaries fit one merge, or the round is the last (cut to fit)
        total += parts
        pieces = parts


def plan_cost(
    documents: list[str], formatter, merge_formatter, ev, max_new_tokens: int, names=None, refine_formatter=None
) -> Cost:
    """The cost of summarize_long(documents, ...), from the plan alone (tokenizing, no generation)."""
    refine = ev.chunk_strategy == "refine"
    reserve = refine_reserve(refine_formatter, max_new_tokens) if refine else 0
    window, docs = plan(documents, formatter, ev, max_new_tokens, names, reserve)
    windows = sum(len(d.windows) for d in docs)
    whole = len(documents) - len(docs)
    if refine:
        gens, exact = whole + windows, True
    else:
        merge_window = window_tokens(merge_formatter, max_new_tokens)
        per_merge = merge_window // (max_new_tokens + 1)
        gens = whole + windows + sum(_merge_generations(len(d.windows), per_merge, ev.max_merge_rounds) for d in docs)
        exact = not docs
    chunked_tokens = sum(w.tokens for d in docs for w in d.windows)
    whole_tokens = sum(
        len(token_starts(formatter.tok, documents[i])) for i in set(range(len(documents))) - {d.index for d in docs}
    )
    return Cost(
        len(documents),
        len(docs),
        windows,
        window,
        gens,
        exact,
        chunked_tokens + whole_tokens,
        max_new_tokens,
        ev.chunk_strategy,
    )


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
    """One planned merge generation: its input text, the ids of the summaries it reads, its tokens, whether cut,
    and the repeated sentences dropped from the joined summaries (counted on a round's first merge)."""

    text: str
    children: list[str]
    tokens: int
    cut: bool
    dropped: int = 0


@dataclass
class _Counts:
    """The generations of one summarize_long so far, over all its generation calls: planned (the total, growing as
    merge rounds are planned) and handed out; `progress(done, total)` hears them."""

    progress: Optional[Callable[[int, int], None]]
    planned: int = 0  # the total known in advance (refine), else 0: it grows call by call
    total: int = 0
    handed: int = 0

    def stage(self, k: int) -> Callable[[int, int], None]:
        """The progress callback of the next generation call, of `k` texts: it counts on from the calls before it."""
        base = self.handed
        self.handed += k
        self.total = max(self.planned, self.handed)

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
    refine_formatter=None,
) -> list:
    """Generated summaries of `documents`, in order; chunked ones carry `method="chunked"` and the `tree`.

    generate(texts, formatter, progress) -> list[Generated] runs one generation call (texts in, summaries out, in
    order); `progress(done, total)` counts generations (map_reduce: the total grows as merge rounds are planned;
    refine: known from the start); `on_done(i, generated)` is called as each document's summary is final.
    `refine_formatter`: the prompt of refine's updates (eval.chunk_strategy=refine; default `merge_formatter`)."""
    n = len(documents)
    if ev.chunk_strategy == "refine":
        refine_formatter = refine_formatter or merge_formatter
        return _refine(documents, formatter, refine_formatter, ev, max_new_tokens, generate, names, progress, on_done)
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
            (
                d,
                _merge_inputs(
                    d,
                    r,
                    merge_formatter,
                    merge_window,
                    ev.max_merge_rounds,
                    _where(names, d.index, n),
                    ev.dedup_sentences,
                ),
            )
            for d in active
        ]
        texts = [m.text for _, merges in planned for m in merges]
        gens = iter(generate(texts, merge_formatter, counts.stage(len(texts))))
        still = []
        for d, merges in planned:
            last = _merge_round(d, r, merges, gens, ev.dedup_sentences)
            if len(merges) > 1:
                still.append(d)
                continue
            tree = describe_tree(d, window, applied_overlap(ev.chunk_overlap, window), max_new_tokens)
            results[d.index] = dataclasses.replace(last, truncated_input=d.cut, method="chunked", tree=tree)
            if on_done:
                on_done(d.index, results[d.index])
        active = still
    return results


def _refine(documents, formatter, refine_formatter, ev, max_new_tokens, generate, names, progress, on_done) -> list:
    """eval.chunk_strategy=refine: window 0 summarized with the training prompt, then each next window read with
    the summary so far (REFINE_DOCUMENT under the refine prompt); documents side by side in each call."""
    reserve = refine_reserve(refine_formatter, max_new_tokens)
    window, docs = plan(documents, formatter, ev, max_new_tokens, names, reserve)
    results: list = [None] * len(documents)
    counts = _Counts(progress, planned=len(documents) - len(docs) + sum(len(d.windows) for d in docs))
    chunked = {d.index: d for d in docs}
    texts, owners = [], []
    for i, doc in enumerate(documents):
        d = chunked.get(i)
        texts.append(doc if d is None else doc[d.windows[0].start : d.windows[0].end])
        owners.append(_Owner(i, -1 if d is None else 0))
    gens = generate(texts, formatter, counts.stage(len(texts)))
    _first_round(owners, gens, chunked, results, on_done)
    k = 0
    while True:
        k += 1
        active = [d for d in docs if len(d.windows) > k]
        if not active:
            return results
        parts = [d.windows[k] for d in active]
        texts = [
            REFINE_DOCUMENT.format(summary=d.rounds[-1][0].summary, part=documents[d.index][w.start : w.end])
            for d, w in zip(active, parts)
        ]
        gens = generate(texts, refine_formatter, counts.stage(len(texts)))
        for d, w, g in zip(active, parts, gens):
            text, dropped = g.text, 0
            if ev.dedup_sentences:
                (text,), dropped = dedup_sentences([g.text])
            node = Node(
                f"{k}.0",
                text,
                g.new_tokens,
                g.hit_max,
                w.tokens,
                span=(w.start, w.end),
                children=[d.rounds[-1][0].id],
                cut=g.truncated_input,
                dropped=dropped,
            )
            d.rounds.append([node])
            if k == len(d.windows) - 1:
                tree = describe_tree(d, window, applied_overlap(ev.chunk_overlap, window), max_new_tokens, "refine")
                results[d.index] = dataclasses.replace(
                    g, text=text, truncated_input=g.truncated_input, method="chunked", tree=tree
                )
                if on_done:
                    on_done(d.index, results[d.index])


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


def _merge_inputs(
    d: _Doc, r: int, merge_formatter, merge_window: int, max_rounds: int, where: str, dedup: bool = False
) -> list[_Merge]:
    """The inputs of merge round `r` of `d`: its last round's summaries joined one per line (with `dedup`, a
    sentence that repeats an earlier one dropped; a summary left with nothing is read by the merge of the place it
    had); one input when they fit a window, else cut into windows at summary ends, or (in the last round, or when
    that would not reduce the pieces) cut to one window by data.truncation (`d.cut`)."""
    pieces = [p for p in d.rounds[-1] if p.summary.strip()] or d.rounds[-1][:1]
    texts, dropped = [p.summary for p in pieces], 0
    if dedup:
        texts, dropped = dedup_sentences(texts)
    joined, spans, at = "", [], 0
    for p, t in zip(pieces, texts):
        if not t.strip():
            spans.append(_Span(p.id, at, at))  # nothing left to read: its place, for the tree
            continue
        spans.append(_Span(p.id, at, at + len(t)))
        joined += t + "\n"
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
        _Merge(
            joined[p.start : p.end],
            [s.id for s in spans if _reads(s, p, k == len(parts) - 1)],
            p.tokens,
            p.cut,
            dropped if k == 0 else 0,
        )
        for k, p in enumerate(parts)
    ]


def _reads(s: _Span, p: _Part, last: bool) -> bool:
    """Whether the merge of `p` reads the summary at `s` (an emptied one: the merge of the place it had)."""
    if s.start == s.end:
        return p.start <= s.start < p.end or (last and s.start >= p.end)
    return s.start < p.end and s.end > p.start


def _merge_round(d: _Doc, r: int, merges: list[_Merge], gens, dedup: bool = False) -> object:
    """Round `r`'s nodes of `d`, from the next of `gens`, one per planned merge; the last of those generations
    (with `dedup`, its repeated sentences dropped)."""
    nodes, last = [], None
    for k, m in enumerate(merges):
        g = last = next(gens)
        text, dropped = g.text, 0
        if dedup:
            (text,), dropped = dedup_sentences([g.text])
            last = dataclasses.replace(g, text=text)
        nodes.append(
            Node(
                f"{r}.{k}",
                text,
                g.new_tokens,
                g.hit_max,
                m.tokens,
                children=m.children,
                cut=m.cut or g.truncated_input,
                dropped=m.dropped + dropped,
            )
        )
    d.rounds.append(nodes)
    return last


def describe_tree(d: _Doc, window: int, overlap: int, max_new_tokens: int, strategy: str = "map_reduce") -> dict:
    if strategy == "refine":
        merges = 0
        how = (
            f"chunked (refine): {d.tokens} document tokens in {len(d.windows)} windows of at most {window} tokens "
            f"({overlap} overlapping), the first summarized, then each next one read with the summary so far "
            f"({len(d.windows) - 1} updates)"
        )
    else:
        merges = len(d.rounds) - 1
        how = (
            f"chunked: {d.tokens} document tokens in {len(d.windows)} windows of at most {window} tokens "
            f"({overlap} overlapping), each summarized, then {merges} merge round(s) over the joined summaries"
            + ("; the last round read them cut to one window (data.truncation)" if d.cut else "")
        )
    return {
        "how": how,
        "strategy": strategy,
        "document_tokens": d.tokens,
        "windows": len(d.windows),
        "window_tokens": window,
        "overlap_tokens": overlap,
        "merge_rounds": merges,
        "max_new_tokens": max_new_tokens,
        "cut": d.cut,
        "generations": sum(len(r) for r in d.rounds),
        "generated_tokens": sum(p.new_tokens for r in d.rounds for p in r),
        "dropped_repeated_sentences": sum(p.dropped for r in d.rounds for p in r),
        "rounds": [[p.as_dict() for p in r] for r in d.rounds],
    }
