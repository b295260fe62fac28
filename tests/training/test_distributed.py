"""Several ranks: `torchrun --nproc_per_node=2` of the plain train command, the tiny model, gloo on the CPU.

What a user launching on one node with several GPUs relies on, checked with two CPU ranks: the world size
really is 2 (each rank trains on its own half of every global batch: the adapter equals a one-process run
with twice the per-device batch), one final model, every checkpoint with both ranks' RNG files, every
ROUGE sample written once, and a rank killed mid-run followed by the same command ends with the adapter of
the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import DEMO, ROOT, read_jsonl

pytestmark = pytest.mark.slow

STEPS = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overrides(out: Path, models_dir: Path, batch: int, steps: int = STEPS, **extra) -> list[str]:
    o = {
        "model.cache_dir": models_dir,
        "output.dir": out / "outputs",
        "output.model_dir": out / "fine_tuned",
        "data.train": f"{{path: {DEMO / 'train.jsonl'}, limit: 96}}",
        "data.validation": f"{{path: {DEMO / 'validation.jsonl'}, limit: 16}}",
        "data.test": "null",
        "train.max_steps": steps,
        "train.per_device_train_batch_size": batch,
        "train.sampling": "random",
        "train.save_steps": 4,
        "train.eval_steps": 6,
        "train.logging_steps": 1,
        "train.save_total_limit": 10,
        "train.learning_rate": 1e-3,
        "eval.num_samples": 8,
        "eval.max_new_tokens": 8,
        "eval.log_samples": 8,
        "output.report": "false",
    }
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def torchrun(out: Path, models_dir: Path, **kw) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "llm_summarizer",
        "train",
        "--config",
        "tiny",
        *overrides(out, models_dir, 4, **kw),
    ]


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")


def adapter(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "adapter_model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, models_dir):
    tmp = tmp_path_factory.mktemp("ddp")
    # the tiny model built once beforehand, as a user's first run would have
    one = subprocess.run(
        [sys.executable, "-m", "llm_summarizer", "train", "--config", "tiny", *overrides(tmp / "one", models_dir, 8)],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        torchrun(tmp / "two", models_dir), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900
    )
    assert two.returncode == 0, two.stderr[-5000:]
    return {"one": tmp / "one", "two": tmp / "two", "tmp": tmp, "log": two.stderr}


def test_two_ranks_train_disjoint_halves_of_each_global_batch(runs):
    m = json.loads((runs["two"] / "fine_tuned" / "metrics.json").read_text())
    assert m["train"]["world_size"] == 2 and m["train"]["global_step"] == STEPS
    assert json.loads((runs["one"] / "fine_tuned" / "metrics.json").read_text())["train"]["world_size"] == 1
    # 2 ranks x 4 examples averaged = 1 process x 8: only if each rank trained on its own half
    assert max_diff(adapter(runs["two"] / "fine_tuned"), adapter(runs["one"] / "fine_tuned")) < 1e-4


def test_two_ranks_on_the_transformers_backend_give_the_same_adapter(runs, models_dir):
    out = runs["tmp"] / "two-transformers"
    r = subprocess.run(
        torchrun(out, models_dir, **{"model.backend": "transformers"}),
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-5000:]
    m = json.loads((out / "fine_tuned" / "metrics.json").read_text())
    assert m["train"]["world_size"] == 2
    # plain transformers + PEFT under DDP = Unsloth's CPU backend in one process with the same global batch
    assert max_diff(adapter(out / "fine_tuned"), adapter(runs["one"] / "fine_tuned")) < 1e-4


def test_one_final_model_every_checkpoint_complete_samples_written_once(runs):
    out = runs["two"]
    assert sorted(p.name for p in out.iterdir()) == ["fine_tuned", "outputs"]  # one final model, nothing beside
    ckpts = sorted((out / "outputs").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in ckpts] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    for c in ckpts:
        assert (c / "rng_state_0.pth").is_file() and (c / "rng_state_1.pth").is_file(), c
        assert json.loads((c / "checkpoint_manifest.json").read_text())["world_size"] == 2
    rows = read_jsonl(out / "outputs" / "rouge_samples.jsonl")
    keys = [(r["step"], r["id"]) for r in rows]
    assert len(keys) == len(set(keys)) and {r["step"] for r in rows} == {0, 6, 12}
    preds = read_jsonl(out / "outputs" / "eval_predictions" / "step-12.jsonl")
    assert len(preds) == 8 and len({p["id"] for p in preds}) == 8  # both ranks' halves, once each


def test_a_checkpoint_of_two_ranks_is_refused_by_one_unless_allowed(runs, models_dir, capsys):
    from llm_summarizer.commands.train import main

    out = runs["two"]
    before = sorted(p.name for p in (out / "outputs").iterdir())
    argv = ["--config", "tiny", *overrides(out, models_dir, 8, steps=16)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "was trained by 2 rank(s) and this run has 1" in err and "scale.allow_world_size_change=true" in err
    assert sorted(p.name for p in (out / "outputs").iterdir()) == before


def test_a_rank_killed_mid_run_then_the_same_command_ends_with_the_uninterrupted_adapter(runs, models_dir):
    import psutil

    out = runs["tmp"] / "killed"
    cmd = torchrun(out, models_dir)
    p = subprocess.Popen(
        cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.time() + 600
    killed = None
    while time.time() < deadline and p.poll() is None:
        if (out / "outputs" / "checkpoint-8" / "checkpoint_manifest.json").exists():
            for c in psutil.Process(p.pid).children(recursive=True):
                try:
                    if c.environ().get("RANK") == "1":
                        c.send_signal(signal.SIGKILL)
                        killed = c.pid
                except psutil.Error:
                    pass
            break
        time.sleep(0.05)
    _, err = p.communicate(timeout=300)
    assert killed is not None, "the run ended before rank 1 could be killed"
    assert p.returncode != 0
    assert not (out / "fine_tuned" / "adapter_model.safetensors").exists()
    again = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-5000:]
    assert "resuming from" in again.stderr
    assert max_diff(adapter(out / "fine_tuned"), adapter(runs["two"] / "fine_tuned")) < 1e-6


# -- Ray Train: the train command as the driver of 2 CPU workers ------------------------------------------


def ray_run(out: Path, models_dir: Path, **extra) -> list[str]:
    """Relative data and output paths, run from `out`: the driver must make them absolute for the workers."""
    out.mkdir(parents=True, exist_ok=True)
    rel = lambda p: os.path.relpath(p, out)  # noqa: E731
    o = overrides(
        Path("."),
        models_dir,
        4,
        **{
            "data.train": f"{{path: {rel(DEMO / 'train.jsonl')}, limit: 96}}",
            "data.validation": f"{{path: {rel(DEMO / 'validation.jsonl')}, limit: 16}}",
            "scale.engine": "ray",
            "scale.num_workers": 2,
            **extra,
        },
    )
    return [sys.executable, "-m", "llm_summarizer", "train", "--config", "tiny", *o]


@pytest.fixture(scope="module")
def ray_two(runs, models_dir):
    pytest.importorskip("ray.train", reason="Ray Train is not installed (pip install 'llm_summarizer[ray]')")
    out = runs["tmp"] / "ray"
    r = subprocess.run(ray_run(out, models_dir), cwd=out, env=env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-5000:]
    return out, r


def test_ray_two_workers_train_like_two_ranks_with_relative_paths(ray_two, runs):
    out, r = ray_two
    m = json.loads((out / "fine_tuned" / "metrics.json").read_text())
    assert m["train"]["world_size"] == 2 and m["train"]["global_step"] == STEPS
    assert max_diff(adapter(out / "fine_tuned"), adapter(runs["one"] / "fine_tuned")) < 1e-4
    for c in (out / "outputs").glob("checkpoint-*"):
        assert (c / "rng_state_0.pth").is_file() and (c / "rng_state_1.pth").is_file(), c
    keys = [(x["step"], x["id"]) for x in read_jsonl(out / "outputs" / "rouge_samples.jsonl")]
    assert len(keys) == len(set(keys))
    assert "training finished on Ray (2 workers)" in r.stdout
    assert not list((out / "outputs").glob(".ray-driver-*"))  # the driver's marker is gone


def test_ray_a_killed_worker_restarts_the_group_and_ends_with_the_uninterrupted_adapter(ray_two, runs, models_dir):
    import psutil

    out = runs["tmp"] / "ray-killed"
    cmd = ray_run(out, models_dir, **{"scale.max_failures": 1})
    p = subprocess.Popen(
        cmd, cwd=out, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline, killed = time.time() + 600, None
    while time.time() < deadline and p.poll() is None and killed is None:
        if (out / "outputs" / "checkpoint-8" / "checkpoint_manifest.json").exists():
            for c in psutil.Process(p.pid).children(recursive=True):
                try:
                    if "RayTrainWorker" in " ".join(c.cmdline()):
                        c.send_signal(signal.SIGKILL)
                        killed = c.pid
                        break
                except psutil.Error:
                    pass
        time.sleep(0.05)
    stdout, stderr = p.communicate(timeout=900)
    assert killed is not None, "the run ended before a worker could be killed"
    assert p.returncode == 0, stderr[-5000:]
    assert max_diff(adapter(out / "fine_tuned"), adapter(ray_two[0] / "fine_tuned")) < 1e-6


def test_ray_a_user_error_in_the_workers_is_not_retried_and_exits_2(ray_two, runs, models_dir):
    one_ckpts = runs["one"] / "outputs"
    before = {p.name: p.stat().st_mtime for p in one_ckpts.iterdir()}
    out = runs["tmp"] / "ray-error"
    # a one-process checkpoint given to two workers: rank 0 refuses it (other number of ranks)
    cmd = ray_run(out, models_dir, **{"scale.max_failures": 3, "train.resume": one_ckpts / "checkpoint-8"})
    r = subprocess.run(cmd, cwd=out, env=env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "was trained by 1 rank(s) and this run has 2" in r.stderr and "Traceback" not in r.stderr.split("error:")[-1]
    assert {p.name: p.stat().st_mtime for p in one_ckpts.iterdir()} == before


def test_ray_settings_that_cannot_work_are_one_message(tmp_path, capsys, models_dir):
    from llm_summarizer.commands.train import main

    assert main(["--config", "tiny", "scale.num_workers=2", f"output.dir={tmp_path / 'o'}"]) == 2
    assert "scale.num_workers=2 needs scale.engine=ray" in capsys.readouterr().err
    pytest.importorskip("ray.train", reason="Ray Train is not installed")
    assert (
        main(
            [
                "--config",
                "tiny",
                "scale.engine=ray",
                "scale.address=127.0.0.1:1",
                f"model.cache_dir={models_dir}",
                f"output.dir={tmp_path / 'o'}",
                f"output.model_dir={tmp_path / 'm'}",
            ]
        )
        == 2
    )
    assert "scale.address='127.0.0.1:1': cannot connect to a Ray cluster" in capsys.readouterr().err
