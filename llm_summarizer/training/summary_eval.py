"""Generated summaries scored while training: the evaluator, its callback, the samples, the base comparison.

`SummaryEvaluator` generates summaries for a fixed, seeded subset of the validation split and scores
them with every metric of metrics.py (never teacher-forced argmax tokens). The trainer calls it from its
evaluation loop, so `eval_rouge1` ... `eval_chrF` (one per registered metric), generated-length
stats, the statistics of each summary against its document (`eval_coverage`, `eval_density`, ...:
evaluation/diagnostics.py) and the callback's own wall time land in the same metrics dict as `eval_loss`:
in the log history, `trainer_state.json`, every tracker, and `metric_for_best_model` decisions.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback

from .. import distributed, progress
from ..config import Config
from ..evaluation import diagnostics
from ..evaluation.bootstrap import paired_diagnostics, paired_difference
from ..evaluation.scoring import protocol_for, score_corpus, warn_empty_references
from ..layout import PREDICTIONS_DIR, REFERENCES_FILE, SAMPLES_FILE
from ..metrics import GENERATION_KEYS, KEYS, PRIMARY
from ..models.generation import BUDGET_RULE, AdaptiveBatch, GenerationRequest, derive_max_new_tokens, generate
from ..models.generation_record import GenerationRecord
from ..rundir import checkpoint_step

log = logging.getLogger("llm_summarizer.summary_eval")


def pick_subset(n_rows: int, n: int, seed: int) -> list[int]:
    if n >= n_rows:
        return list(range(n_rows))
    return sorted(random.Random(seed).sample(range(n_rows), n))


class SummaryEvaluator:
    """Generate + score on a fixed subset of a split. Holds no trainer state of its own."""

    def __init__(
        self,
        cfg: Config,
        tokenizer,
        formatter,
        dataset,
        summary_token_lengths: list[int],
        out_dir: Optional[Path] = None,
    ):
        self.cfg = cfg
        self.tok = tokenizer
        self.formatter = formatter
        idx = pick_subset(len(dataset), cfg.eval.num_samples, cfg.eval.sample_seed)
        sub = dataset.select(idx)
        self.ids, self.documents, self.references = list(sub["id"]), list(sub["document"]), list(sub["summary"])
        self.max_new_tokens = derive_max_new_tokens(summary_token_lengths, cfg.eval)
        self.batch = AdaptiveBatch(cfg.eval.batch_size)  # an OOM's smaller batch is kept for later evaluations
        self.protocol = protocol_for(self.references, cfg.eval.rouge_tokenizer, cfg.eval.rouge_lsum_split)
        warn_empty_references(self.references, self.protocol, "validation")
        # what the data teaches: the references against their own documents, once (pure string work)
        self.reference_diagnostics = diagnostics.corpus(
            self.references, self.documents, tokenizer=self.protocol.tokenizer
        )
        self.reference_means = diagnostics.means(self.reference_diagnostics)
        self._references_written = False
        self.out_dir = out_dir
        self.total_seconds = 0.0
        self.seconds_outside_training = 0.0  # the base-model pass before train()
        self.calls = 0
        self.last_pass: Optional[str] = None  # the name of the newest eval_predictions/<name>.jsonl
        # fn(step, tag, metrics, samples) after each pass: trackers log the samples table from here
        self.listeners: list = []

    def run(self, model, step: Optional[int] = None, tag: Optional[str] = None) -> dict:
        t0 = time.perf_counter()
        n = len(self.documents)
        mine = distributed.shard(n)  # several ranks: each generates its share, every rank gets all the texts
        with progress.bar(len(mine), f"evaluation: {n} validation summaries ({tag or f'step {step}'})", "summary") as b:
            request = GenerationRequest(
                self.formatter,
                [self.documents[i] for i in mine],
                self.cfg.eval,
                self.max_new_tokens,
                self.cfg.model.backend,
                seed=self.cfg.eval.sample_seed,
                batch=self.batch,
                progress=lambda done, _total: b.update_to(done),
            )
            local = generate(model, self.tok, request)
        sharded = distributed.distributed() and distributed.initialized()  # the same answer on every rank
        gens = distributed.unshard(distributed.gather(local), n) if sharded else local
        preds = [g.text for g in gens]
        means, per = score_corpus(self.references, preds, self.protocol)
        t_diag = time.perf_counter()
        diag = diagnostics.corpus(
            preds, self.documents, self.references, [g.hit_max for g in gens], self.protocol.tokenizer
        )
        diag_seconds = time.perf_counter() - t_diag
        seconds = time.perf_counter() - t0
        self.total_seconds += seconds
        if tag == "base":
            self.seconds_outside_training += seconds
        self.calls += 1
        metrics = {k: float(v) for k, v in means.items()}
        metrics["gen_len_mean"] = float(sum(g.new_tokens for g in gens) / max(1, len(gens)))
        metrics["gen_hit_max_frac"] = float(sum(g.hit_max for g in gens) / max(1, len(gens)))
        metrics.update({k: v for k, v in diagnostics.means(diag).items() if v is not None})
        metrics["summaries_seconds"] = float(seconds)
        metrics["diagnostics_seconds"] = float(diag_seconds)
        metrics["summary_examples"] = len(gens)
        name = tag or f"step-{step}"
        self.last_pass = name
        samples = [
            {
                "step": step,
                "tag": name,
                "id": self.ids[i],
                "document": self.documents[i][:500],
                "reference": self.references[i],
                "prediction": gens[i].text,
                **per[i],
                **diagnostics.flat(diag[i]),
            }
            for i in range(min(len(gens), self.cfg.eval.log_samples))
        ]
        if distributed.is_main():  # written once, whatever the number of ranks
            if self.out_dir is not None:
                self._write(name, gens, per, samples, diag)
            for fn in self.listeners:
                fn(step, name, metrics, samples)
        return metrics

    def _write(self, name, gens, per, samples, diag) -> None:
        d = self.out_dir / PREDICTIONS_DIR
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for rid, ref, g, s, x in zip(self.ids, self.references, gens, per, diag):
                f.write(
                    json.dumps(
                        {
                            "id": rid,
                            "reference": ref,
                            "prediction": g.text,
                            "new_tokens": g.new_tokens,
                            "hit_max_new_tokens": g.hit_max,
                            **s,
                            "diagnostics": x,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
        if not self._references_written:  # the same subset at every pass: once per run (the report's reference points)
            self._references_written = True
            with open(d / REFERENCES_FILE, "w", encoding="utf-8") as f:
                for rid, ref, x in zip(self.ids, self.references, self.reference_diagnostics):
                    f.write(json.dumps({"id": rid, "reference": ref, "diagnostics": x}, ensure_ascii=False) + "\n")
        with open(self.out_dir / SAMPLES_FILE, "a", encoding="utf-8") as f:
            for row in samples:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


class SummaryEvalCallback(TrainerCallback):
    """Asks the trainer to evaluate every `eval.every_steps` and at the end (the ROUGE history is the log history)."""

    def __init__(self, evaluator: SummaryEvaluator, every_steps: Optional[int]):
        self.evaluator = evaluator
        self.every_steps = every_steps

    def on_step_end(self, args, state, control, **kwargs):
        if self.every_steps and state.global_step % self.every_steps == 0:
            control.should_evaluate = True
        if state.global_step >= state.max_steps:
            control.should_evaluate = True  # ROUGE at the end, whatever the schedule
        return control


BLOCK_KEYS = (*KEYS, *GENERATION_KEYS, *diagnostics.DIAGNOSTIC_KEYS)


def eval_block(m: dict) -> dict:
    """The scores metrics.json keeps of one evaluation (no timings)."""
    return {k: m[k] for k in BLOCK_KEYS if k in m}


def eval_protocol(cfg: Config, evaluator: Optional[SummaryEvaluator]) -> dict:
    """How the in-training ROUGE was computed, for metrics.json and the model card."""
    if evaluator is None:
        return {}
    ev = cfg.eval
    return {
        **evaluator.protocol.describe(),
        "split": "validation",
        "examples": len(evaluator.documents),
        "subset_seed": ev.sample_seed,
        "decoding": GenerationRecord.made(
            ev,
            cfg.model.backend,
            evaluator.max_new_tokens,
            "eval.max_new_tokens" if ev.max_new_tokens else BUDGET_RULE,
            evaluator.formatter,
            evaluator.tok,
        ).to_dict(),
        "reference": "the dataset's summary column (one reference per example)",
        "eval_loss_rows": "the same subset" if ev.loss_rows == "summary_subset" else "the whole validation split",
        "diagnostics": diagnostics.protocol(evaluator.protocol.tokenizer),
    }


def _read_predictions(path: Path) -> dict:
    if not path.is_file():
        return {}
    return {r["id"]: r for r in (json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip())}


def compare_with_base(
    cfg: Config, evaluator: Optional[SummaryEvaluator], output_dir: Path, final_pass: Optional[str], n_examples: int = 2
) -> Optional[dict]:
    """Fine-tuned minus untrained ROUGE on the same validation examples, with paired bootstrap 95% intervals,
    and a few examples side by side (document, reference, base, fine-tuned), from eval_predictions/."""
    if evaluator is None or not final_pass:
        return None
    d = output_dir / PREDICTIONS_DIR
    base, final = _read_predictions(d / "base.jsonl"), _read_predictions(d / f"{final_pass}.jsonl")
    ids = [i for i in evaluator.ids if i in base and i in final]
    if len(ids) < 2:
        return None
    ev = cfg.eval
    diff = paired_difference([final[i] for i in ids], [base[i] for i in ids], ev.bootstrap_samples, ev.bootstrap_seed)
    with_diag = [i for i in ids if "diagnostics" in final[i] and "diagnostics" in base[i]]
    diag_diff = (
        paired_diagnostics(
            [final[i]["diagnostics"] for i in with_diag],
            [base[i]["diagnostics"] for i in with_diag],
            ev.bootstrap_samples,
            ev.bootstrap_seed,
        )
        if with_diag
        else None
    )
    docs = dict(zip(evaluator.ids, evaluator.documents))
    # the examples shown: the largest gains first, so a reader sees what training changed
    shown = sorted(ids, key=lambda i: final[i][PRIMARY] - base[i][PRIMARY], reverse=True)[:n_examples]
    return {
        "examples": len(ids),
        "model_minus_base": diff,
        **({"diagnostics_model_minus_base": diag_diff} if diag_diff else {}),
        "bootstrap": {"resamples": ev.bootstrap_samples, "seed": ev.bootstrap_seed, "paired": True},
        "side_by_side": [
            {
                "id": i,
                "document": docs[i][:400],
                "reference": final[i]["reference"],
                "base": base[i]["prediction"],
                "fine_tuned": final[i]["prediction"],
                f"{PRIMARY}_base": base[i][PRIMARY],
                f"{PRIMARY}_fine_tuned": final[i][PRIMARY],
            }
            for i in shown
        ],
    }


def truncate_samples(output_dir: Path, resume_from: Path) -> None:
    """Drop sample lines written after the checkpoint we resume from (they will be written again)."""
    p = output_dir / SAMPLES_FILE
    if not p.exists():
        return
    step = checkpoint_step(resume_from)
    keep = [
        l for l in p.read_text(encoding="utf-8").splitlines() if l.strip() and (json.loads(l).get("step") or 0) <= step
    ]
    p.write_text("".join(l + "\n" for l in keep), encoding="utf-8")
