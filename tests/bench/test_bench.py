"""The benchmark harness (llm-summarizer bench) and the correctness of the speed switches.

The harness test is a smoke test on the tiny shape: it checks that every field of the JSON result is
there and consistent with the raw counts it was computed from; it makes no claim about speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ..conftest import ROOT, run_cli

RUN_FIELDS = (
    "backend",
    "device",
    "versions",
    "precision",
    "effective",
    "model_stats",
    "steps_measured",
    "micro_batches",
    "tokens_all",
    "tokens_nonpad",
    "padding_share",
    "train_s",
    "tokens_per_s_all",
    "tokens_per_s_nonpad",
    "s_per_step",
    "step_s",
    "model_flops",
    "ceiling_tflops",
    "mfu",
    "peak_memory_gib",
    "train_wall_s",
    "eval_s",
    "rouge_s",
    "rouge_share",
    "loss_check",
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, models_dir):
    tmp = tmp_path_factory.mktemp("bench")
    md = tmp / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nwhat a user wrote before\n")
    out = tmp / "result.json"
    r = run_cli(
        "bench",
        "--shape",
        "tiny",
        "--data",
        "demo",
        "--steps",
        "4",
        "--warmup-steps",
        "1",
        "--rounds",
        "1",
        "--threads",
        "1",
        "--val-rows",
        "12",
        "--out",
        out,
        "--markdown",
        md,
        f"model.cache_dir={models_dir}",
        "eval.num_samples=2",
        "eval.max_new_tokens=8",
        "train.logging_steps=1",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text()), md, out, r


@pytest.mark.slow
def test_bench_json_has_every_field_with_sane_values(smoke):
    res, _, _, r = smoke
    assert res["command"].startswith("llm-summarizer bench --shape tiny --data demo --steps 4")
    assert res["device"].startswith("CPU") and res["device"].endswith(", 1 torch threads")
    for pkg in ("torch", "transformers", "trl", "peft", "unsloth"):
        assert res["versions"][pkg]
    assert res["model"]["shape"] == "tiny" and res["model"]["mode"] == "LoRA fp32"
    assert res["data"]["name"] == "demo" and res["data"]["train_rows"] == 1200
    assert [r_["backend"] for r_ in res["runs"]] == ["unsloth", "transformers"]  # round 0: listed order
    lo, hi = res["data"]["tokens_per_example"]["min"], res["data"]["tokens_per_example"]["max"]
    for run in res["runs"]:
        missing = [k for k in RUN_FIELDS if k not in run]
        assert not missing, missing
        # 3 measured steps of 2 x 4 examples, each counted once from the forwards the model saw.
        assert run["steps_measured"] == 3 and run["micro_batches"] == 12
        assert 24 * lo <= run["tokens_nonpad"] <= run["tokens_all"] <= 24 * hi
        assert run["tokens_per_s_nonpad"] == pytest.approx(run["tokens_nonpad"] / run["train_s"])
        assert run["tokens_per_s_all"] == pytest.approx(run["tokens_all"] / run["train_s"])
        assert run["s_per_step"] == pytest.approx(run["train_s"] / 3)
        assert len(run["step_s"]) == 3 and all(s > 0 for s in run["step_s"])
        assert run["train_s"] < run["train_wall_s"]  # evaluation and warm-up are left out
        st = run["model_stats"]
        # the tiny Llama: 2 layers of q,k,v,o (128x128, 2x 128x64, 128x128) + MLP (3 x 128x344), LM head
        vocab_x_hidden = st["matmul_params"] - 2 * (2 * 128 * 128 + 2 * 128 * 64 + 3 * 128 * 344)
        assert vocab_x_hidden % 128 == 0 and 1000 < vocab_x_hidden // 128 <= 2048
        assert run["model_flops"] > 4 * st["matmul_params"] * run["tokens_nonpad"]
        assert run["mfu"] == pytest.approx(run["model_flops"] / run["train_s"] / (run["ceiling_tflops"] * 1e12))
        assert 0 < run["mfu"] < 1 and 0 < run["ceiling_tflops"] < 100
        assert 0.1 < run["peak_memory_gib"] < 24
        assert run["evaluations"] == 1 and run["rouge_calls"] == 1  # the forced end-of-training ROUGE pass
        assert 0 < run["rouge_s"] <= run["eval_s"] < run["train_wall_s"]
        assert run["rouge_share"] == pytest.approx(run["rouge_s"] / run["train_wall_s"])
        assert run["effective"]["padding_free"] is False and run["effective"]["sampling"] == "group_by_length"
        check = run["loss_check"]
        assert check["examples"] == 8 and check["rel_diff"] < 1e-5 and 5 < check["batch_loss"] < 10
    assert res["same_tokens_each_round"] is True
    u, t = (res["backends"][b] for b in ("unsloth", "transformers"))
    for key in ("tokens_per_s_nonpad", "s_per_step", "peak_memory_gib", "mfu"):
        assert res["ratios_unsloth_over_transformers"][key] == pytest.approx(
            u[key]["median"] / t[key]["median"], rel=1e-3
        )
    assert "unsloth/transformers" in r.stdout


@pytest.mark.slow
def test_bench_appends_one_row_and_keeps_what_was_there(smoke):
    from llm_summarizer.bench.results import MARKER
    from llm_summarizer.commands.bench import main

    res, md, out, _ = smoke
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nwhat a user wrote before\n")
    rows = [l for l in text.splitlines() if l.startswith("| 20")]
    assert len(rows) == 1 and MARKER in text
    row = rows[0]
    assert "tiny · LoRA fp32 · demo" in row and res["command"] in row and "torch " in row
    tps = res["backends"]["unsloth"]["tokens_per_s_nonpad"]["median"]
    assert f"u: {tps:.0f}" in row
    assert main(["--from-json", str(out), "--markdown", str(md)]) == 0
    assert md.read_text() == text + row + "\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "3", "--warmup-steps", "3"], "--steps (3) must be larger than --warmup-steps (3)"),
        (["--backends", "unsloth,jax"], "--backends: unknown jax"),
        (["--data", "no-such-dataset"], "--data no-such-dataset: no "),
        (
            ["--floors", "data,speed"],
            "--floors: unknown part(s) speed; use all or any of data, generation, training, startup",
        ),
        (["--floors", "all", "--data-rows", "0"], "--data-rows and --gen-rows must be at least 1"),
    ],
)
def test_bench_rejects_bad_arguments(argv, message, capsys, tmp_path):
    from llm_summarizer.commands.bench import main

    assert main([*argv, "--out", str(tmp_path / "r.json"), "--markdown", ""]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


PADDING_FREE_CHECK = textwrap.dedent("""
    import json, sys, torch
    from llm_summarizer.config_loading import load_config
    from llm_summarizer.data.rows import load_raw_splits
    from llm_summarizer.models.loading import load_for_training
    from llm_summarizer.training.run import build_session
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    def trainer_for(tmp, *extra):
        cfg = load_config("tiny", ["model.backend=transformers", f"output.dir={tmp}",
                          f"model.cache_dir={sys.argv[1]}", "train.resume=never", *extra])
        raw = load_raw_splits(cfg)
        model, tok, _ = load_for_training(cfg, raw)
        return build_session(cfg, model, tok, {}, raw).trainer, model, tok

    def loss(tr, model, batch):
        with torch.no_grad():
            return tr.compute_loss(model, dict(batch)).item()

    def one_by_one(tr, model, tok, examples):
        single = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)
        total = count = 0
        for ex in examples:
            b = single([ex])
            n = int((b["labels"][:, 1:] != -100).sum())
            total, count = total + loss(tr, model, b) * n, count + n
        return total / count

    out = {}
    tr, model, tok = trainer_for(sys.argv[2] + "/pf", "train.padding_free=true", "train.sampling=group_by_length")
    model.eval()
    rows = [tr.train_dataset[i] for i in range(8)]
    batch = tr.data_collator(rows)
    contaminated = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])
    out["padding_free"] = {
        "args": [tr.args.padding_free, tr.args.max_length, tr.args.train_sampling_strategy],
        "keys": sorted(batch), "shape": list(batch["input_ids"].shape),
        "starts": int((batch["position_ids"] == 0).sum()), "lengths": [len(r["input_ids"]) for r in rows],
        "batch": loss(tr, model, batch), "one_by_one": one_by_one(tr, model, tok, rows),
        "padded": loss(tr, model, DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(rows)),
        "contaminated": loss(tr, model, contaminated),
        "sampler": type(tr._get_train_sampler(tr.train_dataset)).__name__,
    }
    tr, model, tok = trainer_for(sys.argv[2] + "/packed", "train.packing=true")
    model.eval()
    row = tr.train_dataset[0]
    starts = [sum(row["seq_lengths"][:i]) for i in range(len(row["seq_lengths"]))]
    examples = [{"input_ids": row["input_ids"][s:s + n], "labels": row["labels"][s:s + n]}
                for s, n in zip(starts, row["seq_lengths"])]
    out["packing"] = {"args": [tr.args.packing, tr.args.max_length], "row_len": len(row["input_ids"]),
                      "n_examples": len(examples), "batch": loss(tr, model, tr.data_collator([row])),
                      "one_by_one": one_by_one(tr, model, tok, examples)}
    print("RESULT " + json.dumps(out))
""")


def test_padding_free_and_packed_batches_have_the_loss_of_their_examples_one_by_one(tmp_path, models_dir):
    """Concatenated examples must not attend to each other: the loss of a padding-free batch (and of a
    packed row) equals the token-weighted loss of its examples run one at a time. The transformers backend,
    in a process without Unsloth (whose CPU backend turns both switches off)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")  # tiny tensors: one thread is faster on a shared CPU
    r = subprocess.run(
        [sys.executable, "-c", PADDING_FREE_CHECK, str(models_dir), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))[7:])
    pf = res["padding_free"]
    assert pf["args"] == [True, None, "group_by_length"] and pf["sampler"] == "EpochSeededLengthGroupedSampler"
    # one row, no padding, no attention mask: position_ids restart at each of the 8 examples
    assert pf["keys"] == ["input_ids", "labels", "position_ids"] and pf["shape"] == [1, sum(pf["lengths"])]
    assert pf["starts"] == 8
    ref = pf["one_by_one"]
    assert abs(pf["batch"] - ref) / ref < 1e-5
    assert abs(pf["padded"] - ref) / ref < 1e-5
    # the same row with attention across examples gives a different loss: the check can see contamination
    assert abs(pf["contaminated"] - ref) / ref > 1e-3
    pk = res["packing"]
    assert pk["args"] == [True, 256] and pk["n_examples"] >= 2 and pk["row_len"] <= 256
    assert abs(pk["batch"] - pk["one_by_one"]) / pk["one_by_one"] < 1e-5


# -- floors: ours against the plainest way of doing the same work, in one run -------------------------------


@pytest.fixture(scope="module")
def floors(tmp_path_factory, models_dir):
    tmp = tmp_path_factory.mktemp("floors")
    md = tmp / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nkept as it was\n")
    out = tmp / "floors.json"
    r = run_cli(
        "bench",
        "--floors",
        "all",
        "--shape",
        "tiny",
        "--data",
        "demo",
        "--steps",
        "3",
        "--warmup-steps",
        "1",
        "--data-rows",
        "300",
        "--gen-rows",
        "8",
        "--val-rows",
        "16",
        "--out",
        out,
        "--markdown",
        md,
        f"model.cache_dir={models_dir}",
        "eval.max_new_tokens=8",
        "eval.batch_size=4",
        "eval.num_samples=4",
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text()), md, r


@pytest.mark.slow
def test_floors_data_part_counts_rows_and_compares_with_the_row_at_a_time_ids(floors):
    res = floors[0]
    d = res["data"]
    assert d["rows"] == 300 and d["processes"] == 1 and 0 < d["rows_kept"] <= 300
    assert d["same_ids_as_before"] is True  # batched tokenization gives the ids of the row-at-a-time path
    assert d["ours_rows_per_s"] == pytest.approx(300 / d["ours_s"], rel=1e-3)
    assert d["floor_rows_per_s"] == pytest.approx(300 / d["floor_s"], rel=1e-3)
    assert d["ratio"] == pytest.approx(d["floor_s"] / d["ours_s"], rel=1e-3)
    assert d["ratio_before"] == pytest.approx(d["floor_s"] / d["before_s"], rel=1e-3)


@pytest.mark.slow
def test_floors_generation_part_same_prompts_same_texts(floors):
    g = floors[0]["generation"]
    assert g["examples"] == 8 and g["batch_size"] == 4 and g["max_new_tokens"] == 8
    floor_s = sum(g["floor_s"]) / 2
    assert g["floor_examples_per_s"] == pytest.approx(8 / floor_s, rel=1e-2)
    assert g["ratio_sorted"] == pytest.approx(floor_s / g["sorted_s"], rel=1e-2)
    assert g["ratio_equal"] == pytest.approx(floor_s / g["equal_s"], rel=1e-2)
    # In dataset order our path runs the floor's batches: the same texts. Sorted: regrouped, back in order.
    assert g["same_texts_equal"] == 8
    assert g["same_texts_sorted"] >= 7, g
    assert g["rouge_pass_s"] > 0
    # the statistics against the documents are timed inside the pass and on their own beside rouge-score
    assert 0 < g["diagnostics_in_pass_s"] < g["rouge_pass_s"] and g["diagnostics_s"] > 0 and g["rouge_scoring_s"] > 0
    assert g["diagnostics_share_of_pass"] == pytest.approx(g["diagnostics_in_pass_s"] / g["rouge_pass_s"], rel=1e-3)


@pytest.mark.slow
def test_floors_training_part_feeds_both_loops_the_same_tokens(floors):
    t = floors[0]["training"]
    assert t["steps"] == 3 and t["warmup_steps"] == 1 and t["rounds"] == 1
    assert len(t["floor"]) == 2 and len(t["ours"]) == 1  # floor, ours, floor
    assert t["same_tokens"] is True
    for run in t["floor"] + t["ours"]:
        assert run["tokens_per_s"] == pytest.approx(run["nonpad_tokens"] / run["s"], rel=1e-2)
    mean_floor = sum(f["tokens_per_s"] for f in t["floor"]) / 2
    assert t["ratio"] == pytest.approx(t["ours_tokens_per_s"] / mean_floor, rel=1e-6)


@pytest.mark.slow
def test_floors_startup_part_splits_the_seconds_to_the_first_step(floors):
    s = floors[0]["startup"]
    assert s["exit_codes"] == {"import": 0, "help": 0, "print_config": 0, "train": 0}
    parts = {k: v for k, v in s["split"].items() if k != "to_first_step_s"}
    assert set(parts) == {
        "imports_s",
        "data_read_s",
        "model_load_s",
        "tokenize_and_trainer_s",
        "base_eval_s",
        "first_step_s",
    }
    assert all(v >= 0 for v in parts.values())
    assert s["to_first_step_s"] == pytest.approx(sum(parts.values()), abs=0.1)
    assert s["to_first_step_s"] < s["train_command_s"]  # the command goes on: final ROUGE, save
    assert s["help_s"] < s["train_command_s"] and s["print_config_s"] < s["train_command_s"]


@pytest.mark.slow
def test_floors_rows_land_in_one_floors_table(floors):
    res, md, r = floors
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nkept as it was\n")
    assert "## Floors" in text and text.count("| date | device | model · data | part |") == 1
    rows = [l for l in text.splitlines() if l.startswith(f"| {res['date']} |")]
    assert [r_.split(" | ")[3].split(" (")[0] for r_ in rows] == [
        "data preparation",
        "generation",
        "training",
        "start-up to the first step",
    ]
    assert f"**{res['training']['ratio']:.2f}x**" in rows[2]
    assert f"= {100 * res['generation']['diagnostics_share_of_pass']:.2f}% of it" in rows[1]
    assert "full result:" in r.stdout
