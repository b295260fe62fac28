"""scripts/gpu_check.sh, the prepared check of the GPU paths, dry-run on the CPU: one quick stage's summary
files, and a missing package stopping it within seconds."""

import json
import os
import subprocess
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
    assert [c.split()[-2:] for c in stage["commands"]] == [["scripts/gpu_check.py", "env"]]
    # on a CPU the bf16 assertion is not made, and the summary says so instead of passing it silently
    assert stage["facts"]["precision_auto"] == "fp32"
    assert stage["facts"]["skipped"] == ["train.precision=auto picking bf16 needs a CUDA GPU"]
    assert data["versions"]["bitsandbytes"] and data["versions"]["torch"] and data["gpu"] is None
    md = (out / "gpu_check.md").read_text()
    assert "| stage | result | seconds (budget) | peak GiB | not checked here | command |" in md
    assert "| env | pass |" in md and "train.precision=auto picking bf16 needs a CUDA GPU" in md


def test_a_missing_package_stops_it_within_seconds(tmp_path):
    r, took, out = gpu_check(tmp_path, "env", GPU_CHECK_MODULES="no_such_package_here")
    assert r.returncode == 1
    assert "gpu_env: MISSING no_such_package_here: not installed" in r.stdout
    assert took < 30, took  # looked up before anything heavy is imported
    data = json.loads((out / "gpu_check.json").read_text())
    [stage] = data["stages"]
    assert stage["stage"] == "setup" and stage["status"] == "fail" and "no_such_package_here" in stage["reason"]
    assert "| setup | fail |" in (out / "gpu_check.md").read_text()
