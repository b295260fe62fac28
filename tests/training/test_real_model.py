"""A real pretrained model through training: SmolLM2-135M-Instruct fine-tuned on DialogSum on the CPU.

What users buy the product for: the fine-tuned model summarizes measurably better than the model it started
from, and it learned where a summary ends. Shares one trained run (conftest.real_run) with the other
real-model tests.
"""

import json
from pathlib import Path

import pytest

from ..conftest import read_jsonl

pytestmark = [pytest.mark.real_model, pytest.mark.slow]


def test_fine_tuned_beats_zero_shot_with_a_paired_interval_above_zero(real_run):
    m = real_run.metrics
    base, final, cmp = m.base, m.final, m.final_vs_base
    assert cmp["examples"] == 24
    d = cmp["model_minus_base"]["rougeL"]
    assert final["rougeL"] > base["rougeL"] and d["ci95"][0] > 0, (base, final, d)
    # the difference is computed from the very predictions written to disk
    rows = read_jsonl(real_run.output_dir / "eval_predictions" / "base.jsonl")
    assert len(rows) == 24 and abs(sum(r["rougeL"] for r in rows) / 24 - base["rougeL"]) < 1e-9


def test_it_learned_where_a_summary_ends(real_run):
    m = real_run.metrics
    assert m.final["gen_hit_max_frac"] < m.base["gen_hit_max_frac"], (m.base, m.final)
    final = read_jsonl(real_run.output_dir / "eval_predictions" / "step-30.jsonl")
    # stopped at the chat template's end of turn: no special tokens or run-on turns in the text
    for r in final:
        assert "<|im_end|>" not in r["prediction"] and "<|im_start|>" not in r["prediction"]
        assert "assistant\n" not in r["prediction"] and r["prediction"].strip()


def test_saved_model_stops_at_end_of_turn_and_records_the_conversion(real_run):
    d = real_run.model_dir
    tok = json.loads((d / "tokenizer_config.json").read_text())
    assert tok["eos_token"] == "<|im_end|>" and tok["pad_token"] not in ("<|im_end|>", None)
    info = json.loads((d / "run_info.json").read_text())["model"]
    assert info["base_model"] == "smollm2-135m-instruct"
    assert any("eos_token '<|im_start|>' -> '<|im_end|>'" in c for c in info["gguf"]["changes"])
    base_dir = Path(json.loads((d / "adapter_config.json").read_text())["base_model_name_or_path"])
    base_config = json.loads((base_dir / "config.json").read_text())
    assert base_config["eos_token_id"] == 2 and base_config.get("pad_token_id") != 2
    gen = json.loads((base_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2


def test_summarize_and_evaluate_on_the_real_model(real_run, tmp_path, capsys):
    from llm_summarizer.commands.evaluate import main as evaluate_main
    from llm_summarizer.commands.summarize import main as summarize_main

    src = tmp_path / "dialogue.txt"
    src.write_text(
        "#Person1#: Did you book the table for tonight?\n#Person2#: Yes, at seven, for four people.\n"
        "#Person1#: Great, I'll tell the others.\n"
    )
    capsys.readouterr()
    assert summarize_main(["--model", str(real_run.model_dir), str(src)]) == 0
    out = capsys.readouterr().out.strip()
    assert out and "<|" not in out and len(out.split()) < 80, out
    rc = evaluate_main(
        [
            "--model",
            str(real_run.model_dir),
            "--split",
            "test",
            "--compare-base",
            "--output",
            str(tmp_path / "ev"),
            "--no-report",
        ]
    )
    assert rc == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["data"]["examples"] == 8 and "model_minus_base" in m["results"]
    preds = read_jsonl(tmp_path / "ev" / "predictions.jsonl") + read_jsonl(tmp_path / "ev" / "predictions_base.jsonl")
    assert all("<|" not in p["prediction"] for p in preds)
