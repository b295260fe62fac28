"""ROUGE as published summarization results compute it: rouge-score, Porter stemming, F1; in any language.

Tokenizer (`eval.rouge_tokenizer`):
- `default`: rouge-score's own (lowercase, everything but [a-z0-9] becomes a space, Porter stemming of words
  longer than 3 letters). What published English results use; it deletes every non-ASCII letter, so identical
  Russian or Chinese summaries score 0 and "café" becomes "caf".
- `unicode`: lowercase Unicode words (letters and digits of any script); ASCII words stemmed as above.
- `chars`: as `unicode`, but every character of a script written without spaces (Chinese, Japanese kana,
  Thai, Lao, Khmer, Myanmar) is a token of its own.
- `auto` (the default): decided once per set of references: `default` when under 0.5% of their letters are
  outside ASCII (English, a stray accented name included: numbers stay comparable with published ones),
  `chars` when at least a third of their letters are from a script without spaces, `unicode` otherwise. The
  choice made is recorded in the protocol.

ROUGE-Lsum treats newlines as sentence boundaries (rouge-score's convention), so both texts get one sentence
per line first (`eval.rouge_lsum_split`):
- `regex` (the default, the same on every machine): split after . ! ? (and the CJK full stops) followed by
  whitespace and a capital, digit or opening quote, except after a known abbreviation ("Dr.", "Jan.",
  "e.g.") or an initial ("U.S."): "Dr. Smith met the U.S. Army on Jan. 5." stays one sentence.
- `punkt`: nltk's trained punkt model, as many published ROUGE-Lsum numbers use; needs its data installed
  (`python -m nltk.downloader punkt_tab`), which an offline machine may not have.
- `newline`: only the newlines already in the text.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Optional

import numpy as np
from rouge_score import rouge_scorer
from rouge_score import tokenizers as rouge_tokenizers

from ..errors import UserError
from ..metrics import BY_KEY, KEYS, family

log = logging.getLogger("llm_summarizer.scoring")

TOKENIZERS = ("auto", "default", "unicode", "chars")
LSUM_SPLITS = ("regex", "punkt", "newline")

_TOKENIZER_WORDS = {
    "default": "rouge-score default (lowercase, non-[a-z0-9] to spaces, Porter stemming of words over 3 letters)",
    "unicode": "Unicode words (lowercase letters and digits of any script; ASCII words Porter-stemmed as rouge-score)",
    "chars": "Unicode words, each character of scripts without spaces (CJK, kana, Thai, Lao, Khmer, Myanmar) a token",
}
_SPLIT_WORDS = {
    "regex": "newlines, and . ! ? followed by whitespace and a capital, digit or opening quote, except after an "
    "abbreviation or an initial",
    "punkt": "newlines, and nltk's trained punkt sentence splitter",
    "newline": "newlines only",
}

# Scripts written without spaces between words.
_NO_SPACE = re.compile(
    "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\U00020000-\U0002ebef]"
)
_WORD = re.compile(r"[^\W_]+")
_ASCII_WORD = re.compile(r"[a-z0-9]+")

_SENT_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9#\u0400-\u042f])|(?<=[。！？])\s*")
_ABBREVIATIONS = frozenset(
    """
mr mrs ms dr prof sr jr st mt vs etc al fig figs eq eqs no nos vol pp ed eds approx dept inc ltd co corp gen
col lt sgt capt rev est jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun
e.g i.e cf viz ca
""".split()
)


@dataclass(frozen=True)
class Protocol:
    """How ROUGE is computed; `tokenizer` is never `auto` here (it is resolved against the references)."""

    tokenizer: str = "default"
    lsum_split: str = "regex"

    def describe(self) -> dict:
        return {
            "package": "rouge-score",
            "measure": "F1 (fmeasure)",
            "use_stemmer": True,
            "tokenizer": self.tokenizer,
            "tokenizer_rule": _TOKENIZER_WORDS[self.tokenizer],
            "rougeLsum_sentence_split": self.lsum_split,
            "rougeLsum_split_rule": _SPLIT_WORDS[self.lsum_split],
            "aggregation": "mean over examples",
            "metrics": {m.key: f"{m.label} {m.measure}: {m.description}; {m.aggregate}" for m in BY_KEY.values()},
        }


def _letters(texts: Iterable[str]) -> tuple[int, int, int]:
    """Letters and digits in `texts`: all of them, those outside ASCII, those of scripts without spaces."""
    letters = non_ascii = no_space = 0
    for t in texts:
        if t.isascii():
            letters += sum(ch.isalnum() for ch in t)
            continue
        for ch in t:
            if ch.isalnum():
                letters += 1
                if not ch.isascii():
                    non_ascii += 1
                    if _NO_SPACE.match(ch):
                        no_space += 1
    return letters, non_ascii, no_space


def resolve_tokenizer(name: str, references: Iterable[str]) -> str:
    """The tokenizer `auto` stands for on these references (other names are returned as they are)."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown ROUGE tokenizer {name!r}; use one of {', '.join(TOKENIZERS)}")
    if name != "auto":
        return name
    letters, non_ascii, no_space = _letters(references)
    if non_ascii * 200 < letters or not letters:
        return "default"  # English (a stray accented name is under 0.5% of the letters)
    return "chars" if no_space * 3 >= letters else "unicode"


def protocol_for(references: Iterable[str], tokenizer: str = "auto", lsum_split: str = "regex") -> Protocol:
    if lsum_split not in LSUM_SPLITS:
        raise ValueError(f"unknown ROUGE-Lsum sentence split {lsum_split!r}; use one of {', '.join(LSUM_SPLITS)}")
    if lsum_split == "punkt":
        try:
            _punkt()
        except LookupError as e:
            raise UserError(str(e)) from None
    return Protocol(resolve_tokenizer(tokenizer, references), lsum_split)


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem import porter  # what rouge-score's default tokenizer stems with

    return porter.PorterStemmer()


class UnicodeTokenizer:
    """rouge-score's tokenizer interface (`tokenize(text) -> list[str]`) for words of any script."""

    def __init__(self, split_no_space_scripts: bool, stem: bool = True):
        self.split = split_no_space_scripts
        self.stem = stem

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text).lower()
        out = []
        for w in _WORD.findall(text):
            if self.split and _NO_SPACE.search(w):
                run = []
                for ch in w:
                    if _NO_SPACE.match(ch):
                        if run:
                            out.append(self._stem("".join(run)))
                            run = []
                        out.append(ch)
                    else:
                        run.append(ch)
                if run:
                    out.append(self._stem("".join(run)))
            else:
                out.append(self._stem(w))
        return out

    def _stem(self, w: str) -> str:
        return _stemmer().stem(w) if self.stem and len(w) > 3 and _ASCII_WORD.fullmatch(w) else w


@lru_cache(maxsize=4)
def _scorer(tokenizer: str):
    if tokenizer == "default":
        return rouge_scorer.RougeScorer(list(family("rouge")), use_stemmer=True)
    return rouge_scorer.RougeScorer(list(family("rouge")), tokenizer=UnicodeTokenizer(tokenizer == "chars"))


def tokens(text: str, tokenizer: str) -> list[str]:
    """The tokens ROUGE compares for `text` under a resolved tokenizer name."""
    return _scorer(tokenizer)._tokenizer.tokenize(text)


@lru_cache(maxsize=4)
def _word_tokenizer(tokenizer: str):
    if tokenizer == "default":
        return rouge_tokenizers.DefaultTokenizer(use_stemmer=False)
    return UnicodeTokenizer(tokenizer == "chars", stem=False)


def word_tokens(text: str, tokenizer: str) -> list[str]:
    """The tokens of `tokenizer` before stemming: the same split and lowercasing as ROUGE's, each word as written
    (what a copied span is made of: "runs" and "run" are different words of a document)."""
    return _word_tokenizer(tokenizer).tokenize(text)


def _regex_split(para: str) -> list[str]:
    out, start = [], 0
    for m in _SENT_END.finditer(para):
        before = para[start : m.start()]
        last = before.rsplit(None, 1)[-1] if before.split() else ""
        word = last.rstrip(".").lstrip("\"'([").lower()
        if (
            last.endswith(".")
            and last != "I."
            and (word in _ABBREVIATIONS or re.fullmatch(r"(?:[^\W\d_]\.)*[^\W\d_]", word))
        ):
            continue  # "Dr. Smith", "U.S. Army", "J. Smith": not a sentence end
        out.append(before)
        start = m.end()
    out.append(para[start:])
    return [s.strip() for s in out if s.strip()]


@lru_cache(maxsize=1)
def _punkt():
    # nltk only for ROUGE-Lsum's sentence splitting
    import nltk

    try:
        return nltk.data.load("tokenizers/punkt_tab/english/")
    except (LookupError, OSError, ValueError):
        try:
            return nltk.data.load("tokenizers/punkt/english.pickle")
        except (LookupError, OSError, ValueError):
            raise LookupError(
                "eval.rouge_lsum_split=punkt needs nltk's punkt data, which is not installed: run "
                "`python -m nltk.downloader punkt_tab` where a network is reachable, or use "
                "eval.rouge_lsum_split=regex"
            ) from None


def punkt_available() -> bool:
    try:
        _punkt()
        return True
    except LookupError:
        return False


def split_sentences(text: str, how: str = "regex") -> str:
    """One sentence per line, for ROUGE-Lsum; existing newlines are kept as boundaries."""
    lines = []
    for para in text.strip().split("\n"):
        para = para.strip()
        if not para:
            continue
        if how == "newline":
            lines.append(para)
        elif how == "punkt":
            lines.extend(s.strip() for s in _punkt().tokenize(para) if s.strip())
        else:
            lines.extend(_regex_split(para))
    return "\n".join(lines)


def example_stats(reference: str, prediction: str, protocol: Protocol) -> dict[str, tuple]:
    """Each registered metric's statistics of one pair (metrics.py): ROUGE's in one rouge-score pass."""
    s = _scorer(protocol.tokenizer).score(
        split_sentences(reference, protocol.lsum_split), split_sentences(prediction, protocol.lsum_split)
    )
    return {
        m.key: (s[m.key].fmeasure,) if m.family == "rouge" else tuple(m.stats(reference, prediction))
        for m in BY_KEY.values()
    }


def rouge_f1(reference: str, prediction: str, key: str, protocol: Protocol) -> float:
    """One ROUGE F1 of one pair (the same scorer and sentence split as every score; the GRPO reward reads it)."""
    s = _scorer(protocol.tokenizer).score(
        split_sentences(reference, protocol.lsum_split), split_sentences(prediction, protocol.lsum_split)
    )
    return float(s[key].fmeasure)


def score_pair(reference: str, prediction: str, protocol: Optional[Protocol] = None) -> dict[str, float]:
    """Every registered metric of one pair; without a protocol, `auto` is resolved on this reference alone."""
    st = example_stats(reference, prediction, protocol or protocol_for([reference]))
    return {k: BY_KEY[k].score(st[k]) for k in KEYS}


@dataclass
class Scores:
    """A set of pairs scored: the corpus score of each metric, each example's own, and the statistics the
    bootstrap resamples (key -> array of shape (examples, statistics))."""

    means: dict[str, float]
    per: list[dict[str, float]]
    stats: dict[str, np.ndarray] = field(repr=False)


def score_all(references: list[str], predictions: list[str], protocol: Optional[Protocol] = None) -> Scores:
    """Every registered metric over the pairs (`auto` resolved on all references)."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    p = protocol or protocol_for(references)
    ex = [example_stats(r, x, p) for r, x in zip(references, predictions)]
    n = len(ex)
    means, stats = {}, {}
    for k in KEYS:
        rows = [e[k] for e in ex]
        width = len(rows[0]) if rows else 1
        # sums in Python's order (a mean over examples exactly as it always was)
        sums = [sum(r[j] for r in rows) for j in range(width)]
        means[k] = BY_KEY[k].score(sums, max(1, n))
        stats[k] = np.array(rows, dtype=float).reshape(n, width)
    per = [{k: BY_KEY[k].score(e[k]) for k in KEYS} for e in ex]
    return Scores(means, per, stats)


def score_corpus(
    references: list[str], predictions: list[str], protocol: Optional[Protocol] = None
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The corpus score of each registered metric, and the per-example scores (`auto` resolved on all
    references)."""
    s = score_all(references, predictions, protocol)
    return s.means, s.per


def empty_references(references: list[str], protocol: Protocol) -> int:
    """How many references have no token under the protocol (they score 0 whatever the model writes)."""
    return sum(1 for r in references if not tokens(r, protocol.tokenizer))


def warn_empty_references(references: list[str], protocol: Protocol, split: str) -> int:
    n = empty_references(references, protocol)
    if n:
        log.warning(
            "%d of %d %sreferences have no ROUGE token under the %s tokenizer, so they score 0 whatever "
            "the model writes; set eval.rouge_tokenizer=unicode (or chars for Chinese, Japanese, Thai)",
            n,
            len(references),
            f"{split} " if split else "",
            protocol.tokenizer,
        )
    return n
