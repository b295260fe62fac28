import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from llm_summarizer.config_loading import load_config

from ..conftest import ROOT, read_jsonl, run_cli, tiny_overrides

FINAL_FILES = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "config.yaml",
    "metrics.json",
    "run_info.json",
    "README.md",
    ".llm_summarizer.json",
}  # files.OWNER_FILE: what the folder is, so a later run may replace it


def final_file_set(d: Path) -> set:
    return {p.name for p in d.iterdir()}


def load_adapter(d: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(d / "adapter_model.safetensors"))


def test_demo_learns_and_leaves_exact_files(tiny_run):
    d = tiny_run.model_dir
    assert final_file_set(d) == FINAL_FILES
    m = json.loads((d / "metrics.json").read_text())
    for block in ("base", "final"):
        assert set(m[block]) >= {"rouge1", "rouge2", "rougeL", "rougeLsum"}
        assert all(0.0 <= m[block][k] <= 1.0 for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"))
    assert m["final"]["rougeL"] >= 0.7, m["final"]
    assert m["final"]["rougeL"] >= m["base"]["rougeL"] + 0.3, (m["base"], m["final"])
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["model"]["name"] == "random:tiny" and cfg["train"]["max_steps"] > 0
    info = json.loads((d / "run_info.json").read_text())
    assert info["seed"] == cfg["train"]["seed"] and "unsloth" in info["versions"] and "torch" in info["versions"]
    adapter = json.loads((d / "adapter_config.json").read_text())
    assert adapter["r"] == cfg["lora"]["r"]
    assert sorted(adapter["target_modules"]) == sorted(cfg["lora"]["target_modules"])
    # the output dir holds the checkpoints of the run, nothing half-written beside the final dir
    assert not [p for p in d.parent.iterdir() if p.name.startswith(".")]


def test_metrics_hold_each_summary_against_its_document_beside_rouge(tiny_run):
    from llm_summarizer.evaluation.diagnostics import DIAGNOSTIC_KEYS
    from llm_summarizer.training.summary import summary_lines

    m = json.loads((tiny_run.model_dir / "metrics.json").read_text())
    for block in ("base", "final"):
        assert set(DIAGNOSTIC_KEYS) <= set(m[block]), (block, sorted(m[block]))
        assert 0.0 <= m[block]["coverage"] <= 1.0 and m[block]["density"] >= m[block]["coverage"]
    refs = m["references"]  # the references of the same validation examples against their documents
    assert 0.0 < refs["coverage"] <= 1.0 and refs["length_ratio"] is None and refs["cut_by_max_new_tokens"] is None
    # the untrained model babbles until max_new_tokens; the trained one takes its words from the document, writes
    # about as much as the references and ends by itself
    assert m["base"]["cut_by_max_new_tokens"] >= 0.5 and m["final"]["cut_by_max_new_tokens"] == 0.0
    assert m["final"]["coverage"] > m["base"]["coverage"] + 0.3, (m["base"], m["final"])
    assert m["final"]["novel_2gram"] < m["base"]["novel_2gram"]
    assert 0.8 < m["final"]["length_ratio"] < 1.25
    assert m["eval_protocol"]["diagnostics"]["tokens"] == "the ROUGE tokenizer (default) without stemming"
    diff = m["final_vs_base"]["diagnostics_model_minus_base"]
    assert diff["coverage"]["diff"] == pytest.approx(m["final"]["coverage"] - m["base"]["coverage"], abs=1e-9)
    text = "\n".join(summary_lines(tiny_run))
    assert "== beyond ROUGE: each summary against its document" in text
    assert re.search(r"coverage +\d+\.\d% +\d+\.\d% +\d+\.\d% +[+-]\d+\.\d\d pts \[", text), text
    card = (tiny_run.model_dir / "README.md").read_text()
    assert "## Beyond ROUGE: each summary against its document" in card
    assert f"| {100 * m['final']['coverage']:.1f}% |" in card


def test_run_reports_training_tokens_per_second_and_peak_memory(tiny_run):
    from llm_summarizer.training.summary import summary_lines

    t = json.loads((tiny_run.model_dir / "metrics.json").read_text())["train"]
    cfg = yaml.safe_load((tiny_run.model_dir / "config.yaml").read_text())
    seen = (
        cfg["train"]["max_steps"]
        * cfg["train"]["per_device_train_batch_size"]
        * cfg["train"]["gradient_accumulation_steps"]
    )
    # every example trained has some tokens and at most max_seq_length of them
    assert 8 * seen <= t["train_tokens"] <= cfg["model"]["max_seq_length"] * seen
    assert t["train_tokens_per_s"] == pytest.approx(t["train_tokens"] / t["train_runtime_s"], rel=0.01)
    assert 0.1 < t["peak_memory_gib"] < 64 and t["peak_memory_of"] in ("process RSS", "CUDA memory allocated")
    text = "\n".join(summary_lines(tiny_run))
    assert f"{t['train_tokens_per_s']:.0f} training tokens/s, peak {t['peak_memory_gib']:.2f} GiB" in text
    assert "wall time:" in text


def test_run_reports_where_the_seconds_before_the_first_step_went(tiny_run):
    from llm_summarizer.training.summary import summary_lines

    m = json.loads((tiny_run.model_dir / "metrics.json").read_text())
    st = m["train"]["startup"]
    parts = ["imports_s", "data_read_s", "model_load_s", "tokenize_and_trainer_s", "base_eval_s", "first_step_s"]
    assert list(st) == parts + ["to_first_step_s"]
    assert all(st[k] >= 0 for k in parts)
    assert st["to_first_step_s"] == pytest.approx(sum(st[k] for k in parts), abs=0.05)
    assert st["base_eval_s"] > 0 and st["model_load_s"] > 0  # the tiny config scores the base model
    assert st["to_first_step_s"] < tiny_run.wall_s + st["imports_s"]
    text = "\n".join(summary_lines(tiny_run))
    assert f"start-up:        {st['to_first_step_s']:.1f} s to the first optimizer step (imports " in text
    assert f"base evaluation {st['base_eval_s']:.1f}" in text


def test_eval_loss_runs_on_the_summary_subset_unless_asked_for_all(tiny_run):
    import datasets

    from llm_summarizer.config_loading import load_config
    from llm_summarizer.training.summary_eval import pick_subset
    from llm_summarizer.training.trainer import eval_loss_rows

    val = datasets.Dataset.from_dict({"id": [f"v{i}" for i in range(50)]})
    cfg = load_config("tiny", ["eval.num_samples=8"])
    subset = eval_loss_rows(cfg, val)["id"]
    assert subset == [f"v{i}" for i in pick_subset(50, 8, cfg.eval.sample_seed)]  # ROUGE's rows, in order
    assert eval_loss_rows(load_config("tiny", ["eval.num_samples=8", "eval.loss_rows=all"]), val)["id"] == val["id"]
    assert eval_loss_rows(load_config("tiny", ["eval.num_samples=8", "eval.generate=false"]), val)["id"] == val["id"]
    proto = json.loads((tiny_run.model_dir / "metrics.json").read_text())["eval_protocol"]
    assert proto["eval_loss_rows"] == "the same subset"


def test_demo_logs_rouge_at_every_evaluation(tiny_run):
    evals = [h for h in tiny_run.log_history if "eval_loss" in h]
    assert len(evals) >= 3
    for h in evals:
        for k in (
            "eval_rouge1",
            "eval_rouge2",
            "eval_rougeL",
            "eval_rougeLsum",
            "eval_gen_len_mean",
            "eval_gen_hit_max_frac",
            "eval_summaries_seconds",
            "eval_coverage",
            "eval_density",
            "eval_novel_2gram",
            "eval_unsupported_numbers",
            "eval_lead_copy",
            "eval_diagnostics_seconds",
        ):
            assert k in h, (k, h)
    ckpts = sorted(tiny_run.output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    assert any("eval_rougeL" in h for h in state["log_history"])


@pytest.mark.parametrize("sampling", ["group_by_length", "random"])
def test_resume_continues_and_matches_uninterrupted(tmp_path, models_dir, sampling):
    from transformers import TrainerCallback

    from llm_summarizer.training.run import run

    class StopAt(TrainerCallback):
        def __init__(self, step):
            self.step = step

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == self.step:
                control.should_training_stop = True

    # 40 training rows = 5 steps per epoch: the run stops and resumes in the third epoch, where the
    # batch order is no longer the one drawn at start-up
    base = [
        "eval.generate=false",
        "eval.base_eval=false",
        "train.eval_strategy=no",
        "train.max_steps=20",
        "train.save_steps=6",
        "train.save_total_limit=null",
        "train.logging_steps=1",
        "data.train.limit=40",
        f"train.sampling={sampling}",
    ]
    full = run(load_config("tiny", tiny_overrides(tmp_path / "full", models_dir) + base))
    cfg = load_config("tiny", tiny_overrides(tmp_path / "cut", models_dir) + base)
    first = run(cfg, extra_callbacks=[StopAt(12)])
    assert first.metrics.train.global_step == 12
    # a newer checkpoint that is incomplete must be skipped
    bad = cfg.output_dir / "checkpoint-15"
    shutil.copytree(cfg.output_dir / "checkpoint-12", bad)
    (bad / "optimizer.pt").unlink()

    class FirstStep(TrainerCallback):
        seen = None

        def on_step_end(self, args, state, control, **kw):
            if self.seen is None:
                self.seen = state.global_step

    first_step = FirstStep()
    second = run(cfg, extra_callbacks=[first_step])
    assert second.resumed_from == cfg.output_dir / "checkpoint-12"
    assert second.metrics.train.global_step == 20
    assert first_step.seen == 13, "the resumed run must continue the step count, not restart"
    # speed is this process's own: 8 of the 20 steps were trained here
    assert second.metrics.train.train_tokens < full.metrics.train.train_tokens
    # the history carries the first segment's entries from the checkpoint, each step once
    steps = [h["step"] for h in second.log_history if "loss" in h]
    assert steps == sorted(set(steps)) and steps == [h["step"] for h in full.log_history if "loss" in h]
    a, b = load_adapter(full.model_dir), load_adapter(second.model_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-5, k
    losses_full = {h["step"]: h["loss"] for h in full.log_history if "loss" in h}
    losses_res = {h["step"]: h["loss"] for h in second.log_history if "loss" in h}
    for step, loss in losses_res.items():
        assert loss == pytest.approx(losses_full[step], rel=1e-4, abs=1e-5)


def test_explicit_resume_path_must_be_a_complete_checkpoint(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    r = run_cli(
        "train",
        "--config",
        "tiny",
        f"train.resume={tmp_path / 'checkpoint-5'}",
        f"output.dir={tmp_path / 'out'}",
        timeout=120,
    )
    assert r.returncode == 2
    assert "is not a complete checkpoint (trainer_state.json missing or empty)" in r.stderr
    assert "Traceback" not in r.stderr


def test_transformers_backend_same_file_set(tmp_path, models_dir):
    r = run_cli(
        "train",
        "--config",
        "tiny",
        "model.backend=transformers",
        *tiny_overrides(tmp_path, models_dir, **{"train.max_steps": 20, "train.eval_steps": 10}),
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    d = tmp_path / "fine_tuned"
    assert final_file_set(d) == FINAL_FILES
    m = json.loads((d / "metrics.json").read_text())
    assert m["train"]["global_step"] == 20 and set(m["final"]) >= {"rouge1", "rougeL"}
    assert json.loads((d / "run_info.json").read_text())["model"]["backend"] == "transformers"
    # it learned: the training loss of the last logged steps is below that of the first
    history = json.loads((tmp_path / "outputs" / "checkpoint-20" / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) >= 2 and losses[-1] < losses[0] - 0.5, losses
    assert "unsloth" not in json.loads((d / "adapter_config.json").read_text()).get("base_model_name_or_path", "")


def test_trainer_class_api(tmp_path, models_dir):
    from llm_summarizer.trainer_class import TrainerClass

    tc = TrainerClass.from_config(
        "tiny", tiny_overrides(tmp_path, models_dir, **{"train.max_steps": 10, "eval.base_eval": "false"})
    )
    trainer = tc.trainer()
    assert type(trainer).__name__ == "SummarizationTrainer"
    result = tc.Start_Training(trainer)
    assert result.metrics.train.global_step == 10
    assert final_file_set(tc.fine_tuned_model_dir) == FINAL_FILES


def test_trainer_class_started_again_after_a_failure_resumes_from_its_checkpoint(tmp_path, models_dir):
    """A Start_Training that fails (here: at step 4, after checkpoint-3) leaves the run closed; calling it again
    opens the run afresh (lock, resume point) and continues from the checkpoint instead of the failed trainer."""
    from transformers import TrainerCallback

    from llm_summarizer.trainer_class import TrainerClass

    class FailAtStep4(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise RuntimeError("planted failure at step 4")

    tc = TrainerClass.from_config(
        "tiny",
        tiny_overrides(
            tmp_path,
            models_dir,
            **{"train.max_steps": 6, "train.save_steps": 3, "train.eval_steps": 3, "eval.generate": "false"},
        ),
    )
    trainer = tc.trainer()
    trainer.add_callback(FailAtStep4())
    with pytest.raises(RuntimeError, match="planted failure"):
        tc.Start_Training(trainer)
    assert (tmp_path / "outputs" / "checkpoint-3").is_dir()
    result = tc.Start_Training()
    assert result.resumed_from is not None and result.resumed_from.name == "checkpoint-3"
    assert result.metrics.train.global_step == 6
    assert final_file_set(tc.fine_tuned_model_dir) == FINAL_FILES


def test_trainer_class_with_model_and_datasets(tmp_path, models_dir):
    """The original script's call shape: model, tokenizer and datasets passed in directly."""
    from llm_summarizer.data import rows as R
    from llm_summarizer.models.loading import load_for_training
    from llm_summarizer.trainer_class import TrainerClass

    cfg = load_config("tiny", [f"model.cache_dir={models_dir}"])
    model, tok, _ = load_for_training(cfg, R.load_raw_splits(cfg))
    train_rows = read_jsonl(ROOT / "data/demo/train.jsonl")[:200]
    val_rows = read_jsonl(ROOT / "data/demo/validation.jsonl")[:20]
    tc = TrainerClass(
        model,
        tok,
        train_rows,
        val_rows,
        max_seq_length=256,
        out_model_name="api",
        fine_tuned_model_dir=str(tmp_path / "ft"),
        overrides=[
            f"output.dir={tmp_path / 'out'}",
            "train.max_steps=6",
            "train.eval_steps=3",
            "train.save_steps=3",
            "eval.num_samples=4",
            "train.optim=adamw_torch",
        ],
    )
    trainer = tc.trainer()
    tc.Start_Training(trainer)
    assert final_file_set(tmp_path / "ft") == FINAL_FILES
    assert (tmp_path / "out" / "checkpoint-6").is_dir()


def test_default_config_offline_says_what_to_do():
    r = run_cli(
        "train",
        "--config",
        "configs/default.yaml",
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert "--config tiny" in r.stderr and "model.name=/path/to/local/model" in r.stderr
    assert "Traceback" not in r.stderr


def test_extra_args_reach_sftconfig_and_bad_keys_are_named(tmp_path, models_dir):
    from llm_summarizer.errors import UserError
    from llm_summarizer.models.device import training_plan
    from llm_summarizer.training.trainer import sft_config

    cfg = load_config("tiny", [f"output.dir={tmp_path}", "train.extra_args={adam_beta2: 0.95, neftune_noise_alpha: 5}"])
    args = sft_config(cfg, training_plan(cfg), tmp_path, True, ["none"])
    assert args.adam_beta2 == 0.95 and args.neftune_noise_alpha == 5
    for extra, words in (
        ("{adam_beta3: 0.9}", "not a field of TRL's SFTConfig; did you mean adam_beta2"),
        ("{learning_rate: 0.1}", "sets this SFTConfig field itself"),
        ("{hub_token: hf_abc}", "tokens are read from the environment"),
        ("{adam_beta2: fast}", "'fast' is str; SFTConfig expects float"),
    ):
        cfg = load_config("tiny", [f"output.dir={tmp_path}", f"train.extra_args={extra}"])
        with pytest.raises(UserError, match=words):
            sft_config(cfg, training_plan(cfg), tmp_path, True, ["none"])
    # through the command: exit 2, one message, before any model is loaded or anything is written
    out = tmp_path / "cli"
    r = run_cli(
        "train",
        "--config",
        "tiny",
        f"model.cache_dir={models_dir}",
        f"output.dir={out}",
        f"output.model_dir={tmp_path / 'ft'}",
        "train.extra_args={adam_beta3: 0.9}",
    )
    assert r.returncode == 2 and "train.extra_args.adam_beta3" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "ft").exists() and not list(out.glob("checkpoint-*"))
