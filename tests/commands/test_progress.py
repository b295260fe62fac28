"""Progress bars where someone watches (a terminal), none in logs (a pipe): training, ROUGE passes, evaluate."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from tests.conftest import ROOT, run_cli, tiny_overrides

TEST = ROOT / "data" / "demo" / "test.jsonl"


def run_in_terminal(*args, timeout=600) -> str:
    """The command with stdout and stderr on a pseudo-terminal, as a user's shell runs it; what it printed."""
    leader, follower = pty.openpty()
    # a terminal of 40 x 160 characters (a fresh pseudo-terminal has none, and a bar then has no room)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {k: v for k, v in os.environ.items() if k != "LLM_SUMMARIZER_PROGRESS"}
    p = subprocess.Popen(
        [sys.executable, "-m", "llm_summarizer", *map(str, args)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    chunks, deadline = [], time.time() + timeout
    while time.time() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the command ended and closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    p.wait(timeout=max(1, deadline - time.time()))
    os.close(leader)
    assert p.returncode == 0, b"".join(chunks)[-3000:].decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_training_and_evaluate_show_bars_in_a_terminal_and_none_in_a_pipe(tmp_path, models_dir, tiny_run):
    args = tiny_overrides(
        tmp_path / "t",
        models_dir,
        **{"train.max_steps": 4, "train.eval_steps": 4, "train.save_steps": 4, "eval.num_samples": 6},
    )
    out = run_in_terminal("train", "--config", "tiny", *args)
    assert "evaluation: 6 validation summaries (base)" in out and "6/6" in out  # the ROUGE pass before training
    assert "4/4 [" in out  # transformers' training bar, with its ETA/rate block
    out = run_in_terminal(
        "evaluate", "--model", tiny_run.model_dir, "--data", TEST, "--limit", "5", "--output", tmp_path / "ev-tty"
    )
    assert "evaluate (model)" in out and re.search(r"5/5 \[[^\]]*summary", out), out[-2000:]
    piped = run_cli(
        "evaluate", "--model", tiny_run.model_dir, "--data", TEST, "--limit", "5", "--output", tmp_path / "ev-pipe"
    )
    assert piped.returncode == 0, piped.stderr
    assert "evaluate (model)" not in piped.stderr + piped.stdout and "5/5" not in piped.stderr
    # forced on in a pipe, for a notebook or a log that wants them
    forced = run_cli(
        "evaluate",
        "--progress",
        "on",
        "--model",
        tiny_run.model_dir,
        "--data",
        TEST,
        "--limit",
        "5",
        "--output",
        tmp_path / "ev-forced",
    )
    assert forced.returncode == 0 and "evaluate (model)" in forced.stderr
    assert Path(tmp_path / "ev-forced" / "metrics.json").is_file()
