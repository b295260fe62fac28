"""A training run, start to finish: `run(cfg)` reads top to bottom as the steps it takes.

Checkpoints go to output.dir (default outputs/<run_name>/); running the same config again resumes from
the newest complete checkpoint there (train.resume=auto|never|PATH). The fine-tuned adapter, tokenizer,
config.yaml, metrics.json, run_info.json and a model card go to output.model_dir (default
fine_tuned/<run_name>/), written atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from transformers import TrainerCallback, TrainerState, set_seed
from transformers.trainer_utils import TrainOutput

from .. import distributed
from ..config import Config, config_to_yaml, is_local_path
from ..contracts import RunMetrics, TrainFigures
from ..data.lengths import length_line, prepared_report
from ..data.rows import load_raw_splits
from ..data.tokenize import prepare
from ..environment import git_commit, package_versions
from ..errors import UserError
from ..evaluation import diagnostics
from ..evaluation.modelcard import write_model_card
from ..files import atomic_directory, recover_interrupted_replace, write_json, write_text
from ..hub import push_after_training
from ..layout import BASE_METRICS_FILE, CONFIG_FILE, DATA_CACHE_DIR, METRICS_FILE, MODEL_CARD, RUN_INFO_FILE
from ..metric_names import ROUGE_KEYS, eval_name, plain_name
from ..models.loading import load_for_training
from ..paths import Place, check_places, claim
from ..tracking.trackers import Trackers, check_installed, start_trackers
from .callbacks import (
    NonFiniteGuard,
    RougeCallback,
    RougeEvaluator,
    TrialReporter,
    compare_with_base,
    early_stopping_callback,
    eval_protocol,
    rouge_block,
    truncate_samples,
)
from .checkpoints import check_adapter_shape, check_world_size, clean_staging, resolve_resume
from .guards import RunLock, training_errors
from .report import write_training_report
from .trainer import build_trainer, check_extra_args

log = logging.getLogger("llm_summarizer.train")


@dataclass
class RunResult:
    output_dir: Path
    model_dir: Path
    metrics: RunMetrics
    resumed_from: Optional[Path] = None
    log_history: list = field(default_factory=list)
    report: Optional[Path] = None
    wall_s: Optional[float] = None  # the whole run, from the command's start


@dataclass
class Session:
    """Everything a run holds between building the trainer and saving the final model."""

    cfg: Config
    model: object
    tokenizer: object
    model_info: dict
    prepared: object
    evaluator: Optional[RougeEvaluator]
    trainer: object
    t_start: float
    trackers: Optional[Trackers] = None  # W&B / TensorBoard / MLflow runs
    resume_from: Optional[Path] = None
    startup: Optional["Startup"] = None


COMMAND_START_ENV = "LLM_SUMMARIZER_COMMAND_START"  # time.time() just before a script exec'd the command


def process_start_time() -> float:
    """When this command started (the interpreter's own start-up included), as time.time(): the process's start,
    or, when later, $LLM_SUMMARIZER_COMMAND_START, which scripts/demo.sh sets just before it execs the command in its
    own process (else the install before it would count as imports). A process started after that time (a child)
    counts from its own start."""
    try:
        # psutil is optional: without it the start-up split counts from the module's import
        import psutil

        t0 = psutil.Process().create_time()
    except Exception:  # no psutil, or a platform without the information: start-up is counted from here
        t0 = time.time()
    try:
        given = float(os.environ.get(COMMAND_START_ENV, ""))
    except ValueError:
        return t0
    return given if t0 < given <= time.time() else t0


class Startup(TrainerCallback):
    """Where the seconds before the first optimizer step go: imports (process start to run()), reading the data,
    loading the model, tokenizing + building the trainer, the base model's ROUGE pass, the first step."""

    def __init__(self, t_start: float):
        self.t0 = process_start_time()
        self.marks = [("imports", t_start)]
        self._first_step_seen = False

    def mark(self, name: str) -> None:
        self.marks.append((name, time.time()))

    def on_step_end(self, args, state, control, **kwargs):
        if not self._first_step_seen:
            self._first_step_seen = True
            self.mark("first_step")
        return control

    def report(self) -> dict:
        out, prev = {}, self.t0
        for name, t in self.marks:
            out[f"{name}_s"] = round(t - prev, 2)
            prev = t
        if self._first_step_seen:
            out["to_first_step_s"] = round(prev - self.t0, 2)
        return out


def run(cfg: Config, extra_callbacks: Optional[list] = None, take_lock: bool = True) -> RunResult:
    """The whole training story, one step per call. Raises UserError on bad input. `take_lock=False`: the
    launching process (the Ray driver) holds the run lock for all ranks."""
    t_start = time.time()
    startup = Startup(t_start)
    distributed.init(cfg.scale.timeout_s)  # launched as several ranks (torchrun): the group, before anything waits
    # 1. Where everything goes: checked, locked (one run per directory; rank 0 holds it for all ranks), leftovers
    #    of a killed run cleared.
    output_dir = check_output_paths(cfg)
    lock = RunLock(output_dir) if distributed.is_main() and take_lock else contextlib.nullcontext()
    with lock, training_errors(cfg, output_dir):  # a full disk anywhere: one message, exit 3
        resume_from = prepare_output(cfg)
        # 2. Seed everything once (the data split has its own seed, data.split_seed).
        set_seed(cfg.train.seed)
        # 3. Raw data: read, validate, split.
        raw = load_raw_splits(cfg)
        startup.mark("data_read")
        # 4. Base model + tokenizer + LoRA (a model built or converted into the cache: rank 0 first).
        with distributed.main_first():
            model, tokenizer, model_info = load_for_training(cfg, raw)
        startup.mark("model_load")
        # 5-7. Token ids under the budget, the ROUGE evaluator and callbacks, the trainer, the trackers.
        session = build_session(cfg, model, tokenizer, model_info, raw, [*(extra_callbacks or []), startup], t_start,
                                resume_from)
        session.startup = startup
        startup.mark("tokenize_and_trainer")
        # 8-12. Base ROUGE, train (resuming), final ROUGE, atomic save, report.md + plots.
        result = train_and_save(session)
    # 13. The hub (output.push_to_hub), after everything is saved: a failed push loses nothing.
    if distributed.is_main():  # after the last barrier: the other ranks do not wait for the upload
        push_after_training(cfg, result.model_dir)
    result.wall_s = round(time.time() - t_start, 1)
    return result


def check_output_paths(cfg: Config) -> Path:
    """The run's places under the one output rule (paths.py): output.dir (written into), output.model_dir (replaced
    whole by the final save) and model.cache_dir apart from each other and from the model and data read; each new,
    empty or this project's. Then output.dir is created and recorded as a run's. Rank 0 checks for all ranks."""
    if distributed.is_main():
        check_places(run_places(cfg), run_sources(cfg))
    try:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"output.dir: cannot create {cfg.output_dir}: {e.strerror}") from None
    if distributed.is_main():
        claim(cfg.output_dir, "run")
    return cfg.output_dir


def run_places(cfg: Config) -> list[Place]:
    return [Place("output.dir", cfg.output_dir, "run"), Place("output.model_dir", cfg.model_dir, "model", replaced=True),
            Place("model.cache_dir", Path(cfg.model.cache_dir), "cache")]


def run_sources(cfg: Config) -> list[tuple[str, str]]:
    """The local files and folders a run reads: the base model and the data sources."""
    out = [("model.name", cfg.model.name)] if is_local_path(cfg.model.name) else []
    for split in ("train", "validation", "test"):
        spec = getattr(cfg.data, split)
        if spec is not None and spec.path is not None:
            out.append((f"data.{split}", spec.path))
    return out


def prepare_output(cfg: Config) -> Optional[Path]:
    """Clear what a killed run left half-done; the checkpoint to resume from (None: start afresh). Several ranks:
    rank 0 does it and tells the others."""
    check_installed(cfg)
    check_extra_args(cfg)  # before anything heavy is loaded
    resume, problem = None, None
    if distributed.is_main():
        clean_staging(cfg.output_dir)
        recover_interrupted_replace(cfg.model_dir)
        try:
            resume = resolve_resume(cfg.train.resume, cfg.output_dir, cfg.train.verify_checkpoints)
            if resume is not None:
                check_world_size(resume, distributed.world_size(), cfg.scale.allow_world_size_change)
                check_adapter_shape(resume, cfg.lora, auto=cfg.train.resume == "auto")
        except UserError as e:
            if not distributed.distributed():
                raise
            problem = str(e)
    # every rank learns rank 0's answer, an error included (else the others would wait for it forever)
    resume, problem = distributed.broadcast((str(resume) if resume is not None else None, problem))
    if problem is not None:
        raise UserError(problem)
    return Path(resume) if resume is not None else None


def build_session(cfg: Config, model, tokenizer, model_info: dict, raw: dict, extra_callbacks=None,
                  t_start: Optional[float] = None, resume_from: Optional[Path] = None) -> Session:
    # 5. Prompt/completion token ids under the token budget (the cache: rank 0 writes it, the others read it).
    with distributed.main_first():
        prepared = prepare(cfg, tokenizer, raw, cache_dir=cfg.output_dir / DATA_CACHE_DIR)
    if distributed.is_main():  # the token lengths against the budget, in one line (`llm-summarizer data` shows more)
        train = prepared_report(prepared.formatter, prepared.splits["train"], prepared.stats["train"])
        log.info(length_line("train", train))
    # 6. ROUGE on generated summaries + early stopping.
    evaluator, callbacks = None, []
    if cfg.eval.rouge and "validation" in prepared.splits and len(prepared.splits["validation"]):
        evaluator = RougeEvaluator(cfg, tokenizer, prepared.formatter, prepared.splits["validation"],
                                   prepared.stats["train"].completion_tokens, out_dir=cfg.output_dir)
        callbacks.append(RougeCallback(evaluator, cfg.eval.every_steps))
    for es in cfg.train.early_stopping:
        greater = cfg.greater_is_better(es.metric, es.greater_is_better)
        callbacks.append(early_stopping_callback(es.metric, es.patience, es.min_delta, greater))
    callbacks.extend(extra_callbacks or [])
    reporter = TrialReporter.from_env()  # a trial of `llm-summarizer tune`
    if reporter is not None:
        callbacks.append(reporter)
    callbacks.append(NonFiniteGuard(cfg.train.on_nonfinite, cfg.train.max_nonfinite_skips))  # last: sees final grads
    # 7. The trainer, and the trackers (a resumed run continues the same tracker runs).
    trainer = build_trainer(cfg, model, tokenizer, prepared, cfg.output_dir, callbacks, report_to=["none"],
                            rouge_evaluator=evaluator)
    trackers = start_trackers(cfg, resume_from)
    if trackers.active:
        trainer.add_callback(trackers.callback())
        if evaluator is not None:
            evaluator.listeners.append(trackers.on_rouge)
    return Session(cfg, model, tokenizer, model_info, prepared, evaluator, trainer, t_start or time.time(), trackers,
                   resume_from)


def train_and_save(s: Session) -> RunResult:
    cfg, evaluator, trainer, resume_from = s.cfg, s.evaluator, s.trainer, s.resume_from
    output_dir, model_dir = cfg.output_dir, cfg.model_dir
    # the tracker runs end as failed when anything below raises
    with s.trackers if s.trackers is not None else contextlib.nullcontext():
        # 8. ROUGE of the untrained model (once per run; a resumed run reuses it).
        base = base_rouge(cfg, evaluator, s.model, output_dir, resume_from)
        if s.startup is not None:
            s.startup.mark("base_rouge")
        # 9. Train. The resolved config is written only now that data and model loaded fine.
        if distributed.is_main():
            write_text(output_dir / CONFIG_FILE, config_to_yaml(cfg))
            if resume_from is not None:
                truncate_samples(output_dir, resume_from)
        with training_errors(cfg, output_dir, resume_from):
            if finished_checkpoint(cfg, resume_from):
                train_out = restore_finished(trainer, resume_from)
            else:
                train_out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        # 10. ROUGE of the fine-tuned model (the best checkpoint's weights when load_best_model_at_end), and
        #     against the untrained model on the same examples, with paired intervals.
        final = final_rouge(cfg, evaluator, trainer)
        distributed.barrier()  # rank 0 wrote the predictions compare_with_base reads
        comparison = compare_with_base(cfg, evaluator, output_dir, evaluator.last_pass if evaluator else None) \
            if base else None
        # 11. Save the final model atomically, with what reproduces it.
        metrics = run_metrics(s, base, final, train_out)
        metrics.final_vs_base = comparison or None
        if distributed.is_main():  # one final model, whatever the number of ranks
            with training_errors(cfg, model_dir):
                save_final(cfg, trainer.model, s.tokenizer, model_dir, metrics, s.model_info, s.t_start)
        if s.trackers is not None:
            s.trackers.finish(model_dir, metrics)  # final scores, the adapter artifact (tracking.log_model)
    # 12. report.md + plots in output.dir (curves from the log history, ROUGE base vs fine-tuned, lengths).
    report = write_training_report(cfg, output_dir, metrics, list(trainer.state.log_history)) \
        if cfg.output.report and distributed.is_main() else None
    distributed.barrier()  # nobody reads the final model before it is complete
    return RunResult(output_dir, model_dir, metrics, resume_from, list(trainer.state.log_history), report)


def finished_checkpoint(cfg: Config, resume_from: Optional[Path]) -> bool:
    """The checkpoint is the last step of the planned run (the process died after it, before the final save).
    transformers, asked to resume from it, trains one step more than planned; so it is not asked."""
    if resume_from is None:
        return False
    state = json.loads((Path(resume_from) / "trainer_state.json").read_text())
    planned = cfg.train.max_steps if cfg.train.max_steps > 0 else state.get("max_steps") or 0
    return planned > 0 and state["global_step"] >= planned


def restore_finished(trainer, resume_from: Path) -> TrainOutput:
    """The final weights and state of a finished run from its last checkpoint, without training."""
    log.info("%s is the last step of this run: loading it instead of training further", resume_from)
    trainer._load_from_checkpoint(str(resume_from))
    trainer.state = TrainerState.load_from_json(str(Path(resume_from) / "trainer_state.json"))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    train_loss = sum(losses) / len(losses) if losses else float("nan")  # the logged losses' mean
    return TrainOutput(trainer.state.global_step, train_loss, {"train_runtime": 0.0, "restored_from": str(resume_from)})


def run_metrics(s: Session, base: Optional[dict], final: Optional[dict], train_out) -> RunMetrics:
    """metrics.json of the final model: ROUGE before and after, the training numbers, data, protocol."""
    trainer, evaluator = s.trainer, s.evaluator
    train = TrainFigures(
        global_step=trainer.state.global_step, train_loss=train_out.training_loss,
        train_runtime_s=train_out.metrics.get("train_runtime"), best_checkpoint=trainer.state.best_model_checkpoint,
        best_metric=trainer.state.best_metric,
        rouge_callback_s=round(evaluator.total_seconds, 2) if evaluator else None,
        rouge_callback_share=_share(evaluator, train_out),
        resumed_from=str(s.resume_from) if s.resume_from else None, world_size=trainer.args.world_size,
        startup=s.startup.report() if s.startup is not None else None, **speed_and_memory(trainer, train_out))
    reporter = next((c for c in trainer.callback_handler.callbacks if isinstance(c, TrialReporter)), None)
    return RunMetrics(
        base=base, final=final, train=train, data=s.prepared.report(), eval_protocol=eval_protocol(s.cfg, evaluator),
        # what the data teaches: the references' own statistics on the same examples
        references=evaluator.reference_means if evaluator is not None else None,
        tune={"trial": reporter.number, "pruned_at_step": reporter.pruned_at} if reporter is not None else None,
        # W&B run id and URL (online), sync command (offline), ...
        tracking=(s.trackers.info() or None) if s.trackers is not None else None)


def speed_and_memory(trainer, train_out) -> dict:
    """Training tokens/s of this process (TRL's count of attention-mask tokens over the training wall time,
    evaluations inside it included) and its peak memory (CUDA allocations on a GPU, the process's RSS on a CPU)."""
    runtime = train_out.metrics.get("train_runtime")
    tokens = getattr(trainer, "_total_train_tokens", None)  # TRL's counter, this process's steps only
    if torch.cuda.is_available():
        peak, what = torch.cuda.max_memory_allocated() / 1024 ** 3, "CUDA memory allocated"
    else:
        peak, what = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, "process RSS"
    return {"train_tokens": int(tokens) if tokens else None,
            "train_tokens_per_s": round(tokens / runtime, 1) if tokens and runtime else None,
            "peak_memory_gib": round(peak, 3), "peak_memory_of": what}


def _share(evaluator, train_out) -> Optional[float]:
    """The ROUGE callback's share of the training wall time (its generations run inside train())."""
    runtime = train_out.metrics.get("train_runtime")
    if evaluator is None or not runtime:
        return None
    inside = evaluator.total_seconds - evaluator.seconds_outside_training
    return round(max(0.0, inside) / runtime, 4)


def base_rouge(cfg, evaluator, model, output_dir: Path, resume_from) -> Optional[dict]:
    path = output_dir / BASE_METRICS_FILE
    if resume_from is not None and path.exists():
        return json.loads(path.read_text())
    if evaluator is None or not cfg.eval.base_eval:
        return None
    log.info("scoring the untrained model on %d validation examples (ROUGE on generated summaries)",
             len(evaluator.documents))
    base = rouge_block(evaluator.run(model, step=0, tag="base"))
    if distributed.is_main():
        write_json(path, base)
    log.info("base model: %s", format_rouge(base))
    return base


def final_rouge(cfg, evaluator, trainer) -> Optional[dict]:
    if evaluator is None:
        return None
    last = next((h for h in reversed(trainer.state.log_history) if eval_name("rougeL") in h), None)
    if last is not None and last.get("step") == trainer.state.global_step and not cfg.train.load_best_model_at_end:
        return rouge_block({plain_name(k): v for k, v in last.items()})
    return rouge_block(evaluator.run(trainer.model, step=trainer.state.global_step, tag="final"))


def save_final(cfg: Config, model, tokenizer, model_dir: Path, metrics: RunMetrics, model_info: dict, t_start: float):
    with atomic_directory(model_dir, owner="model") as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / CONFIG_FILE).write_text(config_to_yaml(cfg), encoding="utf-8")
        write_json(tmp / METRICS_FILE, metrics.to_dict())
        write_json(tmp / RUN_INFO_FILE, {
            "seed": cfg.train.seed, "split_seed": cfg.data.split_seed, "model": model_info,
            "versions": package_versions(), "git_commit": git_commit(),
            "wall_time_s": round(time.time() - t_start, 1),
        })
        write_model_card(tmp / MODEL_CARD, cfg, metrics, model_info)


def format_rouge(block: Optional[dict]) -> str:
    if not block:
        return "n/a"
    return " ".join(f"{k}={block[k]:.4f}" for k in ROUGE_KEYS if k in block)


def summary_lines(result: RunResult) -> list[str]:
    """The end-of-run summary the train command prints."""
    m = result.metrics
    lines = ["", "== llm_summarizer: training finished",
             f"   steps:           {m.train.global_step} (train loss {m.train.train_loss:.4f})",
             f"   ROUGE base:      {format_rouge(m.base)}",
             f"   ROUGE final:     {format_rouge(m.final)}",
             f"   fine-tuned model: {result.model_dir}/  (adapter, tokenizer, config.yaml, metrics.json, README.md)",
             f"   checkpoints+logs: {result.output_dir}/  (checkpoint-*, eval_predictions/, rouge_samples.jsonl)"]
    if result.report is not None:
        lines.append(f"   report:          {result.report}  (plots in {result.report.parent / 'plots'}/)")
    if result.wall_s is not None:
        train_s = m.train.train_runtime_s
        lines.append(f"   wall time:       {_minutes(result.wall_s)}"
                     + (f" (training {_minutes(train_s)}, evaluations inside it included)" if train_s else ""))
    t = m.train
    st = t.startup or {}
    if st.get("to_first_step_s") is not None:
        parts = ", ".join(f"{STARTUP_NAMES[k]} {v:.1f}" for k, v in st.items() if k in STARTUP_NAMES)
        lines.append(f"   start-up:        {st['to_first_step_s']:.1f} s to the first optimizer step ({parts})")
    if t.peak_memory_gib is not None:
        speed = f"{t.train_tokens_per_s:.0f} training tokens/s, " if t.train_tokens_per_s else ""
        lines.append(f"   speed, memory:   {speed}peak {t.peak_memory_gib:.2f} GiB ({t.peak_memory_of})")
    cmp = m.final_vs_base
    if cmp:
        lines += ["", f"== fine-tuned minus base on the same {cmp['examples']} validation examples "
                      f"(ROUGE F1 x 100, paired bootstrap 95% interval)"]
        for k, d in cmp["model_minus_base"].items():
            lo, hi = d["ci95"]
            verdict = "better" if lo > 0 else "worse" if hi < 0 else "no clear difference"
            lines.append(f"   {k:<10} {100 * m.base[k]:6.2f} -> {100 * m.final[k]:6.2f}   "
                         f"{100 * d['diff']:+6.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]  {verdict}")
    lines += diagnostics_lines(m)
    if cmp:
        for i, ex in enumerate(cmp["side_by_side"], 1):
            lines += ["", f"== example {i} (validation id {ex['id']})",
                      f"   document:   {_one_line(ex['document'], 300)}",
                      f"   reference:  {_one_line(ex['reference'])}",
                      f"   base:       {_one_line(ex['base'])}",
                      f"   fine-tuned: {_one_line(ex['fine_tuned'])}"]
    return lines


def diagnostics_lines(m: RunMetrics) -> list[str]:
    """Beside ROUGE: the summaries against their documents (base, fine-tuned, the references), with the paired
    change and, in words, what a reader should check."""
    blocks = {"references": m.references, "base": m.base, "fine-tuned": m.final}
    if not any(k in (b or {}) for b in blocks.values() for k in diagnostics.DIAGNOSTIC_KEYS):
        return []
    cmp = m.final_vs_base or {}
    n = m.examples
    out = ["", "== beyond ROUGE: each summary against its document (" + (f"{n} validation examples, " if n else "")
           + "mean per summary; fine-tuned - base with paired bootstrap 95% interval)"]
    out += diagnostics.lines(blocks, cmp.get("diagnostics_model_minus_base"), "fine-tuned - base")
    out += [f"   warning: {w}" for w in diagnostics.warnings(m.final, m.base, m.references)]
    return out


STARTUP_NAMES = {"imports_s": "imports", "data_read_s": "reading data", "model_load_s": "model load",
                 "tokenize_and_trainer_s": "tokenizing + trainer", "base_rouge_s": "base ROUGE",
                 "first_step_s": "first step"}


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(round(seconds % 60)):02d}s"


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
