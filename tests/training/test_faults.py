"""Real faults, not simulated ones: a disk that really fills up (a small tmpfs), a checkpoint whose bytes change
after it was written, and a checkpoint folder with a pickle planted in it.

A full disk is made exactly where a test wants it: the output directory sits on a 64 MiB tmpfs, and a
ballast file takes all but a few KiB of it at the chosen moment (a callback at a training step, or before a
command starts). Mounting needs root; where it is not permitted the tmpfs tests skip, saying so.
"""

import hashlib
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
from transformers import TrainerCallback

from llm_summarizer.config_loading import load_config
from llm_summarizer.errors import TrainingStopped, UserError
from llm_summarizer.layout import CHECKPOINT_MANIFEST as MANIFEST
from llm_summarizer.training.checkpoints import checkpoint_problem

from ..conftest import ROOT, run_cli, tiny_overrides

QUICK = {
    "train.max_steps": 6,
    "train.save_steps": 2,
    "train.eval_strategy": "no",
    "eval.generate": "false",
    "train.logging_steps": 1,
    "output.report": "false",
}


@pytest.fixture
def small_disk(tmp_path):
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip()}): a real full disk needs one")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def fill(disk: Path, leave: int = 4096) -> Path:
    """Take all but `leave` bytes of the disk with a ballast file; returns it (delete it to free the space)."""
    ballast = disk / "ballast"
    st = os.statvfs(disk)
    n = st.f_bavail * st.f_frsize - leave
    with open(ballast, "ab") as f:
        if n > 0:
            os.posix_fallocate(f.fileno(), f.tell(), n)
    return ballast


class FillAt(TrainerCallback):
    """Fills the disk at a training step (or when training ends), as a disk filling up under a run does."""

    def __init__(self, disk: Path, step=None, at_end=False):
        self.disk, self.step, self.at_end, self.ballast = disk, step, at_end, None

    def on_step_end(self, args, state, control, **kw):
        if self.step is not None and state.global_step == self.step and self.ballast is None:
            self.ballast = fill(self.disk)

    def on_train_end(self, args, state, control, **kw):
        if self.at_end and self.ballast is None:
            self.ballast = fill(self.disk)


def tree_digest(d: Path) -> dict:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


def adapter(d: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(d / "adapter_model.safetensors"))


def same_adapter(a: Path, b: Path) -> bool:
    import torch

    x, y = adapter(a), adapter(b)
    return x.keys() == y.keys() and all(torch.allclose(x[k], y[k], atol=1e-6) for k in x)


def cfg_for(out: Path, models_dir: Path, **extra):
    o = {**QUICK, **extra}
    return load_config("tiny", tiny_overrides(out, models_dir, **o))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, models_dir):
    from llm_summarizer.training.run import run

    out = tmp_path_factory.mktemp("uninterrupted")
    return run(cfg_for(out, models_dir)).model_dir


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_a_rerun_ends_as_uninterrupted(
    small_disk, models_dir, uninterrupted
):
    from llm_summarizer.training.run import run

    out = small_disk / "run"
    filler = FillAt(small_disk, step=3)
    with pytest.raises(TrainingStopped, match="no space left on the device"):
        run(cfg_for(out, models_dir), extra_callbacks=[filler])
    ckpts = sorted(p.name for p in (out / "outputs").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-2"] and checkpoint_problem(out / "outputs" / "checkpoint-2") is None
    before = tree_digest(out / "outputs" / "checkpoint-2")
    assert not (out / "fine_tuned").exists()
    filler.ballast.unlink()  # space freed: the same command again
    result = run(cfg_for(out, models_dir))
    assert result.metrics.train.resumed_from.endswith("checkpoint-2")
    assert same_adapter(result.model_dir, uninterrupted)
    assert not (out / "outputs" / ".staging").exists()
    assert before == tree_digest(out / "outputs" / "checkpoint-2") or not (out / "outputs" / "checkpoint-2").exists()


def test_disk_full_during_the_final_save_keeps_the_previous_model(small_disk, models_dir, tmp_path):
    """A run of 4 steps, then the same output continued to 6; the disk fills as the second one saves its model."""
    from llm_summarizer.training.run import run

    ref = tmp_path / "ref"  # the same two commands with room on the disk
    run(cfg_for(ref, models_dir, **{"train.max_steps": 4}))
    uninterrupted = run(cfg_for(ref, models_dir)).model_dir
    out = small_disk / "run"
    run(cfg_for(out, models_dir, **{"train.max_steps": 4}))
    before = tree_digest(out / "fine_tuned")
    filler = FillAt(small_disk, at_end=True)
    with pytest.raises(TrainingStopped, match="no space left on the device while writing"):
        run(cfg_for(out, models_dir), extra_callbacks=[filler])
    assert tree_digest(out / "fine_tuned") == before  # the previous final model, byte for byte
    assert not [p for p in out.iterdir() if p.name.startswith(".fine_tuned")]
    filler.ballast.unlink()
    result = run(cfg_for(out, models_dir))  # its last checkpoint is step 6: restored, not trained one step further
    assert result.metrics.train.global_step == 6
    assert same_adapter(result.model_dir, uninterrupted)


def test_disk_full_while_writing_the_tokenized_data_cache(small_disk, models_dir):
    out = small_disk / "run"
    out.mkdir()
    ballast = fill(small_disk, leave=64 * 1024)  # the lock and config fit; 1200 tokenized rows do not
    r = run_cli("train", "--config", "tiny", *tiny_overrides(out, models_dir, **QUICK))
    assert r.returncode == 3 and "no space left on the device" in r.stderr and "Traceback" not in r.stderr
    cache = out / "outputs" / "data_cache"
    assert not cache.exists() or not [p for p in cache.iterdir() if ".tmp" in p.name]
    ballast.unlink()
    r = run_cli("train", "--config", "tiny", *tiny_overrides(out, models_dir, **QUICK))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "fine_tuned" / "adapter_model.safetensors").is_file()


def test_disk_full_during_evaluate_then_the_rerun_completes_the_same_predictions(small_disk, tiny_run, tmp_path):
    from ..conftest import read_jsonl

    test = ROOT / "data" / "demo" / "test.jsonl"
    args = ["--model", tiny_run.model_dir, "--data", test, "--limit", "24", "--no-report", "eval.batch_size=4"]
    ref = tmp_path / "ref"
    assert run_cli("evaluate", *args, "--output", ref).returncode == 0
    out = small_disk / "ev"
    out.mkdir()
    ballast = fill(small_disk, leave=16 * 1024)  # 4 pages: the settings and a few batches of predictions
    r = run_cli("evaluate", *args, "--output", out)
    assert r.returncode == 3 and "no space left on the device" in r.stderr and "Traceback" not in r.stderr
    assert not (out / "metrics.json").exists()
    ballast.unlink()
    r = run_cli("evaluate", *args, "--output", out)
    assert r.returncode == 0, r.stderr[-3000:]
    got = {x["id"]: x["prediction"] for x in read_jsonl(out / "predictions.jsonl")}
    want = {x["id"]: x["prediction"] for x in read_jsonl(ref / "predictions.jsonl")}
    assert got == want and len(got) == 24
    m, m_ref = (json.loads((d / "metrics.json").read_text()) for d in (out, ref))
    assert m["results"]["model"]["rougeL"] == m_ref["results"]["model"]["rougeL"]
    assert m["generation"]["model"]["reused"] > 0  # it continued from what the first attempt wrote


def test_disk_full_during_an_export_keeps_the_previous_export(small_disk, tiny_run):
    out = small_disk / "merged"
    args = [tiny_run.model_dir, "--format", "merged-16bit", "--output", out, "--verify-examples", "2"]
    assert run_cli("export", *args).returncode == 0
    before = tree_digest(out)
    ballast = fill(small_disk, leave=256 * 1024)
    r = run_cli("export", *args, "--overwrite")
    assert r.returncode == 3 and "no space left on the device" in r.stderr and "Traceback" not in r.stderr
    assert tree_digest(out) == before and sorted(p.name for p in small_disk.iterdir()) == ["ballast", "merged"]
    ballast.unlink()
    assert run_cli("export", *args, "--overwrite").returncode == 0


# -- integrity and trust of checkpoints ----------------------------------------------------------


@pytest.fixture
def two_checkpoints(tmp_path, models_dir):
    from llm_summarizer.training.run import run

    run(cfg_for(tmp_path, models_dir, **{"train.max_steps": 4}))
    return tmp_path / "outputs"


def test_every_checkpoint_carries_a_manifest_of_its_files(two_checkpoints):
    for name in ("checkpoint-2", "checkpoint-4"):
        d = two_checkpoints / name
        m = json.loads((d / MANIFEST).read_text())
        files = {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.name != MANIFEST}
        assert set(m["files"]) == files and {"optimizer.pt", "adapter_model.safetensors"} <= files
        assert all(v["size"] == (d / k).stat().st_size for k, v in m["files"].items())


def flip_a_bit(p: Path, at: int) -> None:
    data = bytearray(p.read_bytes())
    data[at] ^= 0x01
    p.write_bytes(bytes(data))


def resume_log(out: Path, models_dir: Path, caplog, **extra):
    from llm_summarizer.training.run import run

    caplog.clear()
    with caplog.at_level("WARNING", logger="llm_summarizer"):
        result = run(cfg_for(out.parent, models_dir, **{"train.max_steps": 6, **extra}))
    return result, caplog.text


def test_a_flipped_bit_in_the_newest_checkpoint_is_named_and_the_previous_one_used(
    two_checkpoints, models_dir, caplog, uninterrupted
):
    w = two_checkpoints / "checkpoint-4" / "adapter_model.safetensors"
    flip_a_bit(w, w.stat().st_size - 100)  # inside a tensor's data: the file still opens
    assert checkpoint_problem(two_checkpoints / "checkpoint-4").startswith("adapter_model.safetensors changed")
    result, log = resume_log(two_checkpoints, models_dir, caplog)
    assert "skipping checkpoint" in log and "adapter_model.safetensors changed after it was written" in log
    assert result.metrics.train.resumed_from.endswith("checkpoint-2")
    assert same_adapter(result.model_dir, uninterrupted)


class Evil:
    """What a malicious checkpoint file holds: unpickling it runs a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(ckpt: Path, marker: Path, forge_manifest: bool) -> None:
    with open(ckpt / "rng_state.pth", "wb") as f:
        pickle.dump(Evil(marker), f)
    if forge_manifest:  # an attacker who also rewrites the manifest to match
        m = json.loads((ckpt / MANIFEST).read_text())
        data = (ckpt / "rng_state.pth").read_bytes()
        m["files"]["rng_state.pth"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (ckpt / MANIFEST).write_text(json.dumps(m))


def test_a_planted_pickle_never_runs(two_checkpoints, models_dir, caplog, tmp_path):
    marker = tmp_path / "pwned"
    newest = two_checkpoints / "checkpoint-4"
    # 1. the manifest notices the changed file: that checkpoint is skipped, the previous one used
    plant(newest, marker, forge_manifest=False)
    result, log = resume_log(two_checkpoints, models_dir, caplog)
    assert "skipping checkpoint" in log and "rng_state.pth is " in log and "the manifest says" in log
    assert not marker.exists()
    assert result.metrics.train.resumed_from.endswith("checkpoint-2")
    # 2. a forged manifest passes the check, and torch's weights_only loader refuses the pickle without running it
    shutil.rmtree(two_checkpoints / "checkpoint-6")
    plant(newest, marker, forge_manifest=True)
    assert checkpoint_problem(newest) is None
    with pytest.raises(UserError, match="holds more than tensors, and torch's weights_only loader refused it"):
        resume_log(two_checkpoints, models_dir, caplog)
    assert not marker.exists()
    # 3. verification switched off: still refused, still nothing run
    with pytest.raises(UserError, match="weights_only"):
        resume_log(two_checkpoints, models_dir, caplog, **{"train.verify_checkpoints": "false"})
    assert not marker.exists()


def test_a_checkpoint_without_a_manifest_is_not_trusted_unless_asked(two_checkpoints, models_dir, caplog):
    (two_checkpoints / "checkpoint-4" / MANIFEST).unlink()
    r = run_cli(
        "train",
        "--config",
        "tiny",
        *tiny_overrides(
            two_checkpoints.parent, models_dir, **{**QUICK, "train.resume": two_checkpoints / "checkpoint-4"}
        ),
    )
    assert r.returncode == 2 and "no checkpoint_manifest.json" in r.stderr
    assert "train.verify_checkpoints=false" in r.stderr and "Traceback" not in r.stderr
    result, _ = resume_log(two_checkpoints, models_dir, caplog, **{"train.verify_checkpoints": "false"})
    assert result.metrics.train.resumed_from.endswith("checkpoint-4")
