"""The product as a user installs it: a built wheel in an environment of its own, used from a folder outside the
checkout. Its ready configs find the data shipped inside the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow


def test_a_built_wheel_runs_its_ready_configs_from_any_directory(tmp_path, models_dir):
    wheels = tmp_path / "wheels"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = wheels.glob("llm_summarizer-*.whl")
    # A fresh environment: the wheel installed into it; the heavy dependencies (GBs) borrowed from the project's
    # environment through a path file, which adds them without its editable install of this checkout.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import llm_summarizer; print(llm_summarizer.__file__)"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(site)), where  # the installed wheel, not this checkout

    cli = str(venv / "bin" / "llm-summarizer")
    r = subprocess.run([cli, "configs"], capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert r.returncode == 0 and "demo" in r.stdout and "tiny" in r.stdout, r.stdout + r.stderr
    for name in ("demo", "tiny"):  # each ready config finds its data inside the installed package
        r = subprocess.run(
            [cli, "train", "--config", name, "--print-config"],
            capture_output=True,
            text=True,
            cwd=work,
            env=env,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        train = next(line for line in r.stdout.splitlines() if line.strip().startswith("path:"))
        assert str(site) in train and Path(train.split("path:")[1].strip()).is_file(), train

    r = subprocess.run(
        [
            cli,
            "train",
            "--config",
            "tiny",
            f"model.cache_dir={models_dir}",
            "train.max_steps=2",
            "eval.num_samples=2",
            "train.eval_steps=2",
            "train.save_steps=2",
            "output.report=false",
        ],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((work / "fine_tuned" / "tiny" / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 2 and metrics["final"]["rougeL"] is not None
    assert (work / "outputs" / "tiny" / "checkpoint-2").is_dir()
