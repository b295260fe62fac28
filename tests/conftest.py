"""Shared fixtures. Trained tiny-model runs are session-scoped: each is trained once per test session.

The unsloth backend is imported once in this process (it must come before transformers); tests that
need a process without Unsloth's patches (the transformers backend) run the CLI in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
DEMO = ROOT / "data" / "demo"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Unsloth must be imported before transformers/trl/peft for its patches to apply to the in-process runs.
from llm_summarizer.models.unsloth_first import import_unsloth  # noqa: E402

import_unsloth()


def shared_dataset(name: str) -> Path:
    p = SHARED_DATA / name
    if not (p / "train.jsonl").exists():
        pytest.skip(f"../shared/data/{name} is not present on this machine")
    return p


def run_cli(module: str, *args, cwd=ROOT, env=None, timeout=900) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "llm_summarizer", module, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=e)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    # random:tiny models are cached by content; one directory for the whole session.
    return tmp_path_factory.mktemp("models")


def tiny_overrides(tmp: Path, models_dir: Path, **extra) -> list[str]:
    """A short demo-data run on the tiny model, writing only under tmp."""
    o = {
        "model.random_init_dir": models_dir,
        "output.dir": tmp / "outputs",
        "output.model_dir": tmp / "fine_tuned",
        "train.max_steps": 40,
        "train.eval_steps": 20,
        "train.save_steps": 20,
        "train.logging_steps": 10,
        "eval.num_samples": 16,
    }
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, models_dir):
    """configs/demo.yaml exactly as the README runs it (only the output locations moved)."""
    from llm_summarizer.config import load_config
    from llm_summarizer.training.run import run

    tmp = tmp_path_factory.mktemp("demo")
    cfg = load_config("demo",
                      [f"model.random_init_dir={models_dir}", f"output.dir={tmp / 'outputs'}",
                       f"output.model_dir={tmp / 'fine_tuned'}"])
    return run(cfg)


def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(l) for l in Path(p).read_text(encoding="utf-8").splitlines() if l.strip()]
