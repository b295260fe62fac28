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
from ..metrics import eval_name

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
    """A non-finite loss or gradient stops the run (train.on_nonfinite=stop) or skips the step (skip, at most
    train.max_nonfinite_skips times).

    Under fp16 mixed precision a loss scaler (torch's GradScaler, through accelerate) multiplies the loss before
    backward and, at each step, looks for inf/NaN in the gradients: where it finds some it skips the optimizer step
    and halves its scale. Such overflow steps are the scaler's way of finding its scale, not a broken run, so with a
    scaler this guard leaves the gradients to it (clearing them before the scaler's step would also make it raise "No
    inf checks were recorded") and judges after the step: a step the scaler skipped counts against the run only when
    its loss was not finite, or when the scaler keeps skipping until its scale falls below 1 (the gradients overflow
    even unscaled). Without a scaler the gradients are checked before the step, with one device sync per step."""

    def __init__(self, policy: str = "stop", max_skips: int = 0, advice: str = ""):
        self.policy = policy
        self.max_skips = max_skips
        self.advice = advice or "a lower train.learning_rate or train.max_grad_norm"
        self.skipped = 0
        self.scaler_skips = 0  # overflow steps the fp16 loss scaler skipped (its own business, reported)
        self.scaler_run = 0  # of them, in a row up to the last step
        self.trainer = None  # set by watch(): where the scaler and the step's losses are read

    def watch(self, trainer) -> None:
        """The trainer whose loss scaler and step losses (SummarizationTrainer.step_losses) this guard reads."""
        self.trainer = trainer

    def _scaler(self):
        scaler = getattr(getattr(self.trainer, "accelerator", None), "scaler", None)
        return scaler if scaler is not None and scaler.is_enabled() else None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None or self._scaler() is not None:
            return control
        bad = first_nonfinite_grad(model)
        if bad is None:
            return control
        step = state.global_step + 1
        if self._may_skip():
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
        raise self._stopped(args, f"non-finite loss or gradient at step {step} (first in {bad})")

    def on_optimizer_step(self, args, state, control, **kwargs):
        scaler = self._scaler()
        losses = self._take_losses()
        if scaler is None or not self.trainer.accelerator.optimizer_step_was_skipped:
            self.scaler_run = 0
            return control
        step, scale = state.global_step + 1, scaler.get_scale()
        self.scaler_skips += 1
        self.scaler_run += 1
        if losses and not bool(torch.isfinite(torch.stack([x.float() for x in losses])).all()):
            if self._may_skip():
                log.warning(
                    "non-finite loss at step %d: the fp16 loss scaler skipped this optimizer step (%d of %d allowed)",
                    step,
                    self.skipped,
                    self.max_skips,
                )
                return control
            raise self._stopped(args, f"non-finite loss at step {step} (fp16 mixed precision)")
        if scale < 1.0:
            raise self._stopped(
                args,
                f"the fp16 loss scaler skipped {self.scaler_run} steps in a row up to step {step} and its scale fell "
                f"to {scale:g}: the gradients are not finite even unscaled",
            )
        log.info(
            "fp16 loss scaler: gradients overflowed at step %d, the step was skipped and the scale lowered to %g "
            "(normal while the scaler finds its scale; %d skipped so far)",
            step,
            scale,
            self.scaler_skips,
        )
        return control

    def _take_losses(self) -> list:
        losses = getattr(self.trainer, "step_losses", None)
        if losses is None:
            return []
        taken = list(losses)
        losses.clear()
        return taken

    def _may_skip(self) -> bool:
        if self.policy == "skip" and self.skipped < self.max_skips:
            self.skipped += 1
            return True
        return False

    def _stopped(self, args, what: str) -> TrainingStopped:
        extra = (
            f" after skipping {self.skipped} step(s) (train.max_nonfinite_skips={self.max_skips})"
            if self.policy == "skip"
            else ""
        )
        return TrainingStopped(
            f"{what}{extra}. Training stopped; the last complete checkpoint in {args.output_dir} is kept and a rerun "
            f"resumes from it. Try {self.advice}; or train.on_nonfinite=skip with train.max_nonfinite_skips=N to "
            f"skip such steps."
        )

    def state(self) -> dict:
        return {
            "args": {"policy": self.policy, "max_skips": self.max_skips, "advice": self.advice},
            "attributes": {"skipped": self.skipped, "scaler_skips": self.scaler_skips, "scaler_run": self.scaler_run},
        }


def first_nonfinite_grad(model) -> Optional[str]:
    """The name of the first parameter whose gradient holds inf or NaN, or None; one device sync for all of them
    (the names are looked up only when something is wrong)."""
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    if not named:
        return None
    finite = torch.stack([g.isfinite().all() for _, g in named])
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0, 0])][0]
