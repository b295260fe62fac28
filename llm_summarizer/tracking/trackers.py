"""The trackers of one training run: opened from tracking.report_to, fed by one callback.

Why our own callback rather than transformers' `report_to` integrations: every tracker gets the same
name for each scalar (train/loss, eval/loss, eval/rougeL, ...); the base model's ROUGE (step 0) and
the samples table go through the same path as the trainer's logs; the run config is our resolved
config with secrets removed, not every TrainingArguments field; and a resumed run continues the SAME
runs (their ids are kept in <output.dir>/tracking.json).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback

from .. import distributed
from ..config import Config
from ..contracts import RunMetrics
from ..errors import UserError
from ..files import write_json
from ..layout import TRACKING_FILE
from ..metrics import eval_name
from .base import Tracker, scalars

log = logging.getLogger("llm_summarizer.tracking")

# report_to name -> (module, class, packages it needs). Imported only when asked for: each package is heavy.
TRACKERS = {
    "wandb": ("wandb_tracker", "WandbTracker", ("wandb",)),
    "tensorboard": ("tensorboard_tracker", "TensorBoardTracker", ("tensorboard",)),
    "mlflow": ("mlflow_tracker", "MlflowTracker", ("mlflow",)),
}


def check_installed(cfg: Config) -> None:
    """Fail before any heavy work when a requested tracker's package is missing."""
    needed = [p for r in cfg.tracking.report_to if r in TRACKERS for p in TRACKERS[r][2]]
    uri = cfg.tracking.mlflow_tracking_uri
    if "mlflow" in needed and (uri is None or uri.startswith("sqlite")):
        needed += ["sqlalchemy", "alembic"]  # MLflow's SQLite store (mlflow-skinny leaves them out)
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(
            f"tracking.report_to={cfg.tracking.report_to} needs {', '.join(missing)}, not installed: "
            f"pip install {' '.join(missing)}  (or pip install -e '.[trackers]'), "
            "or remove the tracker from tracking.report_to"
        )
    for name in cfg.tracking.report_to:
        if name in TRACKERS:
            tracker_class(name).preflight(cfg)  # in seconds, before the model loads


def _read_ids(output_dir: Path) -> dict:
    try:
        return json.loads((output_dir / TRACKING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _checkpoint_step(resume_from: Optional[Path]) -> Optional[int]:
    if resume_from is None:
        return None
    try:
        return int(json.loads((Path(resume_from) / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError):
        return int(Path(resume_from).name.split("-")[-1])


class TrackingCallback(TrainerCallback):
    """Forwards the trainer's logs (losses, learning rate, eval metrics) to the trackers."""

    def __init__(self, trackers: "Trackers"):
        self.trackers = trackers

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.trackers.log(scalars(logs), state.global_step)


class Trackers:
    """The tracker runs of one training run, each called in turn. `finish()` or `close()` ends them."""

    def __init__(self, trackers: Optional[list[Tracker]] = None):
        self.trackers = list(trackers or [])
        self.closed = False

    @property
    def active(self) -> bool:
        return bool(self.trackers)

    def get(self, name: str) -> Optional[Tracker]:
        return next((t for t in self.trackers if t.name == name), None)

    def log(self, values: dict[str, float], step: int) -> None:
        if values and not self.closed:
            for t in self.trackers:
                t.log(values, step)

    def on_summary_eval(self, step: Optional[int], tag: str, metrics: dict, samples: list[dict]) -> None:
        """Called by SummaryEvaluator after each pass: the base model's scores, and the samples table."""
        if self.closed:
            return
        step = step or 0
        if tag == "base":
            # evaluations during training reach us through the trainer's log; the untrained model's does not
            self.log(scalars({eval_name(k): v for k, v in metrics.items()}), step)
        if samples:
            for t in self.trackers:
                t.log_samples(step, samples)

    def on_completions(self, step: int, rows: list[dict]) -> None:
        """Called by the GRPO trainer at its logging steps: a few sampled completions with their reward parts."""
        if rows and not self.closed:
            for t in self.trackers:
                t.log_completions(step, rows)

    def callback(self) -> TrackingCallback:
        return TrackingCallback(self)

    def info(self) -> dict:
        return {t.name: t.info() for t in self.trackers if t.info()}

    def finish(self, model_dir: Optional[Path], metrics: RunMetrics) -> None:
        """Final scores, the final model where a tracker keeps artifacts, then close every run."""
        if self.closed:
            return
        step = metrics.train.global_step or 0
        blocks = {
            f"{name}/{k}": float(v)
            for name, block in (("base", metrics.base), ("final", metrics.final), ("references", metrics.references))
            for k, v in (block or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.log({k: v for k, v in blocks.items() if k.startswith("final/")}, step)
        for t in self.trackers:
            t.summary(blocks)
            if model_dir is not None:
                t.log_model(Path(model_dir), metrics)
        self.close(failed=False)

    def close(self, failed: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for t in self.trackers:
            t.close(failed)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(failed=exc_type is not None)
        return False


def tracker_class(name: str):
    module, cls, _ = TRACKERS[name]
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def evaluation_logger(name: str):
    """The tracker's `log_evaluation(training_metrics, evaluation)` (scores of `evaluate` into the run that trained
    the model), or None for a tracker without one. ImportError when its package is not installed."""
    module, _, _ = TRACKERS[name]
    return getattr(importlib.import_module(f"{__package__}.{module}"), "log_evaluation", None)


def start_trackers(cfg: Config, resume_from: Optional[Path] = None) -> Trackers:
    """Open the trackers in cfg.tracking.report_to. A run resuming from a checkpoint continues the
    tracker runs recorded in <output.dir>/tracking.json; a fresh run opens new ones."""
    wanted = [r for r in cfg.tracking.report_to if r != "none"]
    trackers = Trackers()
    if not wanted or not distributed.is_main():  # several ranks: one writer, rank 0
        return trackers
    check_installed(cfg)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    prior = _read_ids(cfg.output_dir) if resume_from is not None else {}
    resume_step = _checkpoint_step(resume_from)
    try:
        for name in wanted:
            trackers.trackers.append(tracker_class(name)(cfg, cfg.output_dir, prior.get(name) or {}, resume_step))
    except BaseException:
        trackers.close(failed=True)
        raise
    write_json(cfg.output_dir / TRACKING_FILE, {t.name: t.ids() for t in trackers.trackers if t.ids()})
    return trackers
