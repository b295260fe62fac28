"""metrics.json through its type: what today's code wrote still reads, what a newer one wrote is refused in words,
nothing is lost in a round trip, and readers get the metric whichever way it is named."""

import json

import pytest

from llm_summarizer.contracts import METRICS_VERSION, RunMetrics, TrainFigures
from llm_summarizer.errors import UserError

# A metrics.json as the code before the version field wrote it (keys and nesting of a real run, values trimmed).
VERSION_1 = {
    "base": {
        "rouge1": 0.21,
        "rouge2": 0.05,
        "rougeL": 0.17,
        "rougeLsum": 0.18,
        "gen_len_mean": 61.0,
        "gen_hit_max_frac": 0.4,
        "rouge_examples": 24,
        "coverage": 0.93,
        "density": 9.1,
    },
    "final": {
        "rouge1": 0.33,
        "rouge2": 0.11,
        "rougeL": 0.27,
        "rougeLsum": 0.28,
        "gen_len_mean": 22.5,
        "gen_hit_max_frac": 0.0,
        "rouge_examples": 24,
        "coverage": 0.78,
        "density": 2.1,
    },
    "train": {
        "global_step": 30,
        "train_loss": 1.726,
        "train_runtime_s": 214.5,
        "best_checkpoint": None,
        "best_metric": None,
        "rouge_callback_s": 61.2,
        "rouge_callback_share": 0.28,
        "resumed_from": None,
        "world_size": 1,
        "train_tokens": 31880,
        "train_tokens_per_s": 148.6,
        "peak_memory_gib": 1.9,
        "peak_memory_of": "process RSS",
        "startup": {"imports_s": 9.1, "to_first_step_s": 80.2},
    },
    "data": {"train": {"rows": 160, "rows_read": 160, "summary_tokens": {"mean": 28.1, "p95": 52}}},
    "eval_protocol": {"tokenizer": "default", "decoding": {"max_new_tokens": 94, "do_sample": False}},
    "references": {"coverage": 0.74, "density": 1.9},
    "tracking": {"wandb": {"mode": "online", "run_id": "abc12345", "url": "https://wandb.ai/t/p/runs/abc12345"}},
    "final_vs_base": {"examples": 24, "model_minus_base": {"rougeL": {"diff": 0.1, "ci95": [0.05, 0.15]}}},
}


def _as_version_3(d: dict) -> dict:
    """VERSION_1's content under version 3's names (written by hand: the test does not trust the mapping)."""
    d = json.loads(json.dumps(d))
    for block in ("base", "final"):
        d[block]["summary_examples"] = d[block].pop("rouge_examples")
    d["train"]["summary_eval_s"] = d["train"].pop("rouge_callback_s")
    d["train"]["summary_eval_share"] = d["train"].pop("rouge_callback_share")
    return d


def test_a_file_written_before_the_version_field_reads_and_writes_back_unchanged_but_for_the_version(tmp_path):
    p = tmp_path / "metrics.json"
    p.write_text(json.dumps(VERSION_1))
    m = RunMetrics.read(p)
    assert m.version == METRICS_VERSION == 3
    assert m.train.global_step == 30 and m.train.startup["to_first_step_s"] == 80.2
    assert m.train.summary_eval_s == 61.2 and m.train.summary_eval_share == 0.28  # version 1's rouge_callback_*
    assert m.final_score("eval_rougeL") == m.final_score("rougeL") == 0.27 and m.base_score("rouge1") == 0.21
    assert m.wandb_url == "https://wandb.ai/t/p/runs/abc12345" and m.examples == 24
    assert m.validated_max_new_tokens == 94 and m.train_summary_p95 == 52
    # unchanged but for the version and the names version 3 gave the in-training evaluation's figures
    assert m.to_dict() == {"version": 3, **_as_version_3(VERSION_1)}
    assert VERSION_1["train"]["rouge_callback_s"] == 61.2  # the caller's dict is not changed


def test_a_version_2_file_reads_with_its_old_names_mapped():
    old = {**VERSION_1, "version": 2, "train": {**VERSION_1["train"], "startup": {"base_rouge_s": 4.5}}}
    m = RunMetrics.from_dict(old)
    assert m.examples == 24 and m.final["summary_examples"] == 24 and "rouge_examples" not in m.final
    assert m.train.summary_eval_s == 61.2 and m.train.startup == {"base_eval_s": 4.5}


def test_keys_this_code_does_not_know_survive_a_round_trip():
    v3 = _as_version_3(VERSION_1)
    d = {**v3, "version": 3, "from_a_plugin": {"x": 1}, "train": {**v3["train"], "gpu_hours": 0.1}}
    m = RunMetrics.from_dict(d)
    assert m.extra == {"from_a_plugin": {"x": 1}} and m.train.extra == {"gpu_hours": 0.1}
    assert m.to_dict() == d


def test_a_file_from_a_newer_version_is_refused_with_what_to_do(tmp_path):
    p = tmp_path / "metrics.json"
    p.write_text(json.dumps({**VERSION_1, "version": METRICS_VERSION + 1}))
    with pytest.raises(UserError) as e:
        RunMetrics.read(p)
    assert str(e.value) == (
        f"{p} was written by a newer llm_summarizer (metrics.json version 4; this one reads up "
        f"to 3). Upgrade llm_summarizer to read it"
    )


@pytest.mark.parametrize(
    "text, says",
    [
        ("[1, 2]", "should hold a JSON object with the run's metrics; it holds list"),
        ('{"final": [0.3]}', "key final is [0.3]; expected a JSON object"),
        ('{"version": "2"}', "version '2' is not a metrics.json version"),
        ("{not json", "not valid JSON (Expecting property name enclosed in double quotes"),
        (
            '{"data": {"train": {"summary_tokens": {"p95": Infinity}}}}',
            "not valid JSON (Infinity is not a JSON number)",
        ),
        ('{"data": {"train": {"summary_tokens": "twenty"}}}', 'key data.train.summary_tokens is "twenty"; expected'),
        ('{"eval_protocol": {"decoding": "greedy"}}', 'key eval_protocol.decoding is "greedy"; expected a JSON object'),
        ('{"data": {"train": 5}}', "key data.train is 5; expected a JSON object"),
        ('{"tracking": {"wandb": "x"}}', 'key tracking.wandb is "x"; expected a JSON object'),
        ('{"train": {"global_step": 1e300}}', "key train.global_step is 1e+300; expected a finite number"),
        ("[" * 100000 + "]" * 100000, "JSON nested too deeply to read"),
    ],
)
def test_a_damaged_file_is_one_message_naming_it(tmp_path, text, says):
    p = tmp_path / "metrics.json"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        RunMetrics.read(p)
    assert str(p) in str(e.value) and says in str(e.value)


def test_an_empty_record_answers_none_rather_than_failing():
    m = RunMetrics()
    assert m.final_score("rougeL") is None and m.wandb_url is None and m.examples is None
    assert m.validated_max_new_tokens is None and m.train_summary_p95 is None
    assert TrainFigures().to_dict()["global_step"] is None and "startup" not in TrainFigures().to_dict()
