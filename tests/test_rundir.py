"""rundir.py: which checkpoints a run directory holds, in step order (what resume and save_total_limit read)."""

from __future__ import annotations

from pathlib import Path

from llm_summarizer.rundir import CHECKPOINT_RE, checkpoint_step, list_checkpoints


def test_checkpoints_come_in_step_order_not_name_order(tmp_path):
    for step in (100, 20, 9, 1000):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert list_checkpoints(tmp_path) == [
        (9, tmp_path / "checkpoint-9"),
        (20, tmp_path / "checkpoint-20"),
        (100, tmp_path / "checkpoint-100"),
        (1000, tmp_path / "checkpoint-1000"),
    ]


def test_only_checkpoint_directories_with_a_step_count(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-7").write_text("a file, not a checkpoint")
    for name in (
        "checkpoint-",
        "checkpoint-x",
        "checkpoint-3.old",
        "checkpoint-3-copy",
        ".checkpoint-4",
        "Checkpoint-6",
        "checkpoint--8",
        "my-checkpoint-9",
        ".staging",
        "eval_predictions",
    ):
        (tmp_path / name).mkdir()
    assert list_checkpoints(tmp_path) == [(5, tmp_path / "checkpoint-5")]


def test_a_missing_or_non_directory_output_has_no_checkpoints(tmp_path):
    assert list_checkpoints(tmp_path / "never-written") == []
    (tmp_path / "file").write_text("x")
    assert list_checkpoints(tmp_path / "file") == []
    assert list_checkpoints(tmp_path) == []


def test_a_string_path_is_accepted(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    assert list_checkpoints(str(tmp_path)) == [(3, tmp_path / "checkpoint-3")]


def test_checkpoint_step_reads_the_step_from_the_name():
    assert checkpoint_step(Path("/runs/a-b/checkpoint-1200")) == 1200
    assert checkpoint_step("outputs/demo/checkpoint-0/") == 0  # a trailing slash as typed on the command line
    assert CHECKPOINT_RE.match("checkpoint-42").group(1) == "42"
