"""A run's output directory (`output.dir`, default outputs/<run_name>/): its checkpoints. The names of all its files
are in layout.py.

    checkpoint-N/            complete checkpoints (published by rename from .staging/, see training.checkpoints)
    .staging/                a checkpoint being written; cleared at the next start
    .lock                    held by the run that is using the directory
    config.yaml              the resolved config of the run
    base_metrics.json        ROUGE of the untrained model (a resumed run reuses it)
    eval_predictions/        every generated validation summary per evaluation (base.jsonl, step-N.jsonl)
    rouge_samples.jsonl      a few examples per evaluation, for reading
    data_cache/              tokenized splits, by content
    tracking.json            the tracker run ids a resumed run continues
    report.md, plots/        the training report
"""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint-N directory, oldest first (complete or not)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for p in output_dir.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def checkpoint_step(path: Path) -> int:
    return int(Path(path).name.split("-")[-1])
