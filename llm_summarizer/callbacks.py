"""ROUGE on generated summaries while training, sample logging, and early stopping.

`RougeEvaluator` generates summaries for a fixed, seeded subset of the validation split and scores
them with rouge-score (never teacher-forced argmax tokens). The trainer calls it from its
evaluation loop, so `eval_rouge1`, `eval_rouge2`, `eval_rougeL`, `eval_rougeLsum`, generated-length
stats and the callback's own wall time land in the same metrics dict as `eval_loss`: in the log
history, `trainer_state.json`, every tracker, and `metric_for_best_model` decisions.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback

from .config import Config
from .generation import derive_max_new_tokens, generate
from .scoring import ROUGE_TYPES, score_corpus

log = logging.getLogger("llm_summarizer.callbacks")

SAMPLES_FILE = "rouge_samples.jsonl"
PREDICTIONS_DIR = "eval_predictions"


def pick_subset(n_rows: int, n: int, seed: int) -> list[int]:
    if n >= n_rows:
        return list(range(n_rows))
    return sorted(random.Random(seed).sample(range(n_rows), n))


class RougeEvaluator:
    """Generate + score on a fixed subset of a split. Holds no trainer state of its own."""

    def __init__(self, cfg: Config, tokenizer, formatter, dataset, summary_token_lengths: list[int],
                 out_dir: Optional[Path] = None, num_samples: Optional[int] = None):
        self.cfg = cfg
        self.tok = tokenizer
        self.formatter = formatter
        idx = pick_subset(len(dataset), num_samples or cfg.eval.num_samples, cfg.eval.sample_seed)
        sub = dataset.select(idx)
        self.ids, self.documents, self.references = list(sub["id"]), list(sub["document"]), list(sub["summary"])
        self.max_new_tokens = derive_max_new_tokens(summary_token_lengths, cfg.eval)
        self.out_dir = out_dir
        self.total_seconds = 0.0
        self.calls = 0

    def run(self, model, step: Optional[int] = None, tag: Optional[str] = None) -> dict:
        t0 = time.perf_counter()
        gens = generate(model, self.tok, self.formatter, self.documents, self.cfg.eval, self.max_new_tokens,
                        self.cfg.model.backend, seed=self.cfg.eval.sample_seed)
        preds = [g.text for g in gens]
        means, per = score_corpus(self.references, preds)
        seconds = time.perf_counter() - t0
        self.total_seconds += seconds
        self.calls += 1
        metrics = {k: float(v) for k, v in means.items()}
        metrics["gen_len_mean"] = float(sum(g.new_tokens for g in gens) / max(1, len(gens)))
        metrics["gen_hit_max_frac"] = float(sum(g.hit_max for g in gens) / max(1, len(gens)))
        metrics["rouge_seconds"] = float(seconds)
        metrics["rouge_examples"] = len(gens)
        if self.out_dir is not None:
            self._write(step, tag, gens, per)
        return metrics

    def _write(self, step, tag, gens, per) -> None:
        name = tag or f"step-{step}"
        d = self.out_dir / PREDICTIONS_DIR
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for i, (rid, ref, g, s) in enumerate(zip(self.ids, self.references, gens, per)):
                f.write(json.dumps({"id": rid, "reference": ref, "prediction": g.text, "new_tokens": g.new_tokens,
                                    "hit_max_new_tokens": g.hit_max, **s}, ensure_ascii=False) + "\n")
        n_show = min(len(gens), self.cfg.eval.log_samples)
        with open(self.out_dir / SAMPLES_FILE, "a", encoding="utf-8") as f:
            for i in range(n_show):
                f.write(json.dumps({"step": step, "tag": name, "id": self.ids[i],
                                    "document": self.documents[i][:500], "reference": self.references[i],
                                    "prediction": gens[i].text, **per[i]}, ensure_ascii=False) + "\n")


class RougeCallback(TrainerCallback):
    """Asks the trainer to evaluate every `eval.every_steps` and at the end; records ROUGE history."""

    def __init__(self, evaluator: RougeEvaluator, every_steps: Optional[int]):
        self.evaluator = evaluator
        self.every_steps = every_steps
        self.history: list[dict] = []

    def on_step_end(self, args, state, control, **kwargs):
        if self.every_steps and state.global_step % self.every_steps == 0:
            control.should_evaluate = True
        if state.global_step >= state.max_steps:
            control.should_evaluate = True  # ROUGE at the end, whatever the schedule
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_rougeL" in metrics:
            self.history.append({"step": state.global_step, **{k: metrics[k] for k in metrics if k.startswith("eval_rouge")}})


class EarlyStopping(TrainerCallback):
    """Stop when `metric` has not improved by more than `min_delta` for `patience` evaluations.

    The counters are saved in trainer_state.json (transformers' stateful callbacks), so a resumed run
    continues counting where it stopped.
    """

    def __init__(self, metric: str, patience: int, min_delta: float = 0.0, greater_is_better: Optional[bool] = None):
        self.metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        self.patience = patience
        self.min_delta = min_delta
        self.greater = greater_is_better if greater_is_better is not None else not self.metric.endswith("loss")
        self.best: Optional[float] = None
        self.bad_evals = 0
        self.stopped_at: Optional[int] = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return control
        improved = self.best is None or (
            value > self.best + self.min_delta if self.greater else value < self.best - self.min_delta)
        if improved:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
            if self.bad_evals >= self.patience:
                log.info("early stopping at step %d: %s did not improve by more than %g for %d evaluations (best %.4f)",
                         state.global_step, self.metric, self.min_delta, self.patience, self.best)
                self.stopped_at = state.global_step
                control.should_training_stop = True
        return control

    def state(self) -> dict:
        return {"args": {"metric": self.metric, "patience": self.patience, "min_delta": self.min_delta,
                         "greater_is_better": self.greater},
                "attributes": {"best": self.best, "bad_evals": self.bad_evals, "stopped_at": self.stopped_at}}
