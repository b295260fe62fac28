"""Chunked summarization of documents over the token budget (models/chunked.py, eval.long_documents=chunk)."""

import json

import pytest

from llm_summarizer.config_loading import load_config
from llm_summarizer.data import rows as R
from llm_summarizer.data.prompt import Formatter
from llm_summarizer.errors import UserError
from llm_summarizer.models.chunked import summarize_long
from llm_summarizer.models.generation import Generated

from ..conftest import DEMO, read_jsonl

DOCS = [r["document"] for r in read_jsonl(DEMO / "validation.jsonl")]
LONG = "\n".join(DOCS[:30])  # thirty news items, one per line: far over a 128-token window


@pytest.fixture(scope="module")
def formatter(models_dir):
    from llm_summarizer.models.loading import load_tokenizer

    cfg = load_config("tiny", [f"model.cache_dir={models_dir}"])
    return Formatter(load_tokenizer(cfg, R.load_raw_splits(cfg)), cfg.data, 128)


def ev(**kw):
    return load_config("tiny", [f"eval.{k}={v}" for k, v in kw.items()]).eval


class Recorder:
    """A stand-in for the model that keeps what it was asked: each call's texts; it answers `summarize(text)`."""

    def __init__(self, summarize):
        self.summarize, self.calls = summarize, []

    def __call__(self, texts, formatter, report):
        self.calls.append(list(texts))
        out = []
        for i, t in enumerate(texts):
            s = self.summarize(t)
            out.append(Generated(text=s, new_tokens=len(s.split()), hit_max=False, truncated_input=False))
            report(i + 1, len(texts))
        return out


def first_words(text):
    return " ".join(text.split()[:6])


def test_tree_covers_the_document_and_each_merge_names_what_it_read(formatter):
    gen = Recorder(first_words)
    seen = []
    out = summarize_long(
        [LONG, DOCS[40]], formatter, formatter, ev(chunk_overlap=16), 16, gen, progress=lambda d, t: seen.append((d, t))
    )
    short, long_ = out[1], out[0]
    assert short.method == "whole" and short.tree is None and short.text == first_words(DOCS[40])
    tree = long_.tree
    assert long_.method == "chunked" and tree["windows"] == len(tree["rounds"][0]) > 3
    first = tree["rounds"][0]
    assert first[0]["span"][0] == 0 and first[-1]["span"][1] == len(LONG)
    for a, b in zip(first, first[1:]):
        assert b["span"][0] <= a["span"][1]  # no gap between windows
        assert a["summary"] == first_words(LONG[a["span"][0] : a["span"][1]])  # each window summarized alone
    for prev, cur in zip(tree["rounds"], tree["rounds"][1:]):
        read = [c for node in cur for c in node["from"]]
        assert set(read) == {p["id"] for p in prev}  # every partial summary is read by a merge
    assert len(tree["rounds"][-1]) == 1 and long_.text == tree["rounds"][-1][0]["summary"]
    assert tree["generations"] == sum(len(r) for r in tree["rounds"]) and not tree["cut"]
    assert "windows of at most" in tree["how"] and f"{tree['merge_rounds']} merge round" in tree["how"]
    # one call for all windows and the short document together, then one per merge round
    assert len(gen.calls[0]) == tree["windows"] + 1 and len(gen.calls) == 1 + tree["merge_rounds"]
    assert seen[-1][0] == seen[-1][1] == sum(len(c) for c in gen.calls)  # progress counted every generation


def test_merge_rounds_are_bounded_when_summaries_do_not_shrink(formatter):
    gen = Recorder(lambda t: t)  # a "summary" as long as its input: the rounds can never converge
    (out,) = summarize_long([LONG], formatter, formatter, ev(max_merge_rounds=3), 16, gen)
    tree = out.tree
    assert out.method == "chunked" and tree["cut"] and out.truncated_input
    assert tree["merge_rounds"] == 1 and len(gen.calls) == 2  # no progress: cut at once, no useless rounds
    assert tree["rounds"][-1][0]["cut"] and "cut to one window" in tree["how"]
    # summaries that shrink, but slowly: the rounds stop at eval.max_merge_rounds
    slow = Recorder(lambda t: " ".join(t.split()[: max(1, len(t.split()) * 2 // 3)]))
    (out,) = summarize_long([LONG * 3], formatter, formatter, ev(max_merge_rounds=2, max_chunks=500), 16, slow)
    assert out.tree["cut"] and out.tree["merge_rounds"] == 2 and len(slow.calls) == 3
    assert len(out.tree["rounds"][1]) > 1  # the second round was needed, and was the last


def test_deterministic_given_the_same_generations(formatter):
    a = summarize_long([LONG], formatter, formatter, ev(), 16, Recorder(first_words))
    b = summarize_long([LONG], formatter, formatter, ev(), 16, Recorder(first_words))
    assert a == b


def test_bad_documents_and_budgets_are_one_clear_message(formatter):
    gen = Recorder(first_words)
    with pytest.raises(UserError, match=r"notes\.txt: the document is empty"):
        summarize_long(["fine", "  \n "], formatter, formatter, ev(), 16, gen, names=["a.txt", "notes.txt"])
    with pytest.raises(UserError, match=r"document 1 of 1: \d+ tokens need \d+ windows .* eval\.max_chunks=3"):
        summarize_long([LONG], formatter, formatter, ev(max_chunks=3), 16, gen)
    with pytest.raises(UserError, match="leaves no room for a document: the prompt takes"):
        summarize_long([LONG], formatter, formatter, ev(), 200, gen)
    assert gen.calls == []  # refused before anything was generated


def test_real_model_chunked_summary_is_deterministic_and_short_documents_are_unchanged(tiny_run):
    from llm_summarizer.models.generation import summarize_texts
    from llm_summarizer.models.loading import load_for_generation

    loaded = load_for_generation(tiny_run.model_dir)
    long_doc = "\n".join(DOCS[:12])
    chunked = summarize_texts(loaded, [long_doc, DOCS[20]], 24)
    again = summarize_texts(loaded, [long_doc, DOCS[20]], 24)
    truncated = summarize_texts(loaded, [long_doc, DOCS[20]], 24, long_documents="truncate")
    assert chunked == again  # greedy: the same tree and texts
    assert chunked[0].method == "chunked" and truncated[0].method == "truncated" and truncated[0].truncated_input
    assert chunked[1] == truncated[1] and chunked[1].method == "whole"  # a document that fits: the same either way
    tree = chunked[0].tree
    assert tree["windows"] >= 3 and all(n["summary"] for r in tree["rounds"] for n in r)
    assert json.loads(json.dumps(tree)) == tree  # the tree is plain JSON
