import csv
import json
import re
from pathlib import Path

import pytest

from llm_summarizer.config_loading import load_config
from llm_summarizer.data import rows as R
from llm_summarizer.data import tokenize as TK
from llm_summarizer.errors import DataError
from llm_summarizer.models.backends import apply_named_template

from ..conftest import DEMO, run_cli, shared_dataset


@pytest.fixture(scope="module")
def tokenizer(models_dir):
    from llm_summarizer.models.loading import load_tokenizer

    cfg = load_config("tiny", [f"model.cache_dir={models_dir}"])
    return load_tokenizer(cfg, R.load_raw_splits(cfg))


def cfg_for(train, *extra, validation=None):
    o = [f"data.train={train}", "data.validation_size=0"]
    if validation:
        o.append(f"data.validation={validation}")
    return load_config("tiny", o + ["data.validation=null", "data.test=null"] * (validation is None) + list(extra))


def write_jsonl(p: Path, rows):
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def test_labels_mask_prompt_and_padding_completion_is_summary_plus_eos(tmp_path, models_dir):
    """What the trainer really feeds the model: its dataset through its own collator."""
    from llm_summarizer.trainer_class import TrainerClass

    from ..conftest import tiny_overrides

    tc = TrainerClass.from_config("tiny", tiny_overrides(tmp_path, models_dir))
    trainer = tc.trainer()
    tokenizer = tc.tokenizer
    prepared = tc.session.prepared.splits["train"]
    n_rows = 16
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n_rows)])
    for i in range(n_rows):
        row = prepared[i]
        n, p = len(row["input_ids"]), row["prompt_len"]
        assert batch["input_ids"][i, :n].tolist() == row["input_ids"]
        labels = batch["labels"][i].tolist()
        assert all(l == -100 for l in labels[:p]), "prompt tokens must not carry loss"
        assert all(l == -100 for l in labels[n:]), "padding must not carry loss"
        assert labels[p:n] == row["input_ids"][p:n]
        completion = labels[p:n]
        assert completion[-1] == tokenizer.eos_token_id and completion.count(tokenizer.eos_token_id) == 1
        assert tokenizer.decode(completion[:-1]) == row["summary"]
    assert batch["attention_mask"].sum().item() == sum(len(prepared[i]["input_ids"]) for i in range(n_rows))
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


@pytest.mark.parametrize("name", ["dialogsum", "scitldr"])
def test_shared_data_budget_never_cuts_summary(tokenizer, name):
    root = shared_dataset(name)
    max_len = 160
    cfg = cfg_for(root / "validation.jsonl", f"model.max_seq_length={max_len}")
    raw = R.load_raw_splits(cfg)
    prep = TK.prepare(cfg, tokenizer, raw)
    f = prep.formatter
    # Independent count: tokenize document and summary here, apply the budget rule by hand.
    exp_trunc = exp_drop = 0
    for r in raw["train"].rows:
        comp = len(tokenizer(r["summary"].strip(), add_special_tokens=False)["input_ids"]) + 1
        doc = len(tokenizer(r["document"], add_special_tokens=False)["input_ids"])
        budget = max_len - f.template_tokens - comp
        if budget < 1:
            exp_drop += 1
        elif doc > budget:
            exp_trunc += 1
    st = prep.stats["train"]
    assert st.truncated == exp_trunc and exp_trunc > 0
    assert st.dropped.get("summary_too_long", 0) == exp_drop
    by_id = {r["id"]: r for r in raw["train"].rows}
    for ex in prep.splits["train"]:
        assert len(ex["input_ids"]) <= max_len
        comp = ex["input_ids"][ex["prompt_len"] :]
        assert tokenizer.decode(comp[:-1]) == by_id[ex["id"]]["summary"].strip()


def test_head_tail_and_drop_policies(tokenizer, tmp_path):
    long_doc = " ".join(f"word{i}" for i in range(400))
    p = write_jsonl(
        tmp_path / "t.jsonl",
        [{"document": long_doc, "summary": "short summary."}, {"document": "a tiny doc", "summary": "tiny."}],
    )
    for policy, kept, truncated in (("head", 2, 1), ("head_tail", 2, 1), ("drop", 1, 0)):
        cfg = cfg_for(p, "model.max_seq_length=64", f"data.truncation={policy}")
        prep = TK.prepare(cfg, tokenizer, R.load_raw_splits(cfg))
        st = prep.stats["train"]
        assert (st.rows_kept, st.truncated) == (kept, truncated), policy
        if policy == "drop":
            assert st.dropped == {"document_too_long": 1}
        if policy == "head_tail":
            text = tokenizer.decode(prep.splits["train"][0]["input_ids"])
            assert "word0 " in text and "word399" in text and " ... " in text


def test_summary_longer_than_budget_is_dropped(tokenizer, tmp_path):
    p = write_jsonl(
        tmp_path / "t.jsonl",
        [{"document": "doc", "summary": " ".join(["long"] * 200)}, {"document": "doc two", "summary": "fine."}],
    )
    cfg = cfg_for(p, "model.max_seq_length=64")
    prep = TK.prepare(cfg, tokenizer, R.load_raw_splits(cfg))
    assert prep.stats["train"].dropped == {"summary_too_long": 1}
    assert prep.stats["train"].dropped_examples["summary_too_long"] == [0]


BAD_ROWS = [
    {"id": "a", "document": "good document one", "summary": "good."},
    {"id": "b", "document": "", "summary": "x"},
    {"id": "c", "document": "   \n ", "summary": "x"},
    {"id": "d", "document": None, "summary": "x"},
    {"id": "e", "document": 42, "summary": "x"},
    {"id": "f", "document": "doc f", "summary": None},
    {"id": "g", "document": "good document one", "summary": "dup."},
    {"id": "h", "document": "doc h", "summary": ""},
]


def test_bad_rows_dropped_by_reason(tmp_path):
    p = write_jsonl(tmp_path / "bad.jsonl", BAD_ROWS)
    raw = R.load_raw_splits(cfg_for(p))
    tr = raw["train"]
    assert [r["id"] for r in tr.rows] == ["a"]
    assert dict(tr.dropped) == {
        "empty_document": 2,
        "null_document": 1,
        "not_a_string_document": 1,
        "null_summary": 1,
        "duplicate_document": 1,
        "empty_summary": 1,
    }
    assert tr.dropped_examples["empty_document"] == [1, 2]


def test_bad_rows_error_policy_names_file_and_rows(tmp_path):
    p = write_jsonl(tmp_path / "bad.jsonl", BAD_ROWS)
    with pytest.raises(DataError) as e:
        R.load_raw_splits(cfg_for(p, "data.on_bad_rows=error"))
    msg = str(e.value)
    assert "bad.jsonl row 1" in msg and "empty document" in msg and "duplicate document" in msg
    assert "data.on_bad_rows=drop" in msg


def test_missing_column_names_existing_columns(tmp_path):
    p = write_jsonl(tmp_path / "cols.jsonl", [{"body": "x", "abstract_text": "y"}])
    with pytest.raises(
        DataError, match=r"cols.jsonl: could not find the document and summary columns among: body, abstract_text"
    ):
        R.load_raw_splits(cfg_for(p))
    with pytest.raises(DataError, match=r"column\(s\) 'text' not found; the file has columns: body, abstract_text"):
        R.load_raw_splits(cfg_for(p, "data.document_column=text", "data.summary_column=abstract_text"))
    raw = R.load_raw_splits(cfg_for(p, "data.document_column=body", "data.summary_column=abstract_text"))
    assert raw["train"].rows[0]["document"] == "x"


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "is empty"),
        (b'{"document": "a", "summary": "b"}\n{"document": "c", "summ', r"line 2: invalid JSON.*cut off"),
        (b'{"document": "caf\xe9", "summary": "b"}\n', r"line 1: not valid UTF-8"),
        (b"\x00\x01\x02binary", "looks binary"),
    ],
)
def test_malformed_files_clear_error(tmp_path, content, match):
    p = tmp_path / "f.jsonl"
    p.write_bytes(content)
    with pytest.raises(DataError, match=match) as e:
        R.load_raw_splits(cfg_for(p))
    assert "f.jsonl" in str(e.value)


def test_missing_path_and_unsupported_format(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        R.load_raw_splits(cfg_for(tmp_path / "nope.jsonl"))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported format '.txt'"):
        R.load_raw_splits(cfg_for(tmp_path / "x.txt"))


def test_same_rows_from_jsonl_csv_tsv_parquet_json_and_directory(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(l) for l in (DEMO / "validation.jsonl").read_text().splitlines()[:30]]
    rows[3]["document"] = 'quotes "inside", commas, and\nnewlines'
    write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "a.json").write_text(json.dumps(rows))
    for name, delim in (("a.csv", ","), ("a.tsv", "\t")):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["id", "document", "summary"], delimiter=delim)
            w.writeheader()
            w.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    expected = [(r["id"], r["document"], r["summary"]) for r in rows]
    for name in ("a.jsonl", "a.json", "a.csv", "a.tsv", "a.parquet"):
        got = R.load_raw_splits(cfg_for(tmp_path / name))["train"].rows
        assert [(r["id"], r["document"], r["summary"]) for r in got] == expected, name
    d = tmp_path / "dir"
    d.mkdir()
    write_jsonl(d / "part1.jsonl", rows[:10])
    write_jsonl(d / "part2.jsonl", rows[10:])
    got = R.load_raw_splits(cfg_for(d))["train"].rows
    assert [r["id"] for r in got] == [r["id"] for r in rows]


def test_column_autodetect(tmp_path):
    p = write_jsonl(tmp_path / "cnn.jsonl", [{"article": "some news", "highlights": "news."}])
    raw = R.load_raw_splits(cfg_for(p))
    assert raw["train"].columns[:2] == ("article", "highlights")


def test_seeded_split_when_only_train(tmp_path):
    cfg = load_config(
        "tiny", ["data.validation=null", "data.test=null", "data.validation_size=0.1", "data.test_size=20"]
    )
    a = R.load_raw_splits(cfg)
    b = R.load_raw_splits(cfg)
    assert len(a["validation"].rows) == 120 and len(a["test"].rows) == 20 and len(a["train"].rows) == 1060
    assert [r["id"] for r in a["validation"].rows] == [r["id"] for r in b["validation"].rows]
    ids = [r["id"] for s in a.values() for r in s.rows]
    assert len(ids) == len(set(ids)) == 1200
    c = R.load_raw_splits(load_config("tiny", ["data.validation=null", "data.split_seed=7"]))
    assert [r["id"] for r in c["validation"].rows] != [r["id"] for r in a["validation"].rows]


def test_chatml_template_through_unsloth(tokenizer, tmp_path):
    import copy

    cfg = load_config("tiny", ["data.template=chatml"])
    tok = apply_named_template(copy.deepcopy(tokenizer), "chatml")
    prep = TK.prepare(cfg, tok, R.load_raw_splits(cfg))
    ex = prep.splits["train"][0]
    text = tok.decode(ex["input_ids"])
    assert text.count("<|im_start|>user") == 1 and "<|im_start|>assistant" in text
    comp = ex["input_ids"][ex["prompt_len"] :]
    assert comp[-1] == tok.eos_token_id and comp.count(tok.eos_token_id) == 1
    assert ex["summary"] in tok.decode(comp)


def test_tokenization_is_cached(tokenizer, tmp_path):
    cfg = load_config("tiny")
    raw = R.load_raw_splits(cfg)
    TK.prepare(cfg, tokenizer, raw, cache_dir=tmp_path)
    cached = sorted(p.name for p in tmp_path.iterdir())
    assert len(cached) == 3 and all(not n.endswith(".tmp") for n in cached)
    again = TK.prepare(cfg, tokenizer, raw, cache_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == cached
    assert len(again.splits["train"]) == 1200


def test_preview_command_shows_sizes_and_rendered_example(tmp_path, models_dir):
    r = run_cli(
        "data", "--config", "tiny", "--output", tmp_path / "processed", f"model.cache_dir={models_dir}", timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        "== train: 1200 rows" in r.stdout and "== validation: 100 rows" in r.stdout and "== test: 100 rows" in r.stdout
    )
    assert "[[" in r.stdout and "<|end_of_text|>]]" in r.stdout and "Summary:" in r.stdout
    assert (tmp_path / "processed" / "train.jsonl").exists()
    stats = json.loads((tmp_path / "processed" / "data_stats.json").read_text())
    assert stats["train"]["rows"] == 1200
    # what kind of summaries the references are: each against its document, per split
    assert "== the references against their documents" in r.stdout
    ref = stats["reference_statistics"]
    assert ref["train"]["examples"] == 1200 and ref["train"]["tokenizer"] == "default"
    cov = ref["validation"]["means"]["coverage"]
    assert 0 < cov <= 1 and re.search(rf"coverage +\d+\.\d% +{100 * cov:.1f}% +\d+\.\d%", r.stdout), r.stdout


def test_preview_command_bad_data_exit_2(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("")
    r = run_cli("data", "--config", "tiny", f"data.train={p}", timeout=120)
    assert r.returncode == 2
    assert "empty.jsonl is empty" in r.stderr and "Traceback" not in r.stderr


def _row_by_row(formatter, docs, summaries):
    """The reference: each row encoded alone (the way data preparation worked before it was batched)."""
    out = []
    for d, s in zip(docs, summaries):
        comp = formatter._with_one_eos(formatter._enc(formatter._summary_text(s)))
        doc_ids = formatter._enc(d)
        fitted, status = formatter.fit_document(doc_ids, formatter.doc_budget(len(comp)))
        out.append((None if fitted is None else formatter.pre_ids + fitted + formatter.post_ids + comp, status))
    return out


@pytest.mark.parametrize("name", ["dialogsum", "scitldr"])
@pytest.mark.parametrize("truncation", ["head", "head_tail"])
def test_batched_tokenization_gives_the_ids_of_row_by_row(tokenizer, name, truncation):
    """Documents and summaries are encoded a batch at a time; every row's ids equal encoding it alone."""
    from llm_summarizer.data.prompt import Formatter

    rows = [json.loads(l) for l in (shared_dataset(name) / "train.jsonl").read_text().splitlines()[:300]]
    cfg = load_config("tiny", [f"data.truncation={truncation}"])
    f = Formatter(tokenizer, cfg.data, 160)  # short budget: many documents are cut
    docs, summaries = [r["document"] for r in rows], [r["summary"] for r in rows]
    batched = [(None if ex is None else ex["input_ids"], st) for ex, st in f.examples(docs, summaries)]
    assert batched == _row_by_row(f, docs, summaries)
    assert sum(st == "truncated" for _, st in batched) > 50


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["dialogsum", "scitldr"])
def test_batched_tokenization_with_the_real_tokenizer(smollm2_conversion, name):
    from transformers import AutoTokenizer

    from llm_summarizer.data.prompt import Formatter

    tok = AutoTokenizer.from_pretrained(smollm2_conversion["dir"])
    rows = [json.loads(l) for l in (shared_dataset(name) / "train.jsonl").read_text().splitlines()[:300]]
    f = Formatter(tok, load_config("demo").data, 256)
    docs, summaries = [r["document"] for r in rows], [r["summary"] for r in rows]
    assert f.use_chat and [
        (None if ex is None else ex["input_ids"], st) for ex, st in f.examples(docs, summaries)
    ] == _row_by_row(f, docs, summaries)


def test_the_p95_the_data_report_logs_is_the_one_the_generation_budget_uses():
    """20 lengths: the nearest-rank p95 (the 19th, 118) and the int(n * 0.95) one (the 20th, 119) used to differ
    between the length report and the budget; every figure now comes from stats.percentile."""
    from llm_summarizer.data.lengths import _spread
    from llm_summarizer.models.generation import budget_for, derive_max_new_tokens
    from llm_summarizer.stats import percentile

    lengths = [100 + i for i in range(20)][::-1]
    st = TK.SplitStats("train", "test", 20, 20, {}, {}, 0, [10] * 20, lengths)
    recorded = st.summary()["summary_tokens"]["p95"]  # metrics.json's train.summary_tokens.p95
    logged = _spread(lengths)["p95"]  # the `data.train lengths: ... summaries p95` line training logs
    ev = load_config("tiny", ["eval.max_new_tokens=null"]).eval
    assert recorded == logged == percentile(lengths, 0.95) == 119
    assert derive_max_new_tokens(lengths, ev) == budget_for(recorded) == budget_for(logged) == 187
    assert st.summary()["summary_tokens"]["p50"] == _spread(lengths)["p50"] == 110
