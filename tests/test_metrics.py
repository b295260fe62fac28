"""The one registry of metrics and of the rules about their names (metrics.py, Config.greater_is_better), and
the one rule and message of a full disk (errors.py)."""

import errno

import pytest

from llm_summarizer.config_loading import load_config
from llm_summarizer.errors import disk_full_message, is_disk_full
from llm_summarizer.metrics import (
    KEYS,
    LABELS,
    eval_name,
    format_scores,
    higher_is_better,
    is_summary_metric,
    plain_name,
)


def test_either_form_of_a_name_converts_both_ways_and_only_once():
    assert eval_name("rougeL") == eval_name("eval_rougeL") == "eval_rougeL"
    assert plain_name("eval_rougeL") == plain_name("rougeL") == "rougeL"
    assert is_summary_metric("eval_rouge2") and is_summary_metric("rougeLsum") and not is_summary_metric("eval_loss")
    assert set(LABELS) == set(KEYS)  # every key has its label for cards, reports and plots


def test_which_way_is_better_the_name_then_the_config_then_the_entry_itself():
    assert higher_is_better("eval_rougeL") and not higher_is_better("eval_loss") and not higher_is_better("loss")
    cfg = load_config("tiny", ["train.metric_for_best_model=eval_rougeL", "train.greater_is_better=false"])
    assert cfg.greater_is_better("rougeL") is False  # train.greater_is_better applies to its metric, named either way
    assert cfg.greater_is_better("eval_rouge1") is True  # and to no other
    assert cfg.greater_is_better("eval_rougeL", True) is True  # an early_stopping entry's own setting wins


def test_scores_print_in_the_keys_order_and_none_is_said():
    assert format_scores({"rougeL": 0.25, "rouge1": 0.5, "gen_len_mean": 12.0}) == "rouge1=0.5000 rougeL=0.2500"
    assert format_scores(None) == format_scores({}) == "n/a"


@pytest.mark.parametrize(
    "e, full",
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (RuntimeError("safetensors_rust.SafetensorError: StorageFull"), True),
        (OSError(errno.EACCES, "Permission denied"), False),
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), False),  # no place to probe
    ],
)
def test_one_rule_recognises_a_full_disk_whoever_raised_it(e, full):
    assert is_disk_full(e) is full


def test_the_one_message_says_where_what_was_kept_and_what_to_do(tmp_path):
    msg = disk_full_message(tmp_path / "x.json", OSError(errno.ENOSPC, "No space left on device"))
    assert msg == (
        f"no space left on the device while writing {tmp_path / 'x.json'} (No space left on device). "
        "Files that were complete before are unchanged and nothing half-written was kept: free some space "
        "and rerun the same command (an evaluation continues from the predictions already written)."
    )
