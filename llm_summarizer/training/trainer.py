"""TRL's SFTTrainer as this project uses it: `sft_config` is the one place our config maps onto `SFTConfig`,
and `SummarizationTrainer` adds ROUGE on generated summaries to the evaluation loop, crash-consistent
checkpoints, and a length-grouped order that a resumed run reproduces.

The dataset handed to the trainer is already tokenized (`input_ids` + `completion_mask` from
llm_summarizer.data), so TRL's collator puts -100 on the prompt and padding and the loss covers the
summary tokens (and EOS) only. On the unsloth backend `SFTTrainer` here is Unsloth's patched one: the
command layer imports unsloth before this module is imported.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import typing
from pathlib import Path
from typing import Optional

import datasets
import torch
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices
from trl import SFTConfig, SFTTrainer

from .. import distributed, progress
from ..config import Config
from ..data.tokenize import token_lengths
from ..errors import UserError
from ..metrics import eval_name, is_summary_metric
from ..models.device import TrainingPlan, names_only_plan, training_plan
from .checkpoints import fix_state_paths, publish_checkpoint, staging_root
from .stopping import NonFiniteGuard
from .summary_eval import pick_subset

log = logging.getLogger("llm_summarizer.trainer")


TRAIN_COLUMNS = ["input_ids", "completion_mask"]


def greater_is_better(cfg: Config) -> bool:
    return cfg.greater_is_better(cfg.train.metric_for_best_model)


def check_metric(cfg: Config, has_validation: bool) -> None:
    metric = cfg.train.metric_for_best_model
    names = ([metric] if cfg.train.load_best_model_at_end else []) + [e.metric for e in cfg.train.early_stopping]
    for name in names:
        if is_summary_metric(name) and not cfg.eval.generate:
            raise UserError(
                f"{name} is a metric of generated summaries but eval.generate=false; enable eval.generate or use "
                "eval_loss"
            )
    if (cfg.train.load_best_model_at_end or cfg.train.early_stopping) and not has_validation:
        raise UserError(
            "train.load_best_model_at_end / train.early_stopping need a validation split "
            "(data.validation or data.validation_size > 0)"
        )


def check_extra_args(cfg: Config, managed: Optional[set] = None, target=SFTConfig) -> dict:
    """train.extra_args, each key checked against the fields of the stage's TRL config (`target`: SFTConfig, or
    GRPOConfig through grpo.check_grpo_extra_args) before anything is loaded; `managed`: the fields this project
    sets itself (default: SFT's)."""
    extra = dict(cfg.train.extra_args)
    if not extra:
        return extra
    managed = managed_args(cfg) if managed is None else managed
    name = target.__name__
    types = {f.name: f.type for f in dataclasses.fields(target) if f.init}
    fields = set(types)
    for key in extra:
        if "token" in key.lower() and key not in fields - {"hub_token"}:
            raise UserError(
                f"train.extra_args.{key}: tokens are read from the environment (HF_TOKEN, "
                f"WANDB_API_KEY) or --env-file, never from a config that is saved beside the model"
            )
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=3)
            raise UserError(
                f"train.extra_args.{key}: not a field of TRL's {name}"
                + (f"; did you mean {', '.join(close)}?" if close else "")
            )
        if key in managed:
            raise UserError(
                f"train.extra_args.{key}: llm_summarizer sets this {name} field itself (from its "
                f"config keys, e.g. train.*, eval.* and rl.*); set it there, not in extra_args"
            )
        wanted = _plain_types(types[key])
        value = extra[key]
        if wanted and not any(_fits(value, t) for t in wanted):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in wanted)
            raise UserError(f"train.extra_args.{key}: {value!r} is {type(value).__name__}; {name} expects {names}")
    return extra


_PLAIN = (bool, int, float, str, dict, list, type(None))


def _plain_types(annotation) -> tuple:
    """The plain types an SFTConfig field accepts, or () when its annotation is not only plain types."""
    args = typing.get_args(annotation) or (annotation,)
    args = tuple(typing.get_origin(a) or a for a in args)
    return args if all(a in _PLAIN for a in args) else ()


def _fits(value, t) -> bool:
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, t)


def sft_config(cfg: Config, plan: TrainingPlan, output_dir: Path, has_validation: bool, report_to: list[str]):
    kwargs = sft_kwargs(cfg, plan, output_dir, has_validation, report_to)
    extra = check_extra_args(cfg, managed_args(cfg) | set(kwargs))
    try:
        return SFTConfig(**kwargs, **extra)
    except (TypeError, ValueError) as e:
        if not extra:
            raise
        raise UserError(f"train.extra_args {extra}: TRL's SFTConfig refused them: {e}") from None


def sft_kwargs(
    cfg: Config,
    plan: TrainingPlan,
    output_dir: Path,
    has_validation: bool,
    report_to: list[str],
) -> dict:
    """SFTConfig's arguments from the config and the device plan (precision and optimizer as they will run)."""
    t = cfg.train
    eval_strategy = t.eval_strategy if has_validation else "no"
    metric = t.metric_for_best_model
    return dict(
        output_dir=str(output_dir),
        run_name=cfg.output.run_name,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.eval.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=plan.optim,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps,
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,
        load_best_model_at_end=t.load_best_model_at_end and has_validation,
        # Only when it picks the best checkpoint: transformers looks the metric up at every save otherwise.
        metric_for_best_model=eval_name(metric) if t.load_best_model_at_end and has_validation else None,
        greater_is_better=greater_is_better(cfg),
        bf16=plan.bf16,
        fp16=plan.fp16,
        report_to=report_to,
        # data.prepare already cut every example to max_seq_length; TRL refuses padding_free with a
        # max_length it cannot enforce, and uses max_length as the row size when packing.
        max_length=None if t.padding_free and not t.packing else cfg.model.max_seq_length,
        completion_only_loss=True,
        packing=t.packing,
        packing_strategy="bfd",
        padding_free=t.padding_free,
        train_sampling_strategy=t.sampling,
        dataloader_num_workers=t.dataloader_num_workers,
        restore_callback_states_from_checkpoint=True,
        disable_tqdm=not progress.enabled(),  # transformers' bar (a table in notebooks) where someone watches
        **ddp_kwargs(cfg),
    )


def ddp_kwargs(cfg: Config, ranks: Optional[bool] = None) -> dict:
    """Several ranks: on CPUs transformers distributes only with use_cpu (else every rank trains on all the data,
    silently); plain LoRA leaves no parameter unused (so no extra traversal per step); the collective timeout.
    `ranks` overrides the question "is this process one of several?"."""
    if not (distributed.distributed() if ranks is None else ranks):
        return {}
    return {
        "use_cpu": not torch.cuda.is_available(),
        "ddp_find_unused_parameters": False,
        "ddp_timeout": cfg.scale.timeout_s,
    }


# SFTConfig fields this project relies on without setting them in sft_kwargs: the resume point is passed to
# train(), the hub push is ours (hub.py), the dataset columns and the loss mask are what data/tokenize.py builds,
# the save format and gradient checkpointing come from the backend, length grouping is our sampler's, and
# train.warmup_ratio reaches SFTConfig through warmup_steps.
RELIED_ON = frozenset(
    {
        "warmup_ratio",
        "resume_from_checkpoint",
        "push_to_hub",
        "hub_model_id",
        "hub_token",
        "dataset_text_field",
        "assistant_only_loss",
        "save_safetensors",
        "gradient_checkpointing",
        "group_by_length",
    }
)


def managed_args(cfg: Config) -> frozenset:
    """The SFTConfig fields train.extra_args may not set: every one sft_kwargs sets (read from sft_kwargs itself,
    single-process and distributed) and those in RELIED_ON."""
    keys = set(sft_kwargs(cfg, names_only_plan(cfg), Path("."), True, []))
    return frozenset(keys | set(ddp_kwargs(cfg, ranks=True)) | RELIED_ON)


class EpochSeededLengthGroupedSampler(Sampler):
    """transformers' length-grouped order, drawn from a generator seeded with (seed, epoch).

    transformers' own LengthGroupedSampler draws each epoch's order from the global torch RNG at the
    moment the epoch starts; a run resumed in a later epoch has another RNG state there and trains on
    other batches than the run would have. Seeding per epoch makes the order a function of (seed, epoch)
    alone, so a resumed run sees exactly the batches of an uninterrupted one.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))


class RunTrainer:
    """What every trainer of a run adds to TRL's (SFT's and GRPO's alike): crash-consistent checkpoints, the losses
    NonFiniteGuard reads, optimizer state kept in CPU memory on CPU ranks. Mixed in before the TRL class."""

    step_losses: list  # the losses since the last optimizer step, for NonFiniteGuard (no sync here)

    def _watch_guards(self) -> None:
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, NonFiniteGuard):
                cb.watch(self)

    def _load_callback_state(self):
        # A resumed run's callbacks are made anew from their saved state: the guard is told again where to look.
        super()._load_callback_state()
        self._watch_guards()

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        self.step_losses.append(loss.detach())
        return loss

    def _save_checkpoint(self, model, trial):
        # Crash-consistent checkpoints: write into a hidden staging directory, flush it, then rename
        # it to checkpoint-N, so the resume scan never sees a half-written one; older checkpoints
        # are rotated only after the new one is complete.
        run_dir = self._get_output_dir(trial=trial)
        staging = staging_root(run_dir)
        final_args_dir, limit = self.args.output_dir, self.args.save_total_limit
        self.args.output_dir, self.args.save_total_limit = str(staging), None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir, self.args.save_total_limit = final_args_dir, limit
        # Several ranks: each wrote its part (rank 0 the weights, every rank its rng_state_<rank>.pth); rank 0
        # publishes only when all are done, and nobody goes on before the checkpoint is in place.
        distributed.barrier()
        fix_state_paths(self, staging, Path(run_dir))
        if distributed.is_main():
            publish_checkpoint(self, staging, Path(run_dir))
        distributed.barrier()

    def _load_optimizer_and_scheduler(self, checkpoint):
        # Several CPU ranks: transformers maps the optimizer state onto args.device, which is "cpu:<rank>" there
        # and which torch.load cannot restore to; the state belongs in CPU memory anyway.
        if (
            checkpoint is None
            or torch.cuda.is_available()
            or self.args.world_size <= 1
            or self.is_fsdp_enabled
            or self.is_deepspeed_enabled
        ):
            return super()._load_optimizer_and_scheduler(checkpoint)
        opt, sched = Path(checkpoint) / "optimizer.pt", Path(checkpoint) / "scheduler.pt"
        if opt.is_file() and sched.is_file():
            self.optimizer.load_state_dict(torch.load(opt, map_location="cpu", weights_only=True))
            self.lr_scheduler.load_state_dict(torch.load(sched, weights_only=True))


class SummarizationTrainer(RunTrainer, SFTTrainer):
    """SFTTrainer (Unsloth's patched one on the unsloth backend) + ROUGE in the eval loop.

    `rouge_evaluator`: the ROUGE pass run at every evaluation (None: loss only). `loss_from_logits`: TRL's fused
    LM-head loss is a Triton kernel that cannot run without a GPU; on the CPU the transformers backend computes the
    same token-mean cross-entropy from the logits."""

    def __init__(self, *args, rouge_evaluator=None, loss_from_logits: bool = False, **kwargs):
        self.step_losses = []
        super().__init__(*args, **kwargs)
        self.rouge_evaluator = rouge_evaluator
        self.loss_from_logits = loss_from_logits
        self._watch_guards()

    def _get_train_sampler(self, train_dataset=None):
        # group_by_length: transformers' grouping with an order seeded per epoch (EpochSeededLengthGroupedSampler),
        # the lengths read from Arrow (transformers reads every row to get them).
        ds = self.train_dataset if train_dataset is None else train_dataset
        if (
            self.args.train_sampling_strategy != "group_by_length"
            or not isinstance(ds, datasets.Dataset)
            or "input_ids" not in ds.column_names
        ):
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return EpochSeededLengthGroupedSampler(
            token_lengths(ds), self.args.train_batch_size * self.args.gradient_accumulation_steps, seed
        )

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        out = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.rouge_evaluator is not None and metric_key_prefix == "eval":
            m = self.rouge_evaluator.run(self.model, step=self.state.global_step)
            out.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in m.items()})
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.loss_from_logits:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        labels = inputs.pop("labels")
        inputs["use_cache"] = False
        outputs = model(**inputs)
        logits = outputs.logits[:, :-1, :].float()
        target = labels[:, 1:].to(logits.device)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum"
        )
        n = num_items_in_batch if num_items_in_batch is not None else (target != -100).sum()
        loss = loss / torch.as_tensor(n, device=loss.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss


def eval_loss_rows(cfg: Config, validation):
    """The validation rows eval_loss is computed on: ROUGE's seeded subset (eval.loss_rows=summary_subset, the
    default), so an evaluation does not run the loss over a split the user asked to score only in part."""
    if not cfg.eval.generate or cfg.eval.loss_rows == "all" or cfg.eval.num_samples >= len(validation):
        return validation
    return validation.select(pick_subset(len(validation), cfg.eval.num_samples, cfg.eval.sample_seed))


def build_trainer(
    cfg: Config,
    model,
    tokenizer,
    prepared,
    output_dir: Path,
    callbacks: list,
    report_to: list[str],
    rouge_evaluator=None,
) -> SummarizationTrainer:
    has_val = "validation" in prepared.splits and len(prepared.splits["validation"]) > 0
    check_metric(cfg, has_val)
    args = sft_config(cfg, training_plan(cfg), output_dir, has_val, report_to)
    train_ds = prepared.splits["train"].select_columns(TRAIN_COLUMNS)
    eval_ds = eval_loss_rows(cfg, prepared.splits["validation"]).select_columns(TRAIN_COLUMNS) if has_val else None
    return SummarizationTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
        rouge_evaluator=rouge_evaluator,
        loss_from_logits=cfg.model.backend == "transformers" and not torch.cuda.is_available(),
    )
