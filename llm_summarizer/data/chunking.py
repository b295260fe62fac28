"""Cutting a document that is over the token budget into windows that fit, at the most natural places.

A window ends at the most natural kind of place in its second half, in this order: a paragraph break (a blank
line), a line break (a speaker turn in a transcript), the end of a sentence, a space between words; where that
half holds none of these (one giant "word", e.g. a base64 blob), after its last token. The next window starts
at most `overlap` tokens (and a quarter of the budget) before the previous one ended, at a paragraph, line or
sentence start (a word start where there is none). Cuts fall on the tokenizer's own token starts, so a window
re-encodes to about the tokens counted for it; the caller checks.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

# the kinds of places a window may end, most natural first; a cut is at the returned character position
_PLACES = (
    re.compile(r"\n[ \t]*\n\s*"),  # paragraph: after a blank line
    re.compile(r"\n"),  # line: after a line break (a turn of a transcript)
    re.compile(r"(?<=[.!?\u2026\u3002\uff01\uff1f])[\"'\u201d\u2019)\]]*(?=\s)"),  # sentence: before the space after it
    re.compile(r"(?<=\S)(?=\s)"),  # word: before a space
)
TOKEN = len(_PLACES)  # the level of a cut after any token
_OVERLAP_LEVELS = (
    3  # a window may start again at a paragraph, line or sentence place; a word place only as the last resort
)


@dataclass(frozen=True)
class Window:
    start: int  # characters of the document: text[start:end]
    end: int
    tokens: int  # tokens counted for it in the document's encoding


def token_starts(tokenizer, text: str) -> list[int]:
    """Where each token of `text` starts (characters), encoded as the prompt encodes a document (no special
    tokens). A tokenizer without offsets gets evenly spread starts: windows are then checked by re-encoding."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, ValueError, TypeError):
        n = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        return [round(i * len(text) / n) for i in range(n)] if n else []
    starts, last = [], -1
    for a, _b in offsets:
        a = max(a, last)  # byte-level pieces of one character share an offset: keep them in order
        starts.append(a)
        last = a
    return starts


def places(text: str, starts: list[int]) -> list[list[int]]:
    """Per level, the sorted token indices where a window may end: the token a place falls in (a tokenizer that
    puts the space or line break before a word into the word's token starts the next window with it)."""
    out = []
    for rx in _PLACES:
        idx = sorted({bisect.bisect_right(starts, m.end()) - 1 for m in rx.finditer(text)})
        out.append([i for i in idx if 0 < i < len(starts)])
    return out


def _best_cut(cur: int, limit: int, levels: list[list[int]]) -> int:
    """The window [cur, limit) ends at the most natural kind of place found in its second half (the last one of
    that kind), else after `limit` tokens: a window is never shorter than half the budget, so a text with one early
    sentence end and then no place at all does not make a run of tiny windows."""
    half = cur + max(1, (limit - cur) // 2)
    for found in levels:
        lo, hi = bisect.bisect_left(found, half), bisect.bisect_right(found, limit)
        if hi > lo:
            return found[hi - 1]
    return limit


def _next_start(cur: int, end: int, overlap: int, levels: list[list[int]]) -> int:
    """The start of the next window: the earliest line/sentence place (word places only where the text has none)
    within `overlap` tokens before `end` and after `cur`; `end` itself when there is none."""
    if overlap <= 0:
        return end
    lo_tok = max(cur + 1, end - overlap)
    for found in (levels[:_OVERLAP_LEVELS], levels[_OVERLAP_LEVELS:]):
        best = None
        for lv in found:
            j = bisect.bisect_left(lv, lo_tok)
            if j < len(lv) and lv[j] < end:
                best = lv[j] if best is None else min(best, lv[j])
        if best is not None:
            return best
    return end


def applied_overlap(overlap: int, budget: int) -> int:
    """The overlap windows of `budget` tokens really repeat: at most a quarter of the window (windows are at least
    half the budget, so each ends a quarter further on)."""
    return min(overlap, budget // 4)


def split_windows(text: str, starts: list[int], budget: int, overlap: int = 0) -> list[Window]:
    """Windows of at most `budget` tokens covering `text` (tokens starting at `starts`), each ending at the most
    natural place available, the next one repeating at most `overlap` tokens."""
    if budget < 1:
        raise ValueError(f"a window needs at least one token (budget {budget})")
    n = len(starts)
    if n <= budget:
        return [Window(0, len(text), n)]
    overlap = applied_overlap(overlap, budget)
    levels = places(text, starts)
    windows, cur = [], 0
    while cur < n:
        limit = min(n, cur + budget)
        end = n if limit == n else _best_cut(cur, limit, levels)
        a = 0 if cur == 0 else starts[cur]
        b = len(text) if end == n else starts[end]
        windows.append(Window(a, b, end - cur))
        if end == n:
            break
        cur = _next_start(cur, end, overlap, levels)
    return windows
