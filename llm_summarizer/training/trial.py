"""A training run that is a trial of `llm-summarizer tune`: it reports each ROUGE evaluation to the driver's Optuna
study and stops when the study's pruner says so (TrialReporter). The tune driver passes the trial's spec to the
train process it starts; the train command builds the reporter from it and hands it to training.run.run."""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

from transformers import TrainerCallback

from .. import distributed

log = logging.getLogger("llm_summarizer.trial")


TRIAL_ENV = "LLM_SUMMARIZER_TUNE_TRIAL"  # set by `llm-summarizer tune` for the training run of one trial


def make_pruner(spec: dict):
    """The study's pruner, built the same way in the tune driver and in each trial's run (which asks it)."""
    # optuna (the tune extra) only in a tune trial
    import optuna

    if spec["kind"] == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec["n_startup_trials"], n_warmup_steps=spec["n_warmup_steps"]
        )
    return optuna.pruners.NopPruner()


class TrialReporter(TrainerCallback):
    """Inside a tune trial: each evaluation's value of the study's metric goes to the Optuna trial, and the
    pruner's answer stops training (the run then saves its model as usual; metrics.json says it was pruned)."""

    def __init__(self, spec: dict):
        self.metric = spec["metric"]
        self.pruned_at: Optional[int] = None
        self.trial = None
        self.number = spec.get("trial_number")
        if distributed.is_main():  # one rank talks to the study; the others follow its answer
            # optuna (the tune extra) only in a tune trial
            import optuna

            study = optuna.load_study(
                study_name=spec["study"], storage=spec["storage"], pruner=make_pruner(spec["pruner"])
            )
            self.trial = optuna.trial.Trial(study, spec["trial_id"])
            self.number = self.trial.number

    @classmethod
    def from_env(cls) -> Optional["TrialReporter"]:
        raw = os.environ.get(TRIAL_ENV)
        return cls(json.loads(raw)) if raw else None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.metric)
        if value is None or state.global_step >= state.max_steps:
            return control  # the final value is the trial's result, told by the driver
        stop = False
        if self.trial is not None:
            self.trial.report(float(value), state.global_step)
            stop = self.trial.should_prune()
        if distributed.broadcast(stop):  # every rank stops at the same step (else they would wait for each other)
            log.info("tune: the pruner stopped this trial at step %d (%s=%.4f)", state.global_step, self.metric, value)
            self.pruned_at = state.global_step
            control.should_training_stop = True
        return control
