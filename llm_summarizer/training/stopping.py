"""When training stops early: a metric that no longer improves (EarlyStopping), a non-finite loss or gradient
(NonFiniteGuard). Both keep their counters in trainer_state.json, so a resumed run continues where it stopped."""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..errors import TrainingStopped
from ..metric_names import eval_name

log = logging.getLogger("llm_summarizer.stopping")


def early_stopping_callback(metric: str, patience: int, min_delta: float, greater_is_better: bool):
    """An EarlyStopping whose class name is unique per metric: transformers saves and restores callback
    state by class name, and mixes up several instances of one class (the one class made per call)."""
    name = "EarlyStopping_" + "".join(c if c.isalnum() else "_" for c in metric)
    return type(name, (EarlyStopping,), {})(metric, patience, min_delta, greater_is_better)


class EarlyStopping(TrainerCallback, ExportableState):
    """Stop when `metric` has not improved by more than `min_delta` for `patience` evaluations.

    The counters are saved in trainer_state.json (transformers' stateful callbacks), so a resumed run
    continues counting where it stopped.
    """

    def __init__(self, metric: str, patience: int, min_delta: float, greater_is_better: bool):
        self.metric = eval_name(metric)
        self.patience = patience
        self.min_delta = min_delta
        self.greater = greater_is_better  # decided by Config.greater_is_better
        self.best: Optional[float] = None
        self.bad_evals = 0
        self.stopped_at: Optional[int] = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return control
        improved = self.best is None or (
            value > self.best + self.min_delta if self.greater else value < self.best - self.min_delta
        )
        if improved:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
            if self.bad_evals >= self.patience:
                log.info(
                    "early stopping at step %d: %s did not improve by more than %g for %d evaluations (best %.4f)",
                    state.global_step,
                    self.metric,
                    self.min_delta,
                    self.patience,
                    self.best,
                )
                self.stopped_at = state.global_step
                control.should_training_stop = True
        return control

    def state(self) -> dict:
        return {
            "args": {
                "metric": self.metric,
                "patience": self.patience,
                "min_delta": self.min_delta,
                "greater_is_better": self.greater,
            },
            "attributes": {"best": self.best, "bad_evals": self.bad_evals, "stopped_at": self.stopped_at},
        }


class NonFiniteGuard(TrainerCallback, ExportableState):
    def __init__(self, policy: str = "stop", max_skips: int = 0):
        self.policy = policy
        self.max_skips = max_skips
        self.skipped = 0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None:
            return control
        bad = _first_nonfinite_grad(model)
        if bad is None:
            return control
        step = state.global_step + 1
        if self.policy == "skip" and self.skipped < self.max_skips:
            self.skipped += 1
            for p in model.parameters():
                p.grad = None  # the optimizer leaves parameters without a gradient untouched
            log.warning(
                "non-finite gradient in %s at step %d: skipped this optimizer step (%d of %d allowed)",
                bad,
                step,
                self.skipped,
                self.max_skips,
            )
            return control
        extra = (
            f" after skipping {self.skipped} step(s) (train.max_nonfinite_skips={self.max_skips})"
            if self.policy == "skip"
            else ""
        )
        raise TrainingStopped(
            f"non-finite loss or gradient at step {step} (first in {bad}){extra}. Training stopped; the last "
            f"complete checkpoint in {args.output_dir} is kept and a rerun resumes from it. Try a lower "
            f"train.learning_rate, train.max_grad_norm, or train.precision=fp32/bf16 instead of fp16; "
            f"or train.on_nonfinite=skip with train.max_nonfinite_skips=N to skip such steps."
        )

    def state(self) -> dict:
        return {"args": {"policy": self.policy, "max_skips": self.max_skips}, "attributes": {"skipped": self.skipped}}


def _first_nonfinite_grad(model) -> Optional[str]:
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return None
