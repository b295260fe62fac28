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
    # (without dropping repeats: the windows' overlapping lines would be dropped, and the rounds would shrink)
    (out,) = summarize_long([LONG], formatter, formatter, ev(max_merge_rounds=3, dedup_sentences=False), 16, gen)
    tree = out.tree
    assert out.method == "chunked" and tree["cut"] and out.truncated_input
    assert tree["merge_rounds"] == 1 and len(gen.calls) == 2  # no progress: cut at once, no useless rounds
    assert tree["rounds"][-1][0]["cut"] and "cut to one window" in tree["how"]
    # summaries that shrink, but slowly: the rounds stop at eval.max_merge_rounds
    slow = Recorder(lambda t: " ".join(t.split()[: max(1, len(t.split()) * 2 // 3)]))
    (out,) = summarize_long(
        [LONG * 3], formatter, formatter, ev(max_merge_rounds=2, max_chunks=500, dedup_sentences=False), 16, slow
    )
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

    # the window of the tiny model's training length (its config reads 8k: the default window would hold it all)
    loaded = load_for_generation(tiny_run.model_dir, overrides=["eval.max_window_tokens=256"])
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
    # refine: as deterministic, the same short document unchanged, one generation per window
    refine = load_for_generation(
        tiny_run.model_dir, overrides=["eval.max_window_tokens=256", "eval.chunk_strategy=refine"]
    )
    a = summarize_texts(refine, [long_doc, DOCS[20]], 24)
    assert a == summarize_texts(refine, [long_doc, DOCS[20]], 24) and a[1] == chunked[1]
    assert a[0].tree["strategy"] == "refine" and a[0].tree["generations"] == a[0].tree["windows"] > tree["windows"]
    # a window as long as the model reads (its config: 8k), capped at 4k: the document is one window
    wide = load_for_generation(tiny_run.model_dir, overrides=["eval.max_window_tokens=4096"])
    assert summarize_texts(wide, [long_doc], 24)[0].method == "whole"


# ---- windows from the model, merge prompt, repeats, refine, the cost (issue: long documents) -------------------


def test_repeated_sentences_are_dropped_across_and_within_texts():
    from llm_summarizer.models.chunked import dedup_sentences

    texts = [
        "Grad A tells Grad B that the task is done in a hurry. The budget is due on Friday.",
        "grad a tells grad b that the task is done in a hurry! They agree on a new schedule.",
        "The team agrees on a new schedule for the demo. OK.",  # 6 of 8 words (75%) seen: kept
        "OK. The budget is due on Friday, Grad B says.",  # "OK." again (same words): dropped; 6/8 of the 2nd: kept
        "They agree on the new schedule.",  # 5 of 6 words (83%) in one earlier sentence: dropped
        "",
    ]
    out, dropped = dedup_sentences(texts)
    assert out == [
        "Grad A tells Grad B that the task is done in a hurry. The budget is due on Friday.",
        "They agree on a new schedule.",
        "The team agrees on a new schedule for the demo. OK.",
        "The budget is due on Friday, Grad B says.",
        "",
        "",
    ]
    assert dropped == 3
    assert dedup_sentences(["会议开始。会议开始。预算通过。"])[0] == ["会议开始。 预算通过。"]  # any script: same words


def test_merge_reads_the_joined_summaries_once_under_a_prompt_of_its_own(formatter):
    from llm_summarizer.models.chunked import MERGE_INSTRUCTION

    merge = Formatter(formatter.tok, formatter.data.model_copy(update={"instruction": MERGE_INSTRUCTION}), 128)
    seen = {}

    class ByPrompt(Recorder):
        def __call__(self, texts, fmt, report):
            seen.setdefault(fmt.data.instruction, []).extend(texts)
            return super().__call__(texts, fmt, report)

    gen = ByPrompt(lambda t: "The meeting is about the budget. " + first_words(t))
    (out,) = summarize_long([LONG], formatter, merge, ev(), 16, gen)
    assert set(seen) == {formatter.data.instruction, MERGE_INSTRUCTION}  # windows: training prompt; merges: its own
    first_merge = seen[MERGE_INSTRUCTION][0]
    assert first_merge.count("The meeting is about the budget.") == 1  # the repeated sentence read once
    tree = out.tree
    assert tree["dropped_repeated_sentences"] >= tree["windows"] - 1
    assert out.text.count("The meeting is about the budget.") == 1
    read = [c for node in tree["rounds"][1] for c in node["from"]]
    assert set(read) == {p["id"] for p in tree["rounds"][0]}  # a summary emptied by dedup is still accounted for


def test_refine_updates_the_running_summary_window_by_window(formatter):
    from llm_summarizer.models.chunked import REFINE_DOCUMENT, plan_cost

    refine_fmt = Formatter(formatter.tok, formatter.data.model_copy(update={"instruction": "Update."}), 256)
    window_fmt = Formatter(formatter.tok, formatter.data, 256)
    e = ev(chunk_strategy="refine")

    def summarize(text):  # the summary so far (if any) plus the first word of the next part: state carried on
        if text.startswith("Summary so far:"):
            so_far, part = text[len("Summary so far:\n") :].split("\n\nNext part:\n", 1)
            return so_far + " " + part.split()[0]
        return text.split()[0]

    gen, seen = Recorder(summarize), []
    docs = [LONG, DOCS[40], LONG[: len(LONG) // 2]]
    cost = plan_cost(docs, window_fmt, window_fmt, e, 16, refine_formatter=refine_fmt)
    out = summarize_long(
        docs, window_fmt, window_fmt, e, 16, gen, progress=lambda d, t: seen.append((d, t)), refine_formatter=refine_fmt
    )
    tree = out[0].tree
    assert out[1].method == "whole" and out[0].method == out[2].method == "chunked"
    assert tree["strategy"] == "refine" and tree["merge_rounds"] == 0 and "refine" in tree["how"]
    nodes = [r[0] for r in tree["rounds"]]
    assert len(nodes) == tree["windows"] == tree["generations"] >= 3
    assert [n["from"] for n in nodes[1:]] == [[p["id"]] for p in nodes[:-1]]  # each update read the one before
    firsts = [LONG[a:b].split()[0] for a, b in (n["span"] for n in nodes)]
    assert out[0].text == " ".join(firsts)  # every window's first word, in order: the summary went through all
    assert REFINE_DOCUMENT.split("{")[0] in gen.calls[1][0]
    # documents side by side: one call per window index, the shorter document leaving when it ends
    assert len(gen.calls) == tree["windows"] and len(gen.calls[-1]) == 1
    # the cost said before: exactly these generations, and progress knew the total from the start
    assert cost.exact and cost.generations == sum(len(c) for c in gen.calls) == seen[-1][0]
    assert {t for _, t in seen} == {cost.generations}
    assert cost.windows == tree["windows"] + out[2].tree["windows"] and cost.chunked == 2


def test_map_reduce_cost_is_an_upper_bound_on_the_generations_run(formatter):
    from llm_summarizer.models.chunked import plan_cost

    docs = [LONG, DOCS[40], LONG * 2]
    for e, summarize in [
        (ev(), first_words),
        (ev(max_chunks=500), lambda t: " ".join(t.split()[:12])),  # summaries near max_new_tokens: more merges
        (ev(max_merge_rounds=1), lambda t: t),
    ]:
        gen = Recorder(summarize)
        cost = plan_cost(docs, formatter, formatter, e, 16)
        summarize_long(docs, formatter, formatter, e, 16, gen)
        ran = sum(len(c) for c in gen.calls)
        assert not cost.exact and ran <= cost.generations, (ran, cost)
        assert cost.windows == len(gen.calls[0]) - 1 and "at most" in cost.describe()
    whole = plan_cost([DOCS[40]], formatter, formatter, ev(), 16)
    assert whole.exact and whole.generations == 1 and whole.chunked == 0


def test_refine_windows_leave_room_for_the_summary_so_far(formatter):
    small = Formatter(formatter.tok, formatter.data, 80)
    with pytest.raises(UserError, match=r"chunk_strategy=refine: a window of \d+ document tokens leaves"):
        summarize_long([LONG], small, small, ev(chunk_strategy="refine"), 16, Recorder(first_words))


class _Cfg:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.mark.parametrize(
    "context,cap,max_seq,want",
    [
        (2048, 4096, 256, 2048),  # the model reads 2k: its context
        (8192, 2048, 256, 2048),  # 8k: capped by eval.max_window_tokens
        (None, 2048, 256, 2048),  # no context in the config: the cap (the tokenizer's 1e30 placeholder is ignored)
        (8192, 2048, 4096, 4096),  # never below what the model was trained with
    ],
)
def test_window_length_from_the_model_config(context, cap, max_seq, want, formatter):
    from llm_summarizer.models.generation import model_context, window_length

    config = _Cfg(**({"max_position_embeddings": context} if context else {}))
    tok = _Cfg(model_max_length=int(1e30))
    cfg = load_config("tiny", [f"eval.max_window_tokens={cap}", f"model.max_seq_length={max_seq}"])
    loaded = _Cfg(cfg=cfg, formatter=formatter, model=_Cfg(config=config), tokenizer=tok)
    length, why = window_length(loaded, 16)
    assert length == want
    assert ("context" in why) == (context is not None and context < cap and want == context)
    assert model_context(_Cfg(n_positions=1024), None) == (1024, "the model config's n_positions")
    assert model_context(None, _Cfg(model_max_length=4096))[0] == 4096
    chunk = load_config("tiny", ["eval.chunk_tokens=300"])
    assert window_length(_Cfg(cfg=chunk, formatter=formatter, model=None, tokenizer=None), 16)[0] == (
        formatter.template_tokens + 300 + 16
    )


def test_a_gpu_window_is_capped_by_what_its_free_memory_holds():
    from llm_summarizer.models.generation import kv_bytes_per_token, memory_window

    # SmolLM2-135M: 30 layers, 3 key/value heads of 64: 2 x 30 x 3 x 64 x 2 bytes = 23,040 bytes a token
    smol = _Cfg(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576)
    assert kv_bytes_per_token(smol) == 23040
    assert memory_window(smol, 8, 1 * 2**30) == int(2**29 // (23040 * 8))  # 1 GiB free, 8 rows: 2,912 tokens
    assert memory_window(smol, 8, None) is None  # the CPU: no memory cap
