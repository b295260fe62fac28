"""The GRPO stage (rl.method=grpo): a tiny run continuing the tiny SFT adapter, what it leaves and prints, bad GRPO
configs, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llm_summarizer.config_loading import load_config
from llm_summarizer.errors import UserError

from ..conftest import ROOT, read_jsonl, run_cli, tiny_overrides

GRPO = {
    "rl.method": "grpo",
    "rl.num_generations": 4,
    "train.per_device_train_batch_size": 8,
    "train.gradient_accumulation_steps": 1,
    "train.learning_rate": 1.0e-4,
    "train.lr_scheduler_type": "constant",
    "train.warmup_steps": 0,
}


@pytest.fixture(scope="session")
def grpo_run(tmp_path_factory, models_dir, tiny_run):
    """4 GRPO steps continuing the tiny SFT run's adapter (its evaluation at steps 2 and 4)."""
    from llm_summarizer.training.run import run

    from ..tracking.test_tracking import tracker_env

    tmp = tmp_path_factory.mktemp("grpo")
    over = tiny_overrides(
        tmp,
        models_dir,
        **GRPO,
        **{
            "model.name": tiny_run.model_dir,
            "train.max_steps": 4,
            "train.eval_steps": 2,
            "train.save_steps": 2,
            "train.logging_steps": 1,
            "eval.num_samples": 8,
            "tracking.report_to": "[wandb]",
        },
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        for k, v in tracker_env(tmp).items():
            mp.setenv(k, v)
        return run(load_config("tiny", over))


def test_grpo_run_records_its_stage_reward_and_cost(grpo_run, tiny_run):
    m = json.loads((grpo_run.model_dir / "metrics.json").read_text())
    stage = m["stage"]
    assert stage["method"] == "grpo" and stage["started_from"] == str(tiny_run.model_dir)
    assert stage["started_from_kind"].startswith("adapter")
    assert "TRL's GRPOTrainer" in stage["trainer"]  # no CUDA here: Unsloth leaves GRPO to TRL
    assert stage["reward"]["components"] == {
        "similarity": 1.0,
        "length": 0.5,
        "copying": 0.5,
        "unsupported": 0.5,
        "repetition": 0.5,
        "cut": 1.0,
    }
    assert stage["steps_per_minute"] > 0 and 0 < stage["generation_share"] < 1
    assert m["train"]["global_step"] == 4
    # the SFT model scored before GRPO (base) and the GRPO model after, on the same examples, paired
    assert m["final_vs_base"]["examples"] == 8 and "density" in m["final_vs_base"]["diagnostics_model_minus_base"]
    sft = json.loads((tiny_run.model_dir / "metrics.json").read_text())
    assert sft["stage"] == {"method": "sft"}


def test_grpo_continues_the_sft_adapter_instead_of_a_new_one(grpo_run, tiny_run):
    from safetensors.torch import load_file

    sft = load_file(str(tiny_run.model_dir / "adapter_model.safetensors"))
    grpo = load_file(str(grpo_run.model_dir / "adapter_model.safetensors"))
    assert sft.keys() == grpo.keys()
    # 4 small steps move the weights a little; a fresh LoRA would have other random A matrices and zero B ones
    a = [k for k in sft if "lora_A" in k]
    rel = max(float((grpo[k] - sft[k]).norm() / sft[k].norm()) for k in a)
    assert 0 < rel < 0.2, rel
    moved = [k for k in sft if not (grpo[k] == sft[k]).all()]
    assert moved, "GRPO changed no weight"
    # the SFT model's own scores: the base of this run is far above the untrained tiny model's
    base = json.loads((grpo_run.output_dir / "base_metrics.json").read_text())
    assert base["rougeL"] > 0.5, base


def test_grpo_logs_the_reward_each_component_and_its_share(grpo_run):
    hist = grpo_run.log_history
    steps = [h for h in hist if "reward" in h]
    assert [h["step"] for h in steps] == [1, 2, 3, 4]
    for h in steps:
        for name in ("similarity", "length", "copying", "unsupported", "repetition", "cut"):
            assert f"rewards/{name}/mean" in h and f"rewards/{name}/std" in h
        shares = [v for k, v in h.items() if k.endswith("/share")]
        assert sum(shares) == pytest.approx(1.0, abs=1e-3) or not any(shares)
        assert h["completions/mean_length"] > 0
    assert [h["step"] for h in hist if "eval_rougeL" in h] == [2, 4]
    rows = read_jsonl(grpo_run.output_dir / "grpo_completions.jsonl")
    assert {r["step"] for r in rows} == {1, 2, 3, 4}
    for r in rows:
        assert set(r["rewards"]) == {"similarity", "length", "copying", "unsupported", "repetition", "cut"}
        assert r["rewards"]["cut"] == (-1.0 if r["cut"] else 0.0)


def test_grpo_reaches_wandb_reward_scalars_and_a_completions_table(grpo_run):
    from ..tracking.test_tracking import wandb_runs

    (wrun,) = wandb_runs(grpo_run.output_dir)
    scalars = wrun.scalars()
    for key in ("reward", "rewards/similarity/mean", "rewards/copying/share", "completions/mean_length"):
        assert [s for s, _ in scalars[f"train/{key}"]] == [1, 2, 3, 4], key
    assert [s for s, _ in scalars["eval/rougeL"]] == [0, 2, 4]  # the SFT model's (step 0), then GRPO's
    tables = wrun.table_rows("train/grpo_completions")
    rows = [r for _, rs in tables for r in rs]
    on_disk = read_jsonl(grpo_run.output_dir / "grpo_completions.jsonl")
    assert len(tables) == 4 and len(rows) == len(on_disk)
    for r, d in zip(rows, on_disk):
        assert r["completion"] == d["completion"] and r["cut"] == d["cut"]
        assert r["reward"] == pytest.approx(d["reward"]) and r["reward_copying"] == pytest.approx(
            d["rewards"]["copying"]
        )


def test_grpo_end_of_run_shows_sft_against_grpo_with_intervals(grpo_run):
    from llm_summarizer.training.summary import summary_lines

    text = "\n".join(summary_lines(grpo_run))
    assert "scores SFT model: " in text and "scores GRPO:" in text
    assert "== GRPO minus SFT model on the same 8 validation examples" in text
    assert "GRPO - SFT model with paired bootstrap 95% interval" in text
    assert "GRPO cost:" in text and "completions per prompt" in text
    assert "no reward gaming seen" in text or "warning:" in text
    card = (grpo_run.model_dir / "README.md").read_text()
    assert "- grpo" in card and "trained with GRPO on llm_summarizer's summary reward" in card
    assert "| started from |" in card and "| reward | 1 x similarity + 0.5 x length" in card
    assert "| metric | SFT model | GRPO | change |" in card
    report = (grpo_run.output_dir / "report.md").read_text()
    assert "trained further with GRPO" in report


def test_grpo_model_summarizes_like_any_fine_tuned_model(grpo_run, capsys, tmp_path):
    from llm_summarizer.commands.summarize import main

    doc = tmp_path / "doc.txt"
    doc.write_text(read_jsonl(ROOT / "data" / "demo" / "test.jsonl")[0]["document"])
    capsys.readouterr()
    assert main(["--model", str(grpo_run.model_dir), str(doc)]) == 0
    assert capsys.readouterr().out.strip()


# -- guards that answer before anything loads --------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, said",
    [
        (["rl.num_generations=3"], "rl.num_generations=3 must divide the completions of one generation round"),
        (["rl.similarity_metric=chrF"], "the similarity component is a ROUGE key"),
        (["rl.weights.length=-1"], "a weight is >= 0"),
        (
            [f"rl.weights.{k}=0" for k in ("similarity", "length", "copying", "unsupported", "repetition", "cut")],
            "every component has weight 0",
        ),
        (["rl.length_band=[1.5,0.5]"], "0 < low < high"),
        (["rl.steps_per_generation=3", "train.gradient_accumulation_steps=2"], "must be a multiple of"),
        (["rl.custom=[{function: not_a_spec}]"], "write 'package.module:function'"),
        (["train.packing=true"], "train.packing is for SFT"),
    ],
)
def test_bad_grpo_configs_are_one_message(overrides, said):
    base = [f"{k}={v}" for k, v in GRPO.items()]
    with pytest.raises(UserError, match=said.replace("[", r"\[").replace("(", r"\(")):
        load_config("tiny", base + overrides)


def test_bad_grpo_config_from_the_command_line_exits_2(tmp_path):
    r = run_cli("train", "--config", "tiny", "rl.method=grpo", "rl.num_generations=3", f"output.dir={tmp_path / 'o'}")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "rl.num_generations=3 must divide" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_starting_adapter_of_another_shape_is_named(tiny_run):
    from llm_summarizer.models.loading import starting_adapter

    cfg = load_config("tiny", [f"model.name={tiny_run.model_dir}", "lora.r=8", "lora.alpha=8"])
    with pytest.raises(
        UserError, match=r"is a LoRA adapter; training continues its weights.*set lora.r=16 lora.alpha=32"
    ):
        starting_adapter(cfg, str(tiny_run.model_dir))


def test_completion_budget_against_the_references():
    from llm_summarizer.training.grpo import completion_budget

    lengths = [20] * 50 + [40] * 50
    assert completion_budget(load_config("tiny", []), lengths) == 68  # 1.5 x p95 (40) + 8, the eval rule
    assert completion_budget(load_config("tiny", ["rl.max_completion_length=45"]), lengths) == 45
    with pytest.raises(UserError, match="rl.max_completion_length=10: half of the training references are longer"):
        completion_budget(load_config("tiny", ["rl.max_completion_length=10"]), lengths)


def test_extra_args_of_a_grpo_run_are_checked_against_grpoconfig(tmp_path):
    from llm_summarizer.training.grpo import check_grpo_extra_args, grpo_config
    from llm_summarizer.training.trainer import check_extra_args

    grpo = [f"{k}={v}" for k, v in GRPO.items()]
    cfg = load_config("tiny", [*grpo, "train.extra_args={num_iterationz: 2}"])
    with pytest.raises(UserError, match="num_iterationz: not a field of TRL's GRPOConfig; did you mean num_iterations"):
        check_grpo_extra_args(cfg)  # before anything loads (prepare_output)
    cfg = load_config("tiny", [*grpo, "train.extra_args={num_generations: 2}"])
    with pytest.raises(UserError, match="sets this GRPOConfig field itself"):
        check_grpo_extra_args(cfg)
    # GRPOConfig's own knobs that llm_summarizer leaves alone reach it
    cfg = load_config("tiny", [*grpo, "train.extra_args={generation_batch_size: 16, num_iterations: 1}"])
    assert grpo_config(cfg, tmp_path, True, [], 32, [1.0]).generation_batch_size == 16
    # and an SFT run still checks against SFTConfig
    with pytest.raises(UserError, match="not a field of TRL's SFTConfig"):
        check_extra_args(load_config("tiny", ["train.extra_args={num_iterations: 2}"]))


@pytest.mark.slow
def test_grpo_resumes_after_sigkill_to_the_uninterrupted_adapter(tmp_path, models_dir):
    """The soak script on the GRPO stage: SIGKILL at random moments and while a checkpoint is written; each resumed
    run must end with the uninterrupted run's adapter, losses and evaluations (the sampled completions included:
    their RNG state is in every checkpoint)."""
    sets = [f"--set={k}={v}" for k, v in GRPO.items()]
    r = subprocess.run(
        [
            sys.executable,
            "scripts/kill_resume_soak.py",
            "--kills",
            "2",
            "--steps",
            "8",
            "--save-steps",
            "2",
            "--eval-steps",
            "4",
            "--train-rows",
            "32",
            "--workdir",
            str(tmp_path),
            "--models-dir",
            str(models_dir),
            "--report",
            str(tmp_path / "report.json"),
            *sets,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["ok"] and rep["kills_landed"] == 2
    assert rep["adapter_max_abs_diff"] <= 1e-5 and rep["rouge_steps_compared"] >= 2
    m = json.loads((tmp_path / "uninterrupted" / "fine_tuned" / "metrics.json").read_text())
    assert m["stage"]["method"] == "grpo"


def test_grpo_from_a_missing_sft_model_says_to_train_it_first(tmp_path):
    from llm_summarizer.models.loading import resolve_model_path

    cfg = load_config("grpo-demo", [f"model.name={tmp_path / 'not-trained-yet'}"])
    with pytest.raises(UserError, match="directory not found. A GRPO stage starts from a fine-tuned model"):
        resolve_model_path(cfg)
    assert load_config("grpo-demo").model.name == "./fine_tuned/demo"
