"""Fine-tune a summarizer: python -m llm_summarizer.train --config FILE [key=value ...]

    python -m llm_summarizer.train --config configs/demo.yaml                 # offline demo, CPU, minutes
    python -m llm_summarizer.train --config configs/default.yaml             # a real model + dataset (network)
    python -m llm_summarizer.train --config configs/demo.yaml train.max_steps=50 lora.r=8
    python -m llm_summarizer.train --config configs/demo.yaml --print-config  # resolved config, then exit

Checkpoints go to output.dir (default outputs/<run_name>/); running the same command again resumes
from the newest complete checkpoint there (train.resume=auto|never|PATH). The fine-tuned adapter,
tokenizer, config.yaml, metrics.json and a model card go to output.model_dir (default
fine_tuned/<run_name>/), written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .config import Config, config_to_yaml

log = logging.getLogger("llm_summarizer.train")

BASE_METRICS_FILE = "base_metrics.json"


@dataclass
class RunResult:
    output_dir: Path
    model_dir: Path
    metrics: dict
    resumed_from: Optional[Path] = None
    log_history: list = field(default_factory=list)


@dataclass
class Session:
    """Everything a run holds between building the trainer and saving the final model."""

    cfg: Config
    model: object
    tokenizer: object
    model_info: dict
    prepared: object
    evaluator: object
    trainer: object
    t_start: float
    trackers: object = None  # tracking.Trackers: W&B / TensorBoard / MLflow runs


def run(cfg: Config, extra_callbacks: Optional[list] = None) -> RunResult:
    """The whole training story, one step per call. Raises UserError on bad input."""
    from . import data, model as model_lib

    from .guards import RunLock

    t_start = time.time()
    # 1. Where everything goes (one run at a time per directory); fail on a bad resume path early.
    with RunLock(check_output_paths(cfg)):
        resume_from = prepare_output(cfg)
        return _run_locked(cfg, resume_from, extra_callbacks, t_start)


def _run_locked(cfg: Config, resume_from, extra_callbacks, t_start) -> RunResult:
    from . import data, model as model_lib

    # 2. Unsloth first (it patches transformers/trl/peft on import), then seed everything once.
    seed_everything(cfg)
    # 3. Raw data: read, validate, split.
    raw = data.load_raw_splits(cfg)
    # 4. Base model + tokenizer + LoRA.
    model, tokenizer, model_info = model_lib.load_model_and_tokenizer(cfg, raw)
    # 5-7. Token ids under the budget, the ROUGE evaluator and callbacks, the trainer.
    session = build_session(cfg, model, tokenizer, model_info, raw, extra_callbacks, t_start, resume_from)
    # 8-13. Base ROUGE, train (resuming), final ROUGE, atomic save, report.md + plots, hub push.
    return train_and_save(session, resume_from)


def check_output_paths(cfg: Config) -> Path:
    """Create output.dir if needed; a file in the way or a read-only place is a user error."""
    from .config import UserError

    for key, p in (("output.dir", cfg.output_dir), ("output.model_dir", cfg.model_dir)):
        if p.exists() and not p.is_dir():
            raise UserError(f"{key}: {p} is a file; expected a directory (or a path that does not exist yet)")
        parent = p if p.exists() else next((a for a in p.absolute().parents if a.exists()), None)
        if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"{key}: cannot write to {parent}; choose a writable location")
    try:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"output.dir: cannot create {cfg.output_dir}: {e.strerror}") from None
    return cfg.output_dir


def prepare_output(cfg: Config) -> Optional[Path]:
    from . import artifacts, tracking

    check_output_paths(cfg)
    artifacts.clean_staging(cfg.output_dir)
    artifacts.recover_interrupted_replace(cfg.model_dir)
    tracking.check_installed(cfg)
    return artifacts.resolve_resume(cfg.train.resume, cfg.output_dir)


def seed_everything(cfg: Config) -> None:
    from . import model as model_lib

    if cfg.model.backend == "unsloth":
        model_lib.import_unsloth()
    from transformers import set_seed

    set_seed(cfg.train.seed)


def build_session(cfg: Config, model, tokenizer, model_info: dict, raw: dict, extra_callbacks=None,
                  t_start: Optional[float] = None, resume_from: Optional[Path] = None) -> Session:
    from . import data, model as model_lib, trainer as trainer_lib, tracking
    from .callbacks import NonFiniteGuard, RougeCallback, RougeEvaluator, early_stopping_callback

    prec = model_lib.pick_precision(cfg)
    # 5. Prompt/completion token ids under the token budget.
    prepared = data.prepare(cfg, tokenizer, raw, cache_dir=cfg.output_dir / "data_cache")
    # 6. ROUGE on generated summaries + early stopping.
    evaluator, callbacks = None, []
    if cfg.eval.rouge and "validation" in prepared.splits and len(prepared.splits["validation"]):
        evaluator = RougeEvaluator(cfg, tokenizer, prepared.formatter, prepared.splits["validation"],
                                   prepared.stats["train"].completion_tokens, out_dir=cfg.output_dir)
        callbacks.append(RougeCallback(evaluator, cfg.eval.every_steps))
    for es in cfg.train.early_stopping:
        callbacks.append(early_stopping_callback(es.metric, es.patience, es.min_delta))
    callbacks.extend(extra_callbacks or [])
    callbacks.append(NonFiniteGuard(cfg.train.on_nonfinite, cfg.train.max_nonfinite_skips))  # last: sees final grads
    # 7. The trainer.
    trainer = trainer_lib.build_trainer(cfg, model, tokenizer, prepared, prec, cfg.output_dir, callbacks,
                                        report_to=["none"], rouge_evaluator=evaluator)
    # 7b. Trackers (tracking.py feeds W&B / TensorBoard / MLflow itself; a resumed run continues the same runs).
    trackers = tracking.start(cfg, resume_from)
    if trackers.active:
        trainer.add_callback(trackers.callback())
        if evaluator is not None:
            evaluator.listeners.append(trackers.on_rouge)
    return Session(cfg, model, tokenizer, model_info, prepared, evaluator, trainer, t_start or time.time(), trackers)


def train_and_save(s: Session, resume_from: Optional[Path]) -> RunResult:
    # the tracker runs end as failed when anything below raises
    with s.trackers if s.trackers is not None else contextlib.nullcontext():
        result = _train_and_save(s, resume_from)
    # 13. The hub (output.push_to_hub), after everything is saved: a failed push loses nothing.
    from .hub import push_after_training

    push_after_training(s.cfg, result.model_dir)
    return result


def _train_and_save(s: Session, resume_from: Optional[Path]) -> RunResult:
    cfg, evaluator, trainer = s.cfg, s.evaluator, s.trainer
    output_dir, model_dir = cfg.output_dir, cfg.model_dir
    # 8. ROUGE of the untrained model (once per run; a resumed run reuses it).
    base = _base_rouge(cfg, evaluator, s.model, output_dir, resume_from)
    # 9. Train. The resolved config is written only now that data and model loaded fine.
    (output_dir / "config.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
    if resume_from is not None:
        _truncate_samples(output_dir, resume_from)
    with _training_errors(cfg, output_dir):
        train_out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    # 10. ROUGE of the fine-tuned model (the best checkpoint's weights when load_best_model_at_end).
    final = _final_rouge(cfg, evaluator, trainer)
    # 11. Save the final model atomically, with what reproduces it.
    metrics = {
        "base": base,
        "final": final,
        "train": {"global_step": trainer.state.global_step, "train_loss": train_out.training_loss,
                  "train_runtime_s": train_out.metrics.get("train_runtime"),
                  "best_checkpoint": trainer.state.best_model_checkpoint,
                  "best_metric": trainer.state.best_metric,
                  "rouge_callback_s": round(evaluator.total_seconds, 2) if evaluator else None,
                  "rouge_callback_share": _share(evaluator, train_out),
                  "resumed_from": str(resume_from) if resume_from else None},
        "data": s.prepared.report(),
        "eval_protocol": _protocol(cfg, evaluator),
    }
    if s.trackers is not None and s.trackers.info():
        metrics["tracking"] = s.trackers.info()  # W&B run id and URL (online), sync command (offline), ...
    with _training_errors(cfg, model_dir):
        _save_final(cfg, trainer.model, s.tokenizer, model_dir, metrics, s.model_info, s.t_start)
    if s.trackers is not None:
        s.trackers.finish(model_dir, metrics)  # final scores, the adapter artifact (tracking.log_model)
    # 12. report.md + plots in output.dir (curves from the log history, ROUGE base vs fine-tuned, lengths).
    report = None
    if cfg.output.report:
        from .report import write_training_report

        report = write_training_report(cfg, output_dir, metrics, list(trainer.state.log_history))
    _print_summary(cfg, output_dir, model_dir, metrics)
    if report is not None:
        print(f"   report:          {report}  (plots in {report.parent / 'plots'}/)")
    return RunResult(output_dir, model_dir, metrics, resume_from, list(trainer.state.log_history))


@contextlib.contextmanager
def _training_errors(cfg: Config, where: Path):
    """Out-of-memory and disk-full become one clear message (exit code 3) instead of a traceback."""
    from .guards import TrainingStopped, disk_full_message, is_disk_full, is_oom, oom_advice

    try:
        yield
    except TrainingStopped:
        raise
    except BaseException as e:  # noqa: B036 - re-raised unless it is one of ours
        if is_oom(e):
            raise TrainingStopped(oom_advice(cfg)) from None
        if is_disk_full(e):
            raise TrainingStopped(disk_full_message(where, e)) from None
        raise


def _share(evaluator, train_out) -> Optional[float]:
    """The ROUGE callback's share of the training wall time (its generations run inside train())."""
    runtime = train_out.metrics.get("train_runtime")
    if evaluator is None or not runtime:
        return None
    inside = evaluator.total_seconds - evaluator.seconds_outside_training
    return round(max(0.0, inside) / runtime, 4)


def _rouge_block(m: dict) -> dict:
    return {k: m[k] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum", "gen_len_mean", "gen_hit_max_frac",
                              "rouge_examples") if k in m}


def _base_rouge(cfg, evaluator, model, output_dir: Path, resume_from) -> Optional[dict]:
    path = output_dir / BASE_METRICS_FILE
    if resume_from is not None and path.exists():
        return json.loads(path.read_text())
    if evaluator is None or not cfg.eval.base_eval:
        return None
    log.info("scoring the untrained model on %d validation examples (ROUGE on generated summaries)",
             len(evaluator.documents))
    base = _rouge_block(evaluator.run(model, step=0, tag="base"))
    from .artifacts import write_json

    write_json(path, base)
    log.info("base model: %s", _fmt(base))
    return base


def _final_rouge(cfg, evaluator, trainer) -> Optional[dict]:
    if evaluator is None:
        return None
    last = next((h for h in reversed(trainer.state.log_history) if "eval_rougeL" in h), None)
    if last is not None and last.get("step") == trainer.state.global_step and not cfg.train.load_best_model_at_end:
        return _rouge_block({k.removeprefix("eval_"): v for k, v in last.items()})
    return _rouge_block(evaluator.run(trainer.model, step=trainer.state.global_step, tag="final"))


def _protocol(cfg, evaluator) -> dict:
    from .scoring import PROTOCOL

    if evaluator is None:
        return {}
    ev = cfg.eval
    return {**PROTOCOL, "split": "validation", "examples": len(evaluator.documents), "subset_seed": ev.sample_seed,
            "decoding": {"num_beams": ev.num_beams, "do_sample": ev.do_sample,
                         "max_new_tokens": evaluator.max_new_tokens,
                         **({"temperature": ev.temperature, "top_p": ev.top_p} if ev.do_sample else {})},
            "reference": "the dataset's summary column (one reference per example)"}


def _truncate_samples(output_dir: Path, resume_from: Path) -> None:
    """Drop sample lines written after the checkpoint we resume from (they will be written again)."""
    from .callbacks import SAMPLES_FILE

    p = output_dir / SAMPLES_FILE
    if not p.exists():
        return
    step = int(resume_from.name.split("-")[-1])
    keep = [l for l in p.read_text(encoding="utf-8").splitlines() if l.strip() and
            (json.loads(l).get("step") or 0) <= step]
    p.write_text("".join(l + "\n" for l in keep), encoding="utf-8")


def _save_final(cfg: Config, model, tokenizer, model_dir: Path, metrics: dict, model_info: dict, t_start: float):
    from .artifacts import atomic_directory, git_commit, package_versions, write_json
    from .modelcard import write_model_card

    with atomic_directory(model_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "config.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "run_info.json", {
            "seed": cfg.train.seed, "split_seed": cfg.data.split_seed, "model": model_info,
            "versions": package_versions(), "git_commit": git_commit(),
            "wall_time_s": round(time.time() - t_start, 1),
        })
        write_model_card(tmp / "README.md", cfg, metrics, model_info)


def _fmt(block: Optional[dict]) -> str:
    if not block:
        return "n/a"
    return " ".join(f"{k}={block[k]:.4f}" for k in ("rouge1", "rouge2", "rougeL", "rougeLsum") if k in block)


def _print_summary(cfg, output_dir: Path, model_dir: Path, metrics: dict) -> None:
    print("\n== llm_summarizer: training finished")
    print(f"   steps:           {metrics['train']['global_step']} (train loss {metrics['train']['train_loss']:.4f})")
    print(f"   ROUGE base:      {_fmt(metrics['base'])}")
    print(f"   ROUGE final:     {_fmt(metrics['final'])}")
    print(f"   fine-tuned model: {model_dir}/  (adapter, tokenizer, config.yaml, metrics.json, README.md)")
    print(f"   checkpoints+logs: {output_dir}/  (checkpoint-*, eval_predictions/, rouge_samples.jsonl)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m llm_summarizer.train", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n")[2:]))
    ap.add_argument("--config", help="YAML config file (configs/demo.yaml, configs/default.yaml, ...)")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ap.add_argument("--env-file", help="a .env file with WANDB_API_KEY / HF_TOKEN etc. (never logged or saved)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides: train.learning_rate=1e-4 lora.target_modules=[q_proj,v_proj]")
    return ap


def main(argv=None) -> int:
    from .cli import run_cli

    return run_cli(build_parser(), lambda args, cfg: (run(cfg), 0)[1], argv)


if __name__ == "__main__":
    raise SystemExit(main())
