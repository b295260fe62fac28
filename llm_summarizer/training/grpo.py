"""The GRPO stage (rl.method=grpo): TRL's GRPOTrainer on the summary reward (training/rewards.py), in the same run
as SFT (run.py): the same data pipeline and prompts, checkpoints, resume, evaluation of generated validation
summaries, trackers, metrics.json, report and model card.

`grpo_config` is the one place our config maps onto `GRPOConfig`; `SummaryGRPOTrainer` adds to GRPOTrainer what
`SummarizationTrainer` adds to SFTTrainer (crash-consistent checkpoints, the non-finite guard) and:
- the prompts are our formatter's token ids (the prompt template of SFT, the document cut to fit), not a second
  tokenization of a text;
- evaluation is the summary evaluator (ROUGE + diagnostics on greedy validation summaries, as in SFT), not TRL's
  eval loss (which samples num_generations completions per validation prompt);
- on a machine without CUDA the completion log-probabilities come from the logits: TRL's fused LM-head log-prob
  is a Triton kernel that cannot run there (as for SFT's loss);
- each reward component's share of the total and the completions' reward parts are logged;
- a completion cut at the budget keeps its place in the loss with the cut penalty (mask_truncated_completions is
  off: rewards.py says why).

Unsloth patches GRPOTrainer on a CUDA GPU (its fast generation and memory-efficient GRPO loss): when the unsloth
backend was imported there, `trl.GRPOTrainer` is Unsloth's. Without CUDA, Unsloth leaves TRL's class as it is and
this is plain TRL + PEFT: the log says which.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Optional

import datasets
import torch
from trl import GRPOConfig, GRPOTrainer

from ..config import Config
from ..errors import UserError
from ..evaluation import diagnostics
from ..evaluation.scoring import protocol_for
from ..layout import GRPO_COMPLETIONS_FILE
from ..models.device import names_only_plan, training_plan
from ..models.generation import derive_max_new_tokens
from ..stats import percentile
from .rewards import SummaryReward
from .trainer import RELIED_ON, RunTrainer, check_extra_args, check_metric, ddp_kwargs, eval_loss_rows, sft_kwargs

log = logging.getLogger("llm_summarizer.grpo")

COLUMNS = ["prompt", "document", "summary", "id"]
# SFTConfig settings of sft_kwargs that GRPO has no use for (its completions are generated, not given)
SFT_ONLY = {"max_length", "completion_only_loss", "packing", "packing_strategy", "padding_free"}
COMPLETION_SAMPLES = 4  # completions (with their reward parts) written to grpo_completions.jsonl per logging step


def completion_budget(cfg: Config, summary_token_lengths: list[int]) -> int:
    """rl.max_completion_length, checked against the training references' token lengths; else the evaluation's
    budget rule (1.5 x p95 + 8)."""
    n = cfg.rl.max_completion_length
    if n is None:
        return derive_max_new_tokens(summary_token_lengths, cfg.eval)
    if summary_token_lengths:
        median = percentile(summary_token_lengths, 0.5)
        p95 = percentile(summary_token_lengths, 0.95)
        if n < median:
            raise UserError(
                f"rl.max_completion_length={n}: half of the training references are longer ({median:.0f} tokens "
                f"at the median, {p95:.0f} at p95): every completion that says as much would be cut and penalized. "
                f"Raise it (e.g. {int(p95 * 1.5) + 8}) or leave it unset (the references' p95 x 1.5 + 8)"
            )
        if n < p95:
            log.warning(
                "rl.max_completion_length=%d is below the training references' p95 (%.0f tokens): long summaries "
                "will be cut and get the cut penalty",
                n,
                p95,
            )
    return n


def grpo_rows(split, formatter, max_completion_length: int) -> tuple[datasets.Dataset, dict[str, list[int]]]:
    """The rows GRPOTrainer samples (prompt text for its logs, document and reference for the reward) and the
    prompt token ids by prompt text: SFT's prompt template, the document cut so prompt + completion fit."""
    ids_by_text: dict[str, list[int]] = {}
    prompts = []
    for doc in split["document"]:
        ids, _ = formatter.generation_prompt(doc, max_completion_length)
        text = formatter.tok.decode(ids)
        ids_by_text[text] = ids
        prompts.append(text)
    rows = {"prompt": prompts, "document": list(split["document"]), "summary": list(split["summary"])}
    rows["id"] = [str(i) for i in split["id"]]
    return datasets.Dataset.from_dict(rows), ids_by_text


def grpo_kwargs(
    cfg: Config, plan, output_dir: Path, has_validation: bool, report_to: list[str], max_completion_length: int, weights
) -> dict:
    """GRPOConfig's arguments: the training settings SFT reads (sft_kwargs, the device plan) and rl.*."""
    fields = {f.name for f in dataclasses.fields(GRPOConfig) if f.init}
    base = {k: v for k, v in sft_kwargs(cfg, plan, output_dir, has_validation, report_to).items() if k not in SFT_ONLY}
    rl = cfg.rl
    kwargs = dict(
        base,
        per_device_eval_batch_size=rl.num_generations,  # TRL checks it; our evaluation uses eval.batch_size
        num_generations=rl.num_generations,
        max_completion_length=max_completion_length,
        temperature=rl.temperature,
        top_p=rl.top_p,
        beta=rl.beta,
        epsilon=rl.epsilon,
        loss_type=rl.loss_type,
        scale_rewards=rl.scale_rewards,
        steps_per_generation=rl.steps_per_generation,
        reward_weights=list(weights),
        mask_truncated_completions=False,  # cut completions are penalized, not dropped (rewards.py)
        log_completions=False,  # TRL's table goes to W&B/parquet only; ours is grpo_completions.jsonl
        use_vllm=False,
    )
    return {k: v for k, v in kwargs.items() if k in fields}


def managed_grpo_args(cfg: Config) -> frozenset:
    """The GRPOConfig fields train.extra_args may not set (as trainer.managed_args for SFTConfig)."""
    keys = set(grpo_kwargs(cfg, names_only_plan(cfg), Path("."), True, [], 1, [1.0]))
    return frozenset(keys | set(ddp_kwargs(cfg, ranks=True)) | RELIED_ON)


def check_grpo_extra_args(cfg: Config, managed: Optional[set] = None) -> dict:
    """train.extra_args of a GRPO run, checked against GRPOConfig's fields (as SFT's against SFTConfig's)."""
    return check_extra_args(cfg, managed_grpo_args(cfg) if managed is None else managed, GRPOConfig)


def grpo_config(
    cfg: Config, output_dir: Path, has_validation: bool, report_to: list[str], max_completion_length: int, weights
) -> GRPOConfig:
    """GRPOConfig from the config; train.extra_args may set GRPOConfig's other fields (e.g. generation_batch_size,
    use_transformers_paged)."""
    kwargs = grpo_kwargs(cfg, training_plan(cfg), output_dir, has_validation, report_to, max_completion_length, weights)
    extra = check_grpo_extra_args(cfg, managed_grpo_args(cfg) | set(kwargs))
    try:
        args = GRPOConfig(**kwargs, **extra)
    except (TypeError, ValueError) as e:
        if not extra:
            raise
        raise UserError(f"train.extra_args {extra}: TRL's GRPOConfig refused them: {e}") from None
    # the round check of Config._check_grpo, for a round set through extra_args (generation_batch_size)
    per_round, accum = args.steps_per_generation, cfg.train.gradient_accumulation_steps
    if per_round % accum or (cfg.train.save_strategy == "steps" and cfg.train.save_steps % (per_round // accum)):
        raise UserError(
            f"train.extra_args {extra}: a generation round of {per_round} micro-batches must be a whole number of "
            f"optimizer steps (train.gradient_accumulation_steps={accum}) dividing train.save_steps="
            f"{cfg.train.save_steps}, so that every checkpoint resumes to the same completions"
        )
    return args


def trainer_kind() -> str:
    """Which GRPOTrainer this process has: Unsloth's patched one or TRL's own."""
    if "unsloth" in f"{GRPOTrainer.__module__} {GRPOTrainer.__name__}".lower():
        return "Unsloth's GRPOTrainer"
    return "TRL's GRPOTrainer (plain TRL + PEFT: Unsloth patches GRPO on CUDA GPUs only)"


class SummaryGRPOTrainer(RunTrainer, GRPOTrainer):
    """GRPOTrainer + our prompts, our evaluation, our checkpoints (the module docstring)."""

    def __init__(
        self,
        *args,
        prompt_ids: dict[str, list[int]],
        stop_ids: list[int],
        rouge_evaluator=None,
        logps_from_logits: bool = False,
        completions_file: Optional[Path] = None,
        reward: Optional[SummaryReward] = None,
        **kwargs,
    ):
        self.step_losses = []
        super().__init__(*args, **kwargs)
        self.prompt_id_map = prompt_ids
        self.rouge_evaluator = rouge_evaluator
        self.logps_from_logits = logps_from_logits
        self.completions_file = completions_file
        self.reward = reward
        self.completion_listeners: list = []  # fn(step, rows): the trackers' completions table
        self.generation_seconds = 0.0  # this process's sampling of completions (its share of the training time)
        # our end-of-turn ids end a completion too (TRL knows the model's eos ids), in generation and in its masks
        self.eos_token_ids = list(dict.fromkeys([*self.eos_token_ids, *stop_ids]))
        self.generation_config.eos_token_id = self.eos_token_ids
        if getattr(self, "generation_kwargs", None) is not None:
            self.generation_kwargs["eos_token_id"] = self.eos_token_ids
        self._watch_guards()

    def is_cut(self, ids) -> bool:
        """A completion that reached the budget without an end of turn."""
        ids = list(ids)
        return len(ids) >= self.max_completion_length and (not ids or ids[-1] not in self.eos_token_ids)

    def _generate_single_turn(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return super()._generate_single_turn(*args, **kwargs)
        finally:
            self.generation_seconds += time.perf_counter() - t0

    def create_model_card(self, *args, **kwargs):
        # the run's own model card is written with the final model (evaluation/modelcard.py); TRL's would land in
        # the checkpoint staging directory
        return None

    def _tokenize_prompts(self, prompts: list):
        try:
            return [list(self.prompt_id_map[p]) for p in prompts], None, {}
        except KeyError:
            return super()._tokenize_prompts(prompts)

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **kwargs,
    ):
        if not self.logps_from_logits:
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size=batch_size,
                compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss,
                **kwargs,
            )
        # the same quantities as TRL's fused head: log p(token) of each completion token at self.temperature, and
        # the entropy of that distribution, from the model's logits
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
            with self.accelerator.autocast():
                out = model(input_ids=ids, attention_mask=mask, logits_to_keep=logits_to_keep + 1, use_cache=False)
            logits = out.logits[:, :-1, :].float() / self.temperature
            lp = torch.log_softmax(logits, dim=-1)
            logps.append(lp.gather(-1, ids[:, -logits_to_keep:].unsqueeze(-1)).squeeze(-1))
            if compute_entropy:
                entropies.append(-(lp.exp() * lp).sum(-1))
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._write_completions(inputs, completions, completion_ids_list, rewards)
        return rewards

    def _write_completions(self, inputs, completions, completion_ids_list, rewards) -> None:
        """A few completions of each logging step with every reward part, for reading what the reward rewards."""
        step = self.state.global_step + 1  # the optimizer step these completions train
        if self.completions_file is None or not self.accelerator.is_main_process:
            return
        if step != 1 and step % self.args.logging_steps:
            return
        names, weights = list(self.reward_func_names), self.reward_weights.tolist()
        rows = []
        for i in range(min(COMPLETION_SAMPLES, len(completions))):
            parts = {n: float(rewards[i, j]) for j, n in enumerate(names)}
            rows.append(
                {
                    "step": step,
                    "id": inputs[i].get("id"),
                    "completion": completions[i],
                    "tokens": len(completion_ids_list[i]),
                    "cut": self.is_cut(completion_ids_list[i]),
                    "reward": sum(w * parts[n] for n, w in zip(names, weights)),
                    "rewards": parts,
                }
            )
        with open(self.completions_file, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        for fn in self.completion_listeners:
            fn(step, rows)

    def log(self, logs: dict, start_time=None) -> None:
        # each component's share of the reward: |weight x mean| over the sum of them (what drives the advantage)
        mode = "train" if self.model.training else "eval"
        means = {}
        for name, w in zip(self.reward_func_names, self.reward_weights.tolist()):
            vals = self._metrics[mode].get(f"rewards/{name}/mean") or []
            vals = [v for v in vals if v == v]
            if vals:
                means[name] = abs(w * sum(vals) / len(vals))
        total = sum(means.values())
        if total > 0:
            for name, v in means.items():
                logs[f"rewards/{name}/share"] = round(v / total, 4)
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """The summary evaluation (ROUGE + diagnostics of greedy validation summaries), as SFT's evaluation loop adds
        it; TRL's GRPO eval loss is not computed (it samples num_generations completions per prompt)."""
        if self.rouge_evaluator is None:
            return {}
        m = self.rouge_evaluator.run(self.model, step=self.state.global_step)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in m.items()}
        self.log(dict(metrics))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def reference_density(prepared, tokenizer_name: str) -> Optional[float]:
    """The training references' mean extractive density against their documents (what the copy guard allows)."""
    train = prepared.splits["train"]
    refs, docs = list(train["summary"]), list(train["document"])
    tok = protocol_for(refs, tokenizer_name).tokenizer
    return diagnostics.means(diagnostics.corpus(refs, docs, tokenizer=tok)).get("density")


def build_grpo_trainer(
    cfg: Config, model, tokenizer, prepared, output_dir: Path, callbacks: list, report_to: list[str], rouge_evaluator
) -> SummaryGRPOTrainer:
    has_val = "validation" in prepared.splits and len(prepared.splits["validation"]) > 0
    check_metric(cfg, has_val)
    train = prepared.splits["train"]
    budget = completion_budget(cfg, list(prepared.stats["train"].completion_tokens))
    rows, prompt_ids = grpo_rows(train, prepared.formatter, budget)
    protocol = protocol_for(list(train["summary"]), cfg.eval.rouge_tokenizer, cfg.eval.rouge_lsum_split)
    density = reference_density(prepared, cfg.eval.rouge_tokenizer)
    reward = SummaryReward(cfg.rl, protocol, density)
    holder: list = []
    funcs, weights = reward.functions(lambda ids: holder[0].is_cut(ids))
    args = grpo_config(cfg, output_dir, has_val, report_to, budget, weights)
    eval_rows = None
    if has_val:
        eval_rows, more_ids = grpo_rows(eval_loss_rows(cfg, prepared.splits["validation"]), prepared.formatter, budget)
        prompt_ids.update(more_ids)
    log.info(
        "GRPO: %s; %d completions per prompt, budget %d tokens; reward %s; copy guard above density %.2f "
        "(training references %.2f x rl.copy_slack %.2f)",
        trainer_kind(),
        cfg.rl.num_generations,
        budget,
        " + ".join(f"{w:g} x {f.__name__}" for f, w in zip(funcs, weights)),
        reward.allowed_density,
        density or float("nan"),
        cfg.rl.copy_slack,
    )
    if cfg.rl.beta > 0 and (Path(str(cfg.model.name)).expanduser() / "adapter_config.json").is_file():
        log.warning(
            "rl.beta=%g: TRL measures the KL against the model with the LoRA adapter switched off, which is the base "
            "model, not the SFT adapter this run continues; rl.beta=0 (the default) has no reference model",
            cfg.rl.beta,
        )
    trainer = SummaryGRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        callbacks=callbacks,
        prompt_ids=prompt_ids,
        stop_ids=list(prepared.formatter.stop_ids),
        rouge_evaluator=rouge_evaluator,
        logps_from_logits=not torch.cuda.is_available(),
        completions_file=output_dir / GRPO_COMPLETIONS_FILE,
        reward=reward,
    )
    holder.append(trainer)
    return trainer


def stage_record(cfg: Config, trainer: SummaryGRPOTrainer, model_info: dict, train_runtime_s) -> dict:
    """metrics.json's `stage` of a GRPO run: the method, where it started, the trainer, the reward, the cost (steps
    per minute of this process's training time, evaluations inside it included; sampling's share of it)."""
    reward = trainer.reward
    steps = trainer.state.global_step
    cost = {}
    if train_runtime_s:
        cost = {
            "steps_per_minute": round(60 * steps / train_runtime_s, 3) if steps else None,
            "generation_s": round(trainer.generation_seconds, 1),
            "generation_share": round(trainer.generation_seconds / train_runtime_s, 4),
        }
    return {
        "method": "grpo",
        "started_from": model_info.get("started_from") or cfg.model.name,
        "started_from_kind": model_info.get("started_from_kind", "base model"),
        "trainer": trainer_kind(),
        "num_generations": cfg.rl.num_generations,
        "max_completion_length": trainer.max_completion_length,
        "temperature": cfg.rl.temperature,
        "beta": cfg.rl.beta,
        "loss_type": cfg.rl.loss_type,
        **cost,
        "reward": {
            "components": dict(zip(trainer.reward_func_names, trainer.reward_weights.tolist())),
            "similarity_metric": cfg.rl.similarity_metric,
            "length_band": list(cfg.rl.length_band),
            "reference_density": reward.reference_density if reward else None,
            "allowed_density": reward.allowed_density if reward else None,
        },
    }
