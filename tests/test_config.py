import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_summarizer.config_loading import config_description, load_config, shipped_configs
from llm_summarizer.errors import ConfigError, UserError

from .conftest import ROOT, run_cli


def test_every_shipped_config_parses():
    shipped = shipped_configs()
    assert set(shipped) >= {"demo", "default"}
    for name, f in shipped.items():
        assert f.parent == ROOT / "llm_summarizer" / "configs"
        cfg = load_config(name)
        assert cfg.model.name and config_description(f), name


def test_defaults_and_derived_paths():
    cfg = load_config(None, ["output.run_name=abc"])
    assert cfg.output_dir == Path("outputs/abc")
    assert cfg.model_dir == Path("fine_tuned/abc")
    assert cfg.train.metric_for_best_model == "eval_rougeL"
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_dotted_overrides_parse_types():
    cfg = load_config(
        "tiny",
        [
            "train.learning_rate=1e-4",
            "lora.target_modules=[q_proj,v_proj]",
            "train.max_steps=7",
            "tracking.report_to=[wandb,tensorboard]",
            "data.train.limit=5",
            "lora.target_modules=all-linear",
        ],
    )
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    assert cfg.train.max_steps == 7
    assert cfg.lora.target_modules == "all-linear"
    assert cfg.tracking.report_to == ["wandb", "tensorboard"]
    assert cfg.data.train.limit == 5 and cfg.data.train.path == "data/demo/train.jsonl"


def test_all_errors_in_one_message():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["lora.rr=3", "train.max_steps=abc", "model.dtype=float8", "nosuch.key=1"])
    msg = str(e.value)
    assert "4 problem(s)" in msg
    assert "lora.rr: unknown key; did you mean 'r'?" in msg
    assert "train.max_steps" in msg and "'abc'" in msg
    assert "model.dtype" in msg
    assert "nosuch: unknown key" in msg


def test_impossible_combination():
    with pytest.raises(ConfigError, match="load_in_4bit and load_in_8bit"):
        load_config(None, ["model.load_in_4bit=true", "model.load_in_8bit=true"])


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  name: x\n  backend: [unsloth\ntrain:\n  max_steps: 3\n")
    with pytest.raises(UserError, match=r"bad.yaml: line \d+, column \d+: YAML syntax error"):
        load_config(p)


def test_cli_config_error_exit_2_no_traceback_no_torch(tmp_path):
    # The error must come before torch is imported: check in a fresh interpreter.
    code = (
        "import sys; from llm_summarizer.commands.train import main; rc = main(['--config', 'demo', "
        "'lora.rr=1', 'train.seed=x']); print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH'); "
        "raise SystemExit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "lora.rr: unknown key" in r.stderr and "train.seed" in r.stderr
    assert "NO_TORCH" in r.stdout


def test_cli_print_config_is_resolved_yaml():
    r = run_cli("train", "--config", "tiny", "--print-config", "train.max_steps=11", timeout=120)
    assert r.returncode == 0, r.stderr
    data = yaml.safe_load(r.stdout)
    assert data["train"]["max_steps"] == 11
    assert set(data) == {"model", "lora", "data", "train", "eval", "output", "tracking", "scale", "tune", "rl"}


def test_missing_config_file_exit_2():
    r = run_cli("train", "--config", "configs/nope.yaml", timeout=120)
    assert r.returncode == 2
    assert "config file not found: configs/nope.yaml" in r.stderr and "default, demo" in r.stderr
    assert "Traceback" not in r.stderr


def test_early_stopping_and_best_model_agree_on_which_way_is_better():
    """train.greater_is_better reaches early stopping on the same metric (it used to be inferred there)."""
    from types import SimpleNamespace

    from llm_summarizer.training.stopping import early_stopping_callback

    cfg = load_config(
        None,
        [
            "train.metric_for_best_model=eval_rougeL",
            "train.greater_is_better=false",
            "train.early_stopping=[{metric: eval_rougeL, patience: 1}, {metric: eval_loss}]",
        ],
    )
    assert cfg.greater_is_better("eval_rougeL") is False and cfg.greater_is_better("rougeL") is False
    assert cfg.greater_is_better("eval_loss") is False and cfg.greater_is_better("eval_rouge1") is True
    stop = early_stopping_callback("eval_rougeL", 1, 0.0, cfg.greater_is_better("eval_rougeL"))
    control = SimpleNamespace(should_training_stop=False)
    state = SimpleNamespace(global_step=10)
    stop.on_evaluate(None, state, control, metrics={"eval_rougeL": 0.5})
    stop.on_evaluate(None, state, control, metrics={"eval_rougeL": 0.4})  # lower is better here: improved
    assert not control.should_training_stop
    stop.on_evaluate(None, state, control, metrics={"eval_rougeL": 0.6})
    assert control.should_training_stop
