"""llm-summarizer tune: an Optuna study of training runs on the tiny model, its results, its resume."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ..conftest import DEMO, ROOT, run_cli

pytestmark = pytest.mark.slow

SPACE = (
    "tune.space={train.learning_rate: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}, "
    "lora.r: {type: categorical, choices: [4, 8]}}"
)


def tune_args(folder: Path, models_dir: Path, trials: int, *extra) -> list[str]:
    return [
        "--config",
        "tiny",
        "--trials",
        str(trials),
        SPACE,
        f"tune.dir={folder}",
        f"model.cache_dir={models_dir}",
        f"data.train={{path: {DEMO / 'train.jsonl'}, limit: 400}}",
        f"data.validation={{path: {DEMO / 'validation.jsonl'}, limit: 16}}",
        "data.test=null",
        "train.max_steps=90",
        "train.eval_steps=30",
        "train.save_steps=30",
        "train.logging_steps=30",
        "eval.num_samples=8",
        "eval.max_new_tokens=24",
        "output.report=false",
        "tune.n_startup_trials=2",
        "tune.prune_startup_trials=1",
        *extra,
    ]


@pytest.fixture(scope="module")
def study(tmp_path_factory, models_dir):
    folder = tmp_path_factory.mktemp("tune") / "study"
    r = run_cli("tune", *tune_args(folder, models_dir, 3), timeout=1200)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    return folder, r


def test_three_trials_values_are_their_runs_rouge(study):
    folder, r = study
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["metric"] == "eval_rougeL" and len(summary["trials"]) == 3
    states = [t["state"] for t in summary["trials"]]
    assert set(states) <= {"complete", "pruned"} and "complete" in states
    for t in summary["trials"]:
        run_dir = Path(t["run_dir"])
        m = json.loads((run_dir / "fine_tuned" / "metrics.json").read_text())
        cfg = yaml.safe_load((run_dir / "fine_tuned" / "config.yaml").read_text())
        assert cfg["train"]["learning_rate"] == pytest.approx(t["train.learning_rate"])  # the trial's own values
        assert cfg["lora"]["r"] == t["lora.r"]
        assert cfg["tracking"]["group"] == summary["study"]
        assert cfg["tune"]["storage"] is None  # a storage URL (maybe with a password) stays out of saved configs
        if t["state"] == "complete":
            assert t["eval_rougeL"] == pytest.approx(m["final"]["rougeL"])
            assert m["train"]["global_step"] == 90
        else:  # stopped by the pruner at an evaluation before the end
            assert m["tune"]["pruned_at_step"] in (30, 60) and m["train"]["global_step"] == m["tune"]["pruned_at_step"]
    assert any(t["eval_rougeL"] > 0.05 for t in summary["trials"] if t["state"] == "complete")  # trials learned
    with open(folder / "trials.csv", newline="") as f:
        assert [row["trial"] for row in csv.DictReader(f)] == ["0", "1", "2"]
    for t in summary["trials"]:  # the command says as it goes which trial started and how it ended
        assert f"[tune] trial {t['trial']} (" in r.stdout
        assert (
            f"[tune] trial {t['trial']}: " + ("pruned at step" if t["state"] == "pruned" else "eval_rougeL=")
            in r.stdout
        )


def test_the_best_trial_config_loads_and_the_summary_names_how_to_evaluate_it(study):
    from llm_summarizer.config_loading import load_config

    folder, r = study
    best = json.loads((folder / "summary.json").read_text())["best"]
    complete = [t for t in json.loads((folder / "summary.json").read_text())["trials"] if t["state"] == "complete"]
    assert best["eval_rougeL"] == max(t["eval_rougeL"] for t in complete)
    cfg = load_config(str(folder / "best_config.yaml"))
    assert cfg.train.learning_rate == pytest.approx(best["params"]["train.learning_rate"])
    assert cfg.lora.r == best["params"]["lora.r"]
    assert f"best: trial {best['trial']}, eval_rougeL={best['eval_rougeL']:.4f}" in r.stdout
    assert f"llm-summarizer evaluate --model {best['model_dir']} --compare-base" in r.stdout


def test_rerunning_the_finished_study_adds_nothing(study, models_dir):
    folder, _ = study
    before = json.loads((folder / "summary.json").read_text())["trials"]
    r = run_cli("tune", *tune_args(folder, models_dir, 3), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[tune] trial" not in r.stdout  # no new trial ran
    assert json.loads((folder / "summary.json").read_text())["trials"] == before


@pytest.mark.parametrize(
    "space, message",
    [
        (
            "tune.space={train.learnin_rate: {type: float, low: 0.001, high: 0.01}}",
            "tune.space.train.learnin_rate (value 0.001): ",
        ),
        (
            "tune.space={lora.r: {type: int, low: 16, high: 8}}",
            "tune.space.lora.r: low (16.0) must be below high (8.0)",
        ),
        ("tune.space={train.learning_rate: {type: float, low: 0, high: 0.1, log: true}}", "log=true needs low > 0"),
        ("tune.space={}", "tune.space is empty"),
    ],
)
def test_a_bad_search_space_is_one_message_before_any_trial(tmp_path, space, message, capsys):
    from llm_summarizer.commands.tune import main

    assert main(["--config", "tiny", "--trials", "2", space, f"tune.dir={tmp_path / 'study'}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "study" / "trial-000").exists()


def test_a_killed_tune_driver_resumes_the_study_and_its_running_trial(tmp_path, models_dir):
    import psutil

    folder = tmp_path / "study"
    cmd = [sys.executable, "-m", "llm_summarizer", "tune", *tune_args(folder, models_dir, 2, "tune.pruner=none")]
    p = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    ckpt = folder / "trial-000" / "outputs" / "checkpoint-30" / "checkpoint_manifest.json"
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None and not ckpt.exists():
        time.sleep(0.1)
    assert ckpt.exists() and p.poll() is None, "trial 0 finished or failed before the driver could be killed"
    children = psutil.Process(p.pid).children(recursive=True)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, "the trial's train process outlived its driver"
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((folder / "summary.json").read_text())
    states = {t["trial"]: t["state"] for t in summary["trials"]}
    assert states[0] == "fail"  # the orphan, re-queued
    done = [t for t in summary["trials"] if t["state"] == "complete"]
    assert len(done) == 2 and done[0]["run_dir"] == str(folder / "trial-000")  # the retry ran in its folder
    assert "resuming from" in (folder / "trial-000" / "train.log").read_text()
    m = json.loads((folder / "trial-000" / "fine_tuned" / "metrics.json").read_text())
    assert m["train"]["global_step"] == 90
    assert m["train"]["resumed_from"].endswith(("checkpoint-30", "checkpoint-60"))
