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
from ..config import Config, is_local_path
from ..config_loading import config_to_yaml
from ..contracts import RunMetrics, TrainFigures
from ..data.lengths import length_line, prepared_report
from ..data.rows import load_raw_splits
from ..data.tokenize import prepare
from ..environment import git_commit, package_versions
from ..errors import UserError
from ..evaluation.modelcard import write_model_card
from ..files import atomic_directory, recover_interrupted_replace, write_json, write_text
from ..hub import push_after_training
from ..layout import BASE_METRICS_FILE, CONFIG_FILE, DATA_CACHE_DIR, METRICS_FILE, MODEL_CARD, RUN_INFO_FILE
from ..metrics import PRIMARY, eval_name, format_scores, plain_name
from ..models.device import training_plan
from ..models.loading import load_for_training
from ..paths import Place, check_places, claim
from ..tracking.trackers import Trackers, check_installed, start_trackers
from .checkpoints import check_adapter_shape, check_world_size, clean_staging, resolve_resume
from .grpo import build_grpo_trainer, check_grpo_extra_args
from .grpo import stage_record as grpo_stage
from .guards import RunLock, training_errors
from .report import write_training_report
from .stopping import NonFiniteGuard, early_stopping_callback
from .summary_eval import (
    SummaryEvalCallback,
    SummaryEvaluator,
    compare_with_base,
    eval_block,
    eval_protocol,
    truncate_samples,
)
from .trainer import build_trainer, check_extra_args
from .trial import TrialReporter

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
    evaluator: Optional[SummaryEvaluator]
    trainer: object
    t_start: float
    trackers: Optional[Trackers] = None  # W&B / TensorBoard / MLflow runs
    resume_from: Optional[Path] = None
    startup: Optional["Startup"] = None
    reporter: Optional[TrialReporter] = None  # this run is a tune trial


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


def run(
    cfg: Config,
    extra_callbacks: Optional[list] = None,
    take_lock: bool = True,
    reporter: Optional[TrialReporter] = None,
) -> RunResult:
    """The whole training story, one named step per call. Raises UserError on bad input. `take_lock=False`: the
    launching process (the Ray driver) holds the run lock for all ranks. `reporter`: this run is a trial of
    `llm-summarizer tune` (the train command of a trial process passes it)."""
    t_start = time.time()
    startup = Startup(t_start)
    with opened_run(cfg, take_lock) as resume_from:
        set_seed(cfg.train.seed)  # once; the data split has its own seed (data.split_seed)
        raw = load_raw_splits(cfg)
        startup.mark("data_read")
        model, tokenizer, model_info = load_model(cfg, raw)
        startup.mark("model_load")
        session = build_session(
            cfg, model, tokenizer, model_info, raw, [*(extra_callbacks or []), startup], t_start, resume_from, reporter
        )
        session.startup = startup
        startup.mark("tokenize_and_trainer")
        result = train_and_save(session)
    publish(cfg, result)
    result.wall_s = round(time.time() - t_start, 1)
    return result


@contextlib.contextmanager
def opened_run(cfg: Config, take_lock: bool = True):
    """What every training run does before it reads anything (run() and TrainerClass alike): join the ranks (several
    under torchrun, before anything waits), check and claim the places it writes, hold the run lock (one run per
    directory; rank 0 holds it for all ranks), map out-of-memory and a full disk to one message, clear what a killed
    run left half-done. Yields the checkpoint to resume from (None: start afresh)."""
    distributed.init(cfg.scale.timeout_s)
    output_dir = check_output_paths(cfg)
    lock = RunLock(output_dir) if distributed.is_main() and take_lock else contextlib.nullcontext()
    with lock, training_errors(cfg, output_dir):
        yield prepare_output(cfg)


def load_model(cfg: Config, raw: dict):
    """Base model + tokenizer + LoRA; a model built or converted into the cache is made by rank 0 first."""
    with distributed.main_first():
        return load_for_training(cfg, raw)


def publish(cfg: Config, result: RunResult) -> None:
    """The hub (output.push_to_hub), after everything is saved, so that a failed push loses nothing; after the last
    barrier, so that the other ranks do not wait for the upload."""
    if distributed.is_main():
        push_after_training(cfg, result.model_dir)


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
    return [
        Place("output.dir", cfg.output_dir, "run"),
        Place("output.model_dir", cfg.model_dir, "model", replaced=True),
        Place("model.cache_dir", Path(cfg.model.cache_dir), "cache"),
    ]


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
    (check_grpo_extra_args if cfg.rl.method == "grpo" else check_extra_args)(cfg)  # before anything heavy loads
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


def build_session(
    cfg: Config,
    model,
    tokenizer,
    model_info: dict,
    raw: dict,
    extra_callbacks=None,
    t_start: Optional[float] = None,
    resume_from: Optional[Path] = None,
    reporter: Optional[TrialReporter] = None,
) -> Session:
    """The one session builder (run(), TrainerClass, the bench and each Ray worker through run()): token ids, the
    ROUGE evaluator and the callbacks, the trainer, the trackers."""
    prepared = tokenized(cfg, tokenizer, raw)
    evaluator = rouge_evaluator(cfg, tokenizer, prepared)
    callbacks = [SummaryEvalCallback(evaluator, cfg.eval.every_steps)] if evaluator is not None else []
    if cfg.rl.method == "grpo" and (cfg.train.early_stopping or cfg.train.load_best_model_at_end) and evaluator is None:
        raise UserError(
            "rl.method=grpo stops early / keeps the best model on the summary evaluation: enable eval.generate"
        )
    callbacks += early_stopping(cfg)
    callbacks += list(extra_callbacks or [])
    callbacks += [reporter] if reporter is not None else []
    advice = training_plan(cfg, probe_optim=False).nonfinite_advice()
    callbacks.append(NonFiniteGuard(cfg.train.on_nonfinite, cfg.train.max_nonfinite_skips, advice))  # last: final grads
    if cfg.rl.method == "grpo":
        trainer = build_grpo_trainer(
            cfg, model, tokenizer, prepared, cfg.output_dir, callbacks, report_to=["none"], rouge_evaluator=evaluator
        )
    else:
        trainer = build_trainer(
            cfg, model, tokenizer, prepared, cfg.output_dir, callbacks, report_to=["none"], rouge_evaluator=evaluator
        )
    trackers = attach_trackers(cfg, trainer, evaluator, resume_from)
    return Session(
        cfg,
        model,
        tokenizer,
        model_info,
        prepared,
        evaluator,
        trainer,
        t_start or time.time(),
        trackers,
        resume_from,
        reporter=reporter,
    )


def tokenized(cfg: Config, tokenizer, raw: dict):
    """Prompt/completion token ids under the token budget (the cache: rank 0 writes it, the others read it), and the
    token lengths against the budget in one log line (`llm-summarizer data` shows more)."""
    with distributed.main_first():
        prepared = prepare(cfg, tokenizer, raw, cache_dir=cfg.output_dir / DATA_CACHE_DIR)
    if distributed.is_main():
        log.info(
            length_line("train", prepared_report(prepared.formatter, prepared.splits["train"], prepared.stats["train"]))
        )
    return prepared


def rouge_evaluator(cfg: Config, tokenizer, prepared) -> Optional[SummaryEvaluator]:
    """The evaluation of generated validation summaries, when eval.generate and there is a validation split."""
    if not (cfg.eval.generate and "validation" in prepared.splits and len(prepared.splits["validation"])):
        return None
    return SummaryEvaluator(
        cfg,
        tokenizer,
        prepared.formatter,
        prepared.splits["validation"],
        prepared.stats["train"].completion_tokens,
        out_dir=cfg.output_dir,
    )


def early_stopping(cfg: Config) -> list:
    return [
        early_stopping_callback(
            es.metric, es.patience, es.min_delta, cfg.greater_is_better(es.metric, es.greater_is_better)
        )
        for es in cfg.train.early_stopping
    ]


def attach_trackers(cfg: Config, trainer, evaluator, resume_from: Optional[Path]) -> Trackers:
    """The trackers of tracking.report_to on the trainer's logs and the ROUGE passes (a resumed run continues the
    same tracker runs)."""
    trackers = start_trackers(cfg, resume_from)
    if trackers.active:
        trainer.add_callback(trackers.callback())
        if evaluator is not None:
            evaluator.listeners.append(trackers.on_summary_eval)
        if hasattr(trainer, "completion_listeners"):  # GRPO: the sampled completions with their reward parts
            trainer.completion_listeners.append(trackers.on_completions)
    return trackers


def train_and_save(s: Session) -> RunResult:
    """ROUGE of the untrained model, training (resuming), ROUGE of the fine-tuned model against it, the atomic save
    and the trackers' final scores, then report.md + plots in output.dir."""
    cfg, trainer = s.cfg, s.trainer
    # the tracker runs end as failed when anything below raises
    with s.trackers if s.trackers is not None else contextlib.nullcontext():
        base = base_eval(cfg, s.evaluator, s.model, cfg.output_dir, s.resume_from)
        if s.startup is not None:
            s.startup.mark("base_eval")
        train_out = train(s)
        metrics = score_and_save(s, base, train_out)
    report = (
        write_training_report(cfg, cfg.output_dir, metrics, list(trainer.state.log_history))
        if cfg.output.report and distributed.is_main()
        else None
    )
    distributed.barrier()  # nobody reads the final model before it is complete
    return RunResult(cfg.output_dir, cfg.model_dir, metrics, s.resume_from, list(trainer.state.log_history), report)


def train(s: Session) -> TrainOutput:
    """Train, resuming from s.resume_from. The resolved config is written only now that data and model loaded."""
    cfg, resume_from = s.cfg, s.resume_from
    if distributed.is_main():
        write_text(cfg.output_dir / CONFIG_FILE, config_to_yaml(cfg))
        if resume_from is not None:
            truncate_samples(cfg.output_dir, resume_from)
    with training_errors(cfg, cfg.output_dir, resume_from):
        if finished_checkpoint(cfg, resume_from):
            return restore_finished(s.trainer, resume_from)
        return s.trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)


def score_and_save(s: Session, base: Optional[dict], train_out: TrainOutput) -> RunMetrics:
    """ROUGE of the fine-tuned model (the best checkpoint's weights when load_best_model_at_end), against the
    untrained model on the same examples with paired intervals; the final model saved atomically with what
    reproduces it (rank 0: one final model, whatever the number of ranks); the trackers' final scores and artifact."""
    cfg, evaluator = s.cfg, s.evaluator
    final = final_rouge(cfg, evaluator, s.trainer)
    distributed.barrier()  # rank 0 wrote the predictions compare_with_base reads
    comparison = (
        compare_with_base(cfg, evaluator, cfg.output_dir, evaluator.last_pass if evaluator else None) if base else None
    )
    metrics = run_metrics(s, base, final, train_out)
    metrics.final_vs_base = comparison or None
    if distributed.is_main():
        with training_errors(cfg, cfg.model_dir):
            save_final(cfg, s.trainer.model, s.tokenizer, cfg.model_dir, metrics, s.model_info, s.t_start)
    if s.trackers is not None:
        s.trackers.finish(cfg.model_dir, metrics)
    return metrics


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
        global_step=trainer.state.global_step,
        train_loss=train_out.training_loss,
        train_runtime_s=train_out.metrics.get("train_runtime"),
        best_checkpoint=trainer.state.best_model_checkpoint,
        best_metric=trainer.state.best_metric,
        summary_eval_s=round(evaluator.total_seconds, 2) if evaluator else None,
        summary_eval_share=_share(evaluator, train_out),
        resumed_from=str(s.resume_from) if s.resume_from else None,
        world_size=trainer.args.world_size,
        startup=s.startup.report() if s.startup is not None else None,
        **speed_and_memory(trainer, train_out),
    )
    reporter = s.reporter
    return RunMetrics(
        base=base,
        final=final,
        train=train,
        data=s.prepared.report(),
        eval_protocol=eval_protocol(s.cfg, evaluator),
        # what the data teaches: the references' own statistics on the same examples
        references=evaluator.reference_means if evaluator is not None else None,
        tune={"trial": reporter.number, "pruned_at_step": reporter.pruned_at} if reporter is not None else None,
        # W&B run id and URL (online), sync command (offline), ...
        tracking=(s.trackers.info() or None) if s.trackers is not None else None,
        stage=stage_record(s, train_out),
    )


def stage_record(s: Session, train_out) -> dict:
    """Which training stage made the model (sft or grpo) and from which model; a GRPO run's reward and cost."""
    if s.cfg.rl.method != "grpo":
        info = s.model_info
        return {"method": "sft", **({"started_from": info["started_from"]} if info.get("started_from") else {})}
    return grpo_stage(s.cfg, s.trainer, s.model_info, train_out.metrics.get("train_runtime"))


def speed_and_memory(trainer, train_out) -> dict:
    """Training tokens/s of this process (TRL's count of attention-mask tokens over the training wall time,
    evaluations inside it included) and its peak memory (CUDA allocations on a GPU, the process's RSS on a CPU)."""
    runtime = train_out.metrics.get("train_runtime")
    tokens = getattr(trainer, "_total_train_tokens", None)  # TRL's counter, this process's steps only
    if torch.cuda.is_available():
        peak, what = torch.cuda.max_memory_allocated() / 1024**3, "CUDA memory allocated"
    else:
        peak, what = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, "process RSS"
    return {
        "train_tokens": int(tokens) if tokens else None,
        "train_tokens_per_s": round(tokens / runtime, 1) if tokens and runtime else None,
        "peak_memory_gib": round(peak, 3),
        "peak_memory_of": what,
    }


def _share(evaluator, train_out) -> Optional[float]:
    """The ROUGE callback's share of the training wall time (its generations run inside train())."""
    runtime = train_out.metrics.get("train_runtime")
    if evaluator is None or not runtime:
        return None
    inside = evaluator.total_seconds - evaluator.seconds_outside_training
    return round(max(0.0, inside) / runtime, 4)


def base_eval(cfg, evaluator, model, output_dir: Path, resume_from) -> Optional[dict]:
    path = output_dir / BASE_METRICS_FILE
    if resume_from is not None and path.exists():
        return json.loads(path.read_text())
    if evaluator is None or not cfg.eval.base_eval:
        return None
    log.info(
        "scoring the untrained model on %d validation examples (ROUGE on generated summaries)", len(evaluator.documents)
    )
    base = eval_block(evaluator.run(model, step=0, tag="base"))
    if distributed.is_main():
        write_json(path, base)
    log.info("base model: %s", format_scores(base))
    return base


def final_rouge(cfg, evaluator, trainer) -> Optional[dict]:
    if evaluator is None:
        return None
    last = next((h for h in reversed(trainer.state.log_history) if eval_name(PRIMARY) in h), None)
    if last is not None and last.get("step") == trainer.state.global_step and not cfg.train.load_best_model_at_end:
        return eval_block({plain_name(k): v for k, v in last.items()})
    return eval_block(evaluator.run(trainer.model, step=trainer.state.global_step, tag="final"))


def save_final(cfg: Config, model, tokenizer, model_dir: Path, metrics: RunMetrics, model_info: dict, t_start: float):
    with atomic_directory(model_dir, owner="model") as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / CONFIG_FILE).write_text(config_to_yaml(cfg), encoding="utf-8")
        write_json(tmp / METRICS_FILE, metrics.to_dict())
        write_json(
            tmp / RUN_INFO_FILE,
            {
                "seed": cfg.train.seed,
                "split_seed": cfg.data.split_seed,
                "model": model_info,
                "versions": package_versions(),
                "git_commit": git_commit(),
                "wall_time_s": round(time.time() - t_start, 1),
            },
        )
        write_model_card(tmp / MODEL_CARD, cfg, metrics, model_info)
