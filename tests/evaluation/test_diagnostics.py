"""The statistics of each summary against its document: hand-worked fragments (Grusky et al. 2018), identities,
numbers and names, other scripts, empty inputs, the words at the end of a run, and the `evaluate` module."""

import json
import random
import socket

import pytest

from llm_summarizer.evaluation import diagnostics as D


def published_fragments(a: list, s: list) -> list[tuple[int, int, int]]:
    """Algorithm 1 of Grusky et al. (2018) written out as the paper's loop (the oracle for the indexed version)."""
    out, i = [], 0
    while i < len(s):
        best, j = None, 0
        while j < len(a):
            if s[i] == a[j]:
                i2, j2 = i, j
                while i2 < len(s) and j2 < len(a) and s[i2] == a[j2]:
                    i2, j2 = i2 + 1, j2 + 1
                if best is None or i2 - i > best[2]:
                    best = (i, j, i2 - i)
                j = j2
            else:
                j += 1
        if best:
            out.append(best)
            i += best[2]
        else:
            i += 1
    return out


def test_fragments_by_hand():
    doc = "the cat sat on the mat".split()
    # "the cat" copied, "lay" new, "on the mat" copied: coverage 5/6, density (2^2 + 3^2)/6, compression 6/6
    assert D.fragments(doc, "the cat lay on the mat".split()) == [(0, 0, 2), (3, 3, 3)]
    assert D.fragment_stats(doc, "the cat lay on the mat".split()) == pytest.approx(
        {"coverage": 5 / 6, "density": 13 / 6, "compression": 1.0}
    )
    # a tie: "x y" twice in the document; the earliest place is kept (a later run must be longer to replace it)
    assert D.fragments("x y z x y".split(), "x y".split()) == [(0, 0, 2)]
    # a repeated phrase in the summary is two fragments of the same document span
    assert D.fragments("a b c".split(), "a b a b".split()) == [(0, 0, 2), (2, 0, 2)]
    assert D.fragment_stats("a b c".split(), "a b a b".split())["density"] == pytest.approx(2.0)
    # the published scan resumes after a run, so it never tries the longer "a a b" starting inside "a a a"
    assert D.fragments("a a a b".split(), "a a b".split()) == [(0, 0, 2), (2, 3, 1)]
    assert D.fragment_stats("a a a b".split(), "a a b".split())["density"] == pytest.approx(5 / 3)
    # the longest of several runs wins: "b c d" at 4 beats "b c" at 1
    assert D.fragments("a b c x b c d".split(), "b c d".split()) == [(0, 4, 3)]
    # nothing shared
    assert D.fragment_stats("a b".split(), "c d".split()) == {"coverage": 0.0, "density": 0.0, "compression": 1.0}


def test_fragments_equal_the_published_loop_and_the_identities_hold():
    rng = random.Random(7)
    for _ in range(400):
        vocab = "abcde"[: rng.randint(1, 5)]
        a = [rng.choice(vocab) for _ in range(rng.randint(0, 30))]
        s = [rng.choice(vocab + "z") for _ in range(rng.randint(1, 15))]
        assert D.fragments(a, s) == published_fragments(a, s), (a, s)
        st = D.fragment_stats(a, s)
        if a:
            assert 0.0 <= st["coverage"] <= 1.0 and st["density"] >= st["coverage"]
    doc = "a storm closed the harbour for two days and ships waited outside".split()
    assert D.fragment_stats(doc, doc) == {"coverage": 1.0, "density": float(len(doc)), "compression": 1.0}
    span = doc[3:8]
    assert D.fragment_stats(doc, span)["density"] == pytest.approx(len(span))


def test_one_summary_all_statistics():
    doc = (
        "Kestrel Media, a media company based in Leeds, said on Tuesday that its revenue rose 4 percent to "
        "1,000 million dollars. Chief executive Tom Becker said the result was due to a weak currency."
    )
    summary = "Kestrel Media revenue rose 4.0 percent to 1000 million dollars, said Tom Becker in Paris in 2024."
    x = D.example(summary, doc, "Kestrel Media revenue rose 4 percent.", hit_max_new_tokens=False)
    assert x["unsupported"] == {"numbers": ["2024"], "names": ["Paris"]}  # 4.0 = 4 and 1000 = 1,000 are there
    assert x["unsupported_numbers"] == 1.0 and x["unsupported_names"] == 1.0
    assert x["lead_copy"] == 0.0 and x["cut_by_max_new_tokens"] == 0.0 and x["notes"] == []
    s_tok = D.word_tokens(summary, "default")
    assert x["length_ratio"] == pytest.approx(len(s_tok) / 6)
    assert x["novel_1gram"] == pytest.approx(sum(t not in D.word_tokens(doc, "default") for t in s_tok) / len(s_tok))
    lead = D.example("Kestrel Media, a media company, grew.", doc)
    assert lead["lead_copy"] == 1.0
    assert D.example("the the the the the", doc)["repeated_3gram"] == pytest.approx(2 / 3)
    assert D.example("a b c d", "a b c d")["novel_4gram"] == 0.0
    assert D.example("a b c", "a b c d")["novel_4gram"] is None  # no 4-gram in a 3-word summary


def test_numbers_and_names_follow_the_stated_rules():
    assert D.numbers("1,000 and 3.0 and 3.50 and 007, Person1, GPT4, COVID-19 and 2,5") == {
        "1000",
        "3",
        "3.5",
        "7",
        "19",
        "2",
        "5",
    }
    # capitalised words not opening a sentence; "She" opens one, "Monday" does not
    assert D.name_like("Talks resumed with Acme on Monday. She agreed: Bob left.") == ["Acme", "Monday"]
    # DialogSum's speaker tags are in the document, so they are not unsupported
    x = D.example("#Person1# asks #Person2# about the trip to Rome.", "#Person1#: Hi. #Person2#: Hello, I was in Rome.")
    assert x["unsupported_names"] == 0.0


def test_russian_and_chinese():
    doc = "Компания Рога объявила в Москве о снижении цен на 15 процентов в следующем году."
    x = D.example("Компания объявила о снижении цен на 20 процентов, сказал Иванов.", doc, tokenizer="unicode")
    assert x["unsupported"] == {"numbers": ["20"], "names": ["Иванов"]}
    assert 0 < x["coverage"] < 1 and x["density"] >= x["coverage"]
    assert D.example(doc, doc, tokenizer="unicode")["density"] == len(D.word_tokens(doc, "unicode"))
    zh_doc = "公司宣布明年降低电动汽车的价格。"
    z = D.example("公司宣布降低价格。", zh_doc, "公司降低价格", tokenizer="chars")
    # 公司宣布 (4 characters) and 降低 (2) copied, 价格 (2) copied: 8 of 8 characters, fragments 4 + 2 + 2
    assert z["coverage"] == 1.0 and z["density"] == pytest.approx((16 + 4 + 4) / 8)
    assert z["unsupported_names"] is None  # no capitals in the script: no value, not 0
    assert z["length_ratio"] == pytest.approx(8 / 6)
    # under rouge-score's ASCII tokenizer Chinese has no tokens at all: a note, not a division by zero
    assert D.example("公司宣布降低价格。", zh_doc, tokenizer="default")["notes"] == [
        "summary has no default tokens",
        "document has no default tokens",
    ]


def test_empty_summaries_and_documents_have_no_value_and_a_note():
    e = D.example("", "a document", "a reference", hit_max_new_tokens=True)
    assert all(e[k] is None for k in D.DIAGNOSTIC_KEYS if k != "cut_by_max_new_tokens")
    assert e["cut_by_max_new_tokens"] == 1.0 and e["notes"] == ["empty summary"]
    d = D.example("a summary", "  ", "a reference")
    assert d["coverage"] is None and d["density"] is None and d["compression"] is None and d["novel_1gram"] is None
    assert d["length_ratio"] == 1.0 and d["notes"] == ["empty document"]
    per = D.corpus(["", "a b"], ["x", "a b"])
    m = D.means(per)
    assert m["coverage"] == 1.0 and m["length_ratio"] is None  # over the one summary with a value; no references
    assert D.note_counts(per) == {"empty summary": 1}
    assert D.means([])["coverage"] is None


def test_end_of_run_words():
    refs = {"density": 1.5, "coverage": 0.7}
    words = D.warnings(
        {"density": 12.0, "coverage": 0.98, "unsupported_numbers": 0.5}, {"unsupported_numbers": 0.1}, refs
    )
    assert len(words) == 2
    assert "copies much more than the references do" in words[0] and "12.0" in words[0] and "1.5" in words[0]
    assert "more numbers that are not in the document than the base model: 0.50 per summary against 0.10" in words[1]
    assert D.warnings({"density": 2.0, "unsupported_numbers": 0.0}, {"unsupported_numbers": 0.0}, refs) == []


def test_bootstrap_block_and_paired_difference():
    from llm_summarizer.evaluation.bootstrap import diagnostics_block, paired_diagnostics

    docs = ["a b c d e f", "a b c d e f", "x y z", ""]
    model = D.corpus(["a b c d", "a b x", "q r", "z"], docs)
    base = D.corpus(["a b c d e f", "a b c", "x y z", "z"], docs)
    b = diagnostics_block(model, 200, 1)
    cov = b["stats"]["coverage"]
    assert cov["examples"] == 3 and cov["mean"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert cov["ci95"][0] <= cov["mean"] <= cov["ci95"][1]
    assert b["stats"]["length_ratio"] == {"mean": None, "ci95": None, "examples": 0}
    assert b["notes"] == {"empty document": 1}
    d = paired_diagnostics(model, base, 200, 1)["density"]
    assert d["examples"] == 3 and d["diff"] == pytest.approx(((16 / 4 - 36 / 6) + (4 / 3 - 9 / 3) + (0 - 9 / 3)) / 3)


def test_evaluate_module_loads_offline_and_equals_score(tmp_path, monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    from llm_summarizer.commands import score

    def no_network(*a, **k):
        raise OSError("no network in this test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(socket.socket, "connect", no_network)
    rows = [
        {
            "id": 1,
            "document": "Revenue rose 4 percent to 1,000 dollars in Leeds, Acme said.",
            "reference": "Acme revenue rose 4 percent.",
            "prediction": "Acme revenue rose 5 percent in Paris.",
            "hit_max_new_tokens": False,
        },
        {
            "id": 2,
            "document": "Компания Рога снизила цены на 15 процентов.",
            "reference": "Рога снизила цены.",
            "prediction": "Компания Рога снизила цены на 15 процентов.",
            "hit_max_new_tokens": True,
        },
        {
            "id": 3,
            "document": "The storm closed the harbour for two days.",
            "reference": "A storm shut the port.",
            "prediction": "",
            "hit_max_new_tokens": False,
        },
    ]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "s.json"
    assert score.main([str(f), "--output", str(out), "--bootstrap-samples", "100"]) == 0
    cli = json.loads(out.read_text())["results"]["model"]
    metric = evaluate.load(str(D.EVALUATE_MODULE))
    got = metric.compute(
        predictions=[r["prediction"] for r in rows],
        references=[r["reference"] for r in rows],
        documents=[r["document"] for r in rows],
        hit_max_new_tokens=[r["hit_max_new_tokens"] for r in rows],
    )
    assert got["rouge_tokenizer"] == "unicode"  # Russian in the references: any language
    for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert got[k] == pytest.approx(cli[k]["f1"], abs=1e-12)
    for k in D.DIAGNOSTIC_KEYS:
        assert got[k] == pytest.approx(cli["diagnostics"]["stats"][k]["mean"], abs=1e-12), k
    assert got["unsupported_numbers"] == pytest.approx(0.5) and got["cut_by_max_new_tokens"] == pytest.approx(1 / 3)
    assert got["notes"] == cli["diagnostics"]["notes"] == {"empty summary": 1}


def test_one_summary_for_a_page():
    shown = D.for_display(
        "Acme sold 5 ships to Oslo.", "Acme, the shipyard, sold 4 ships to Bergen last year.", hit_max_new_tokens=True
    )
    assert shown["tokenizer"] == "default" and shown["unsupported"] == {"numbers": ["5"], "names": ["Oslo"]}
    assert shown["shown"]["cut_by_max_new_tokens"] == "100.0%" and shown["values"]["length_ratio"] is None
    assert shown["labels"]["coverage"].startswith("extractive fragment coverage")
    assert D.for_display("Компания продала суда.", "Компания продала суда в Осло.")["tokenizer"] == "unicode"


def test_reward_gaming_warnings_name_the_guard_that_was_gamed():
    """After GRPO (diagnostics.gaming_warnings): hand-made comparisons of an SFT model and a GRPO model."""
    from llm_summarizer.evaluation.diagnostics import gaming_warnings

    def d(diff, lo, hi):
        return {"diff": diff, "ci95": [lo, hi]}

    def cmp(sim, **stats):
        return {"model_minus_base": {"rougeL": sim}, "diagnostics_model_minus_base": stats}

    base = {"length_ratio": 1.04, "density": 2.13, "repeated_3gram": 0.06}
    # BENCHMARKS' DialogSum GRPO 2, in the run: ROUGE-L up but not beyond noise, 1.41x longer beyond noise
    longer = {**base, "length_ratio": 1.47}
    (w,) = gaming_warnings(base, longer, cmp(d(0.037, -0.0003, 0.08), length_ratio=d(0.42, 0.20, 0.62)))
    assert "grew from 1.04 to 1.47 times the reference's length (+0.42 [+0.20, +0.62])" in w
    assert "rougeL moved +3.70" in w and "rl.weights.length" in w
    # ROUGE up beyond noise and 1.5x longer: the classic length hack, said once
    (w,) = gaming_warnings(base, {**base, "length_ratio": 1.6}, cmp(d(0.05, 0.01, 0.09), length_ratio=d(0.5, 0.3, 0.7)))
    assert w.startswith("rougeL rose (+5.00) while the summaries grew from 1.04 to 1.60")
    # longer, but within noise or under 1.2x: nothing; ROUGE down beyond noise and repeating: both said
    assert gaming_warnings(base, longer, cmp(d(0.0, -0.02, 0.02), length_ratio=d(0.42, -0.1, 0.9))) == []
    assert (
        gaming_warnings(base, {**base, "length_ratio": 1.2}, cmp(d(0.0, -0.02, 0.02), length_ratio=d(0.16, 0.1, 0.2)))
        == []
    )
    ws = gaming_warnings(
        base, {**base, "repeated_3gram": 0.16}, cmp(d(-0.021, -0.045, -0.002), repeated_3gram=d(0.1, 0.06, 0.14))
    )
    assert any("rougeL fell beyond noise (-2.10 [-4.50, -0.20])" in x for x in ws)
    assert any("repeats itself more" in x and "rl.weights.repetition" in x for x in ws) and len(ws) == 2
