"""The Colab notebook: committed without outputs, install pins in step with the lock, and executed top to
bottom (nbclient, the kernel of this environment) in offline demo mode with a short run."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import ROOT
from .tracking.test_tracking import tracker_env, wandb_runs

NOTEBOOK = ROOT / "notebooks" / "llm_summarizer_colab.ipynb"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _cells():
    import nbformat

    return nbformat.read(NOTEBOOK, as_version=4).cells


def test_notebook_is_committed_without_outputs():
    for cell in _cells():
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def test_install_cell_pins_match_the_lock():
    locked = {}
    for f in ("requirements/lock-linux-x86_64.txt", "requirements/unsloth.txt"):
        for line in (ROOT / f).read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
            if m:
                locked[_norm(m.group(1))] = m.group(2)
    (install,) = [c.source for c in _cells() if "UNSLOTH_PINS" in c.source and "def pip" in c.source]
    pins = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', install))
    assert {"transformers", "trl", "peft", "unsloth", "unsloth_zoo", "wandb"} <= set(pins)
    for name, version in pins.items():
        assert locked.get(_norm(name)) == version, (
            f"{name}=={version} in the notebook, {locked.get(_norm(name))} in the lock"
        )
    # unsloth goes in with --no-deps, after everything else
    assert install.index('pip("--no-deps", *UNSLOTH_PINS)') > install.index("pip(*PINS)")


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_in_offline_demo_mode(tmp_path, models_dir, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    (i,) = [n for n, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    params = {
        "OFFLINE_DEMO": True,
        "TEST_RUN": True,
        "REPORT_TO": "wandb",
        "RUN_NAME": "nb-demo",
        "WORK_DIR": str(tmp_path),
        "OVERRIDES": f"model.cache_dir={models_dir}",
        "EXPORT_FORMAT": "merged-16bit",
    }
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(i + 1, injected)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the notebook's W&B goes offline by itself
    for k, v in tracker_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    out = {
        n: "".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")
        for n, c in enumerate(nb.cells)
        if c.cell_type == "code"
    }
    text = "\n".join(out.values())
    # the cells around training: the machine, the masked example, time/memory, curves, side by side, hub, GGUF
    assert "no GPU: CPU with" in text and "torch " in text
    assert "loss-carrying tokens in [[...]]" in text and "[[" in text.split("loss-carrying tokens", 1)[1]
    assert re.search(r"\d+ training tokens/s, peak memory \d+\.\d\d GiB", text)
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "display_data" and "image/png" in o.get("data", {})
    ]
    assert images, "the training curves were not shown inline"
    assert "fine-tuned: " in text and "reference:  " in text
    assert "not pushed (tick PUSH_TO_HUB" in text and "EXPORT_FORMAT is merged-16bit" in text
    model_dir = tmp_path / "fine_tuned" / "nb-demo"
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 20 and metrics["final"]["rougeL"] > metrics["base"]["rougeL"]
    # W&B went offline by itself and the notebook printed the sync command
    (wrun,) = wandb_runs(tmp_path / "outputs" / "nb-demo")
    assert metrics["tracking"]["wandb"]["sync_command"] in text
    assert "eval/rougeL" in wrun.scalars()
    # evaluation against the base model, read back from its files
    res = json.loads((tmp_path / "evaluations" / "nb-demo" / "test" / "metrics.json").read_text())["results"]
    assert res["model"]["rougeL"]["f1"] > res["base"]["rougeL"]["f1"] and res["model"]["examples"] == 16
    assert re.search(rf"rougeL\s+{res['base']['rougeL']['f1']:.4f}\s+{res['model']['rougeL']['f1']:.4f}", text)
    # the summary printed for the pasted document (here: the first test document) is the model's own
    from llm_summarizer.models.generation import summarize

    document = json.loads((ROOT / "data/demo/test.jsonl").read_text().splitlines()[0])["document"]
    expected = summarize(str(model_dir), [document])[0].strip()
    assert expected and expected in text.split("== summary ==", 1)[1], text[-2000:]
    # a long text (48 test documents): chunked, its tree shown round by round, then one summary
    assert "chunked: " in text and "-- round 0 (windows of the document)" in text and "-- round 1 (merges" in text
    assert text.split("== long document summary ==", 1)[1].strip()
    # the export exists and was checked
    export_dir = tmp_path / "fine_tuned" / "nb-demo-merged-16bit"
    assert re.search(rf"^{re.escape(str(export_dir))}$", text, re.M), text[-3000:]
    info = json.loads((export_dir / "export_info.json").read_text())
    assert (
        info["format"] == "merged-16bit"
        and "reproduces the adapter's greedy summaries" in info["verification"]["summary"]
    )
