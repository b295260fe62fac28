"""The names of the metrics a run logs, saves and shows, and the rules about them, in one place.

The trainer logs evaluation metrics as `eval_<name>` (transformers' convention: `eval_loss`, `eval_rougeL`);
metrics.json, the model card, the reports and the evaluate command use the plain name (`rougeL`). Config keys
that name a metric (train.metric_for_best_model, train.early_stopping[].metric, tune.metric) take either form;
`eval_name` and `plain_name` convert, and nothing else adds or strips the prefix.

Adding a ROUGE-like metric to what is logged, saved and shown: its key and label here, and the code that
computes it (evaluation/scoring.py). The summary statistics beside ROUGE have their schema in
evaluation/diagnostics.py (STATS: key, label, direction).
"""

from __future__ import annotations

from typing import Optional

EVAL_PREFIX = "eval_"
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
ROUGE_LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
ROUGE_CURVES = ("rouge1", "rouge2", "rougeL")  # the lines of the report's training curves (rougeLsum follows rougeL)
# what every generation pass records beside its scores (mean summary length in tokens, share cut by
# max_new_tokens, examples scored)
GENERATION_KEYS = ("gen_len_mean", "gen_hit_max_frac", "rouge_examples")


def plain_name(name: str) -> str:
    """The plain name of a logged one ("eval_rougeL" -> "rougeL"); a plain name is returned as it is."""
    return name.removeprefix(EVAL_PREFIX)


def eval_name(name: str) -> str:
    """The name the trainer logs a metric under ("rougeL" -> "eval_rougeL"); "eval_rougeL" is returned as it is."""
    return name if name.startswith(EVAL_PREFIX) else EVAL_PREFIX + name


def is_rouge(name: str) -> bool:
    return plain_name(name) in ROUGE_KEYS


def higher_is_better(name: str) -> bool:
    """Whether a higher value of a metric is better when nothing says otherwise: every loss is lower-better."""
    return not plain_name(name).endswith("loss")


def format_rouge(block: Optional[dict]) -> str:
    """A block of scores on one line ("rouge1=0.3312 rouge2=0.1101 ..."); "n/a" for none."""
    if not block:
        return "n/a"
    return " ".join(f"{k}={block[k]:.4f}" for k in ROUGE_KEYS if k in block)
