"""scripts/gpu_check.sh, the prepared check of the GPU paths, dry-run on the CPU: one quick stage's summary
files, a missing package stopping it within seconds, budgets that fit one 10-minute call."""

import json
import os
import subprocess
import sys
import time

import pytest

from .conftest import ROOT


def gpu_check(tmp_path, *stages, **env):
    e = dict(os.environ, REQUIRE_GPU="0", WORK=str(tmp_path / "work"), OUT=str(tmp_path / "out"), **env)
    t0 = time.time()
    r = subprocess.run(
        ["bash", "scripts/gpu_check.sh", *stages], cwd=ROOT, env=e, capture_output=True, text=True, timeout=600
    )
    return r, time.time() - t0, tmp_path / "out"


@pytest.mark.slow  # the whole stack imported twice: the check before the stages, then the stage
def test_one_stage_writes_the_json_and_markdown_summary(tmp_path):
    r, _, out = gpu_check(tmp_path, "env")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    data = json.loads((out / "gpu_check.json").read_text())
    assert (data["passed"], data["failed"], data["skipped"]) == (1, 0, 0)
    [stage] = data["stages"]
    assert stage["stage"] == "env" and stage["status"] == "pass" and 0 <= stage["seconds"] <= stage["budget"]
    assert stage["commands"] == ["scripts/gpu_check.py warm ... env (in process)"]
    # on a CPU the GPU assertion is not made, and the summary says so instead of passing it silently
    assert stage["facts"]["precision_auto"] == "fp32, float32 weights (CPU)"
    assert stage["facts"]["t4_plan"].startswith("fp16 mixed precision, float16 weights (Tesla T4")
    assert stage["facts"]["skipped"] == ["train.precision=auto on a GPU needs a CUDA GPU"]
    assert stage["facts"]["imports_s"] > 0  # the warm process's imports, paid once and counted in its first stage
    assert data["versions"]["bitsandbytes"] and data["versions"]["torch"] and data["gpu"] is None
    assert data["versions_vs_lock"] == {}  # this machine runs the lock's versions
    md = (out / "gpu_check.md").read_text()
    assert "| stage | result | seconds (budget) | peak GiB | not checked here | command |" in md
    assert "| env | pass |" in md and "train.precision=auto on a GPU needs a CUDA GPU" in md
    assert "Against the lock: the same versions as the lock" in md


def test_a_missing_package_stops_it_within_seconds(tmp_path):
    r, took, out = gpu_check(tmp_path, "env", GPU_CHECK_MODULES="no_such_package_here")
    assert r.returncode == 1
    assert "gpu_env: MISSING no_such_package_here: not installed" in r.stdout
    assert took < 30, took  # looked up before anything heavy is imported
    data = json.loads((out / "gpu_check.json").read_text())
    [stage] = data["stages"]
    assert stage["stage"] == "setup" and stage["status"] == "fail" and "no_such_package_here" in stage["reason"]
    assert "| setup | fail |" in (out / "gpu_check.md").read_text()


def test_the_stages_fit_one_ten_minute_call_in_the_order_users_meet_them():
    r = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "budgets"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    budgets = [(name, int(b)) for name, b in (line.split() for line in r.stdout.splitlines())]
    assert sum(b for _, b in budgets) <= 560, budgets
    names = [n for n, _ in budgets]
    assert names[:7] == ["env", "load", "t4", "train", "generate", "export", "oom"], names  # the T4 first, export early
    doc = (ROOT / "scripts" / "gpu_check.py").read_text()
    assert all(f"\n  {n} " in doc for n in names)  # each stage said in the docstring


def test_versions_that_differ_from_the_lock_are_named():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    pins = {
        line.split("==")[0]: line.split("==")[1]
        for line in (ROOT / "requirements" / "lock-linux-x86_64.txt").read_text().splitlines()
        if line.startswith(("torch==", "peft=="))
    }
    got = gpu_check.lock_differences({"torch": "2.11.0", "peft": pins["peft"], "not-pinned": "1.0"})
    assert got == {"torch": f"ran 2.11.0, lock {pins['torch']}"}
