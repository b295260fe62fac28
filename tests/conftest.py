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
    return subprocess.run(
        [sys.executable, "-m", "llm_summarizer", module, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=e,
    )


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    # random:tiny models are cached by content; one directory for the whole session.
    return tmp_path_factory.mktemp("models")


def tiny_overrides(tmp: Path, models_dir: Path, **extra) -> list[str]:
    """A short demo-data run on the tiny model, writing only under tmp."""
    o = {
        "model.cache_dir": models_dir,
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
def tiny_run(tmp_path_factory, models_dir):
    """The ready config `tiny` as it ships (only the output locations moved): the fast tests' trained model."""
    from llm_summarizer.config_loading import load_config
    from llm_summarizer.training.run import run

    tmp = tmp_path_factory.mktemp("tiny")
    cfg = load_config(
        "tiny",
        [f"model.cache_dir={models_dir}", f"output.dir={tmp / 'outputs'}", f"output.model_dir={tmp / 'fine_tuned'}"],
    )
    return run(cfg)


def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(l) for l in Path(p).read_text(encoding="utf-8").splitlines() if l.strip()]


# -- the real model ------------------------------------------------------------------------------
# SmolLM2-135M-Instruct comes from the package registry (model.name: smollm2-135m-instruct) as a GGUF file and
# is converted once per session. Tests that use it are marked real_model: they run on the CPU (minutes).

REAL_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("real-models")


@pytest.fixture(scope="session")
def smollm2_gguf(real_cache) -> Path:
    from llm_summarizer.models import registry

    return registry.fetch(REAL_MODEL, real_cache)


CONVERT = """
import json, sys, torch
from llm_summarizer.commands.boot import setup_logging
from llm_summarizer.models.gguf import materialize
setup_logging()
print(json.dumps({"dir": str(materialize(sys.argv[1], sys.argv[2], torch.float32))}))
"""


@pytest.fixture(scope="session")
def smollm2_conversion(smollm2_gguf, real_cache) -> dict:
    """The GGUF converted by two processes started together (the cache must end with one complete directory)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONVERT, str(smollm2_gguf), str(real_cache)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    dirs = [json.loads(out.strip().splitlines()[-1])["dir"] for out, _ in outs]
    return {"dirs": dirs, "logs": [err for _, err in outs], "dir": Path(dirs[0])}


@pytest.fixture(scope="session")
def real_run(tmp_path_factory, real_cache, smollm2_conversion):
    """SmolLM2 fine-tuned on DialogSum for a few CPU minutes, shared by the real-model tests."""
    from llm_summarizer.config_loading import load_config
    from llm_summarizer.training.run import run

    data = shared_dataset("dialogsum")
    tmp = tmp_path_factory.mktemp("real")
    cfg = load_config(
        "demo",
        [
            f"model.cache_dir={real_cache}",
            f"output.dir={tmp / 'outputs'}",
            f"output.model_dir={tmp / 'fine_tuned'}",
            f"data.train={{path: {data / 'train.jsonl'}, limit: 160}}",
            f"data.validation={{path: {data / 'validation.jsonl'}, limit: 24}}",
            f"data.test={{path: {data / 'test.jsonl'}, limit: 8}}",
            "data.instruction=Summarize the following dialogue in a few sentences.",
            "train.max_steps=30",
            "train.eval_steps=30",
            "train.save_steps=30",
            "eval.num_samples=24",
        ],
    )
    return run(cfg)
