"""The one typed configuration: the schema (its sections, defaults and checks).

Reading it (YAML files, the shipped configs, dotted overrides, error messages) is `config_loading.py`.
No ML imports here: `--help`, `--print-config` and every config error answer without torch.
Defaults live in this schema only; the rest of the code reads `cfg.section.key`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import string
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .layout import FINE_TUNED_DIR, MODEL_CACHE_DIR, OUTPUTS_DIR
from .metrics import KEYS, PRIMARY, eval_name, family, higher_is_better, is_summary_metric, plain_name

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".md", ".gguf", ".yaml", ".yml")


def is_local_path(name: str) -> bool:
    """The one rule for "is this a local path or a hub id": a path when it starts with . / ~, exists, ends
    in a file suffix we read, or cannot be a hub id (namespace/name); a hub id otherwise."""
    name = str(name)
    return (
        name.startswith((".", "/", "~"))
        or os.path.exists(os.path.expanduser(name))
        or name.lower().endswith(_LOCAL_SUFFIXES)
        or not _HUB_ID.fullmatch(name)
    )


log = logging.getLogger("llm_summarizer.config")
INT64 = 2**63  # integers outside [-INT64, INT64) overflow torch, numpy and the trainer's state


class _Section(BaseModel):
    # infinite and NaN floats are refused everywhere (a learning rate of .inf reached step 2 before they were)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    # settings renamed in this release, read under their old name (and old value) with a warning until the next
    section: ClassVar[str] = ""
    renamed: ClassVar[dict[str, str]] = {}  # old key -> new key
    renamed_values: ClassVar[dict[str, dict]] = {}  # key -> {old value: new value}

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data):
        if not isinstance(data, dict) or not (cls.renamed or cls.renamed_values):
            return data
        data = dict(data)
        for old, new in cls.renamed.items():
            if old not in data:
                continue
            if new in data:
                raise ValueError(
                    f"{cls.section}.{old} and {cls.section}.{new} are one setting ({old} is its old name); keep "
                    f"only {cls.section}.{new}"
                )
            data[new] = data.pop(old)
            log.warning(
                "%s.%s is now %s.%s (the old name is read until the next release): rename it in your config",
                cls.section,
                old,
                cls.section,
                new,
            )
        for key, values in cls.renamed_values.items():
            v = data.get(key)
            if isinstance(v, str) and v in values:
                data[key] = values[v]
                log.warning(
                    "%s.%s: %r is now %r (the old value is read until the next release)", cls.section, key, v, values[v]
                )
        return data

    @field_validator("*", mode="after")
    @classmethod
    def _in_range(cls, v):
        if isinstance(v, int) and not isinstance(v, bool) and not -INT64 <= v < INT64:
            raise ValueError(f"{v} is out of range (a 64-bit integer)")
        if isinstance(v, str) and "\x00" in v:
            raise ValueError("holds a NUL character, which no path or setting can; remove it")
        return v


Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="a seed: 0 to 2**32-1 (what numpy and torch accept)")]


ALL_LINEAR = "all-linear"
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT_FIELDS = ("document", "instruction")  # what data.prompt_template may name


class ModelSection(_Section):
    name: str = Field(
        "unsloth/Qwen2.5-0.5B-Instruct-bnb-4bit",
        description="Hub id, local model directory, a .gguf file (converted once into model.cache_dir), a named "
        "model fetched from the package registry (smollm2-135m-instruct), or 'random:<shape>' for a random-init "
        "model built locally (shapes: tiny, llama-1b, qwen-1.5b, llama-8b).",
    )
    backend: Literal["unsloth", "transformers"] = "unsloth"
    max_seq_length: int = Field(2048, ge=16)
    load_in_4bit: bool = True
    load_in_8bit: bool = False
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    gradient_checkpointing: Union[Literal["unsloth"], bool] = "unsloth"
    attn_implementation: Optional[str] = Field(
        None, description="transformers backend only: sdpa, eager, flex_attention; None = library default"
    )
    trust_remote_code: bool = False
    revision: Optional[str] = None
    cache_dir: str = Field(
        MODEL_CACHE_DIR,
        description="where models made here are cached: random:<shape> builds, GGUF files converted "
        "to model directories, and the package registry's models (model.name: smollm2-135m-instruct)",
    )

    @model_validator(mode="after")
    def _one_quantization(self):
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are both true; pick one (or neither for 16-bit)")
        return self


class LoraSection(_Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: Union[list[str], str] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        description="list of module names, a regex string, or 'all-linear'",
    )
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    use_dora: bool = False
    loftq: bool = Field(False, description="initialise LoRA with LoftQ (needs a 16-bit load)")
    loftq_bits: Literal[2, 4, 8] = 4
    loftq_iter: int = Field(1, ge=1)

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("target_modules is empty; give module names, a regex, or 'all-linear'")
        if isinstance(v, str) and v != ALL_LINEAR:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"target_modules is not a valid regex: {e}") from None
        return v


class SourceSpec(_Section):
    """A data source: local file/directory (`path`) or a hub dataset (`name`)."""

    path: Optional[str] = None
    name: Optional[str] = None
    config: Optional[str] = None
    split: Optional[str] = None
    streaming: bool = False
    limit: Optional[int] = Field(None, ge=1, description="use only the first N rows")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.path is None) == (self.name is None):
            raise ValueError("give exactly one of 'path' (local file or directory) or 'name' (hub dataset)")
        return self


def _coerce_source(v):
    # A bare string is a local path when it looks like one, else a hub dataset name.
    if v is None or isinstance(v, (dict, SourceSpec)):
        return v
    if isinstance(v, str):
        return {"path": v} if is_local_path(v) else {"name": v}
    return v


class DataSection(_Section):
    train: Optional[SourceSpec] = None
    validation: Optional[SourceSpec] = None
    test: Optional[SourceSpec] = None
    validation_size: Union[int, float] = Field(
        0.05, description="rows (int) or fraction (float) carved out of train when no validation source"
    )
    test_size: Union[int, float] = Field(0, description="as validation_size, for the test split")
    split_seed: Seed = 42
    document_column: Optional[str] = None
    summary_column: Optional[str] = None
    id_column: Optional[str] = None
    instruction: str = "Summarize the following text."
    prompt_template: str = Field(
        "{instruction}\n\n{document}",
        description="user-turn text; must contain {document}; {instruction} is optional",
    )
    template: str = Field(
        "auto",
        description="'auto' (the tokenizer's chat template if it has one, else plain), 'plain', "
        "or a chat template name known to Unsloth's get_chat_template (chatml, llama-3, qwen-2.5, ...)",
    )
    plain_response_prefix: str = Field("\n\nSummary:\n", description="plain template: text between prompt and summary")
    truncation: Literal["head", "head_tail", "drop"] = "head"
    on_bad_rows: Literal["drop", "error"] = "drop"
    num_proc: Optional[int] = Field(None, ge=1, description="tokenization processes; None = one per core, at most 8")
    cache: bool = True

    _coerce = field_validator("train", "validation", "test", mode="before")(_coerce_source)

    @field_validator("prompt_template")
    @classmethod
    def _has_document(cls, v):
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(v) if f is not None]
        except ValueError as e:  # a lone '{' or '}'
            raise ValueError(
                f"prompt_template is not a valid template ({e}); write a literal brace as '{{{{' or '}}}}'"
            ) from None
        unknown = sorted({f for f in fields if f not in PROMPT_FIELDS})
        if unknown:
            raise ValueError(
                f"prompt_template has unknown field(s) {', '.join('{' + f + '}' for f in unknown)}; it "
                f"may use {{document}} and {{instruction}} (a literal brace is written '{{{{' or '}}}}')"
            )
        if "document" not in fields:
            raise ValueError("prompt_template must contain '{document}'")
        return v

    @field_validator("validation_size", "test_size")
    @classmethod
    def _size(cls, v):
        if isinstance(v, float) and not 0.0 <= v < 1.0:
            raise ValueError("a fractional size must be in [0, 1)")
        if isinstance(v, int) and v < 0:
            raise ValueError("a row count must be >= 0")
        return v


class EarlyStopSpec(_Section):
    metric: str = Field("eval_rougeL", description="any logged eval metric, e.g. eval_rougeL or eval_loss")
    patience: int = Field(3, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0)
    greater_is_better: Optional[bool] = Field(
        None,
        description="None = train.greater_is_better when the metric is train.metric_for_best_model, "
        "else inferred from the name (a *loss is lower-is-better)",
    )


class TrainSection(_Section):
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides num_train_epochs")
    per_device_train_batch_size: int = Field(2, ge=1)
    gradient_accumulation_steps: int = Field(4, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler_type: Literal[
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
        "reduce_lr_on_plateau",
        "cosine_with_min_lr",
        "warmup_stable_decay",
    ] = "linear"
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    warmup_steps: int = Field(0, ge=0, description="> 0 overrides warmup_ratio")
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    optim: str = Field("adamw_8bit", description="any transformers optimizer name; adamw_8bit needs bitsandbytes + GPU")
    logging_steps: int = Field(10, ge=1)
    eval_strategy: Literal["no", "steps", "epoch"] = "steps"
    eval_steps: int = Field(100, ge=1)
    save_strategy: Literal["no", "steps", "epoch", "best"] = "steps"
    save_steps: int = Field(100, ge=1)
    save_total_limit: Optional[int] = Field(3, ge=1)
    seed: Seed = 3407
    load_best_model_at_end: bool = False
    metric_for_best_model: str = eval_name(PRIMARY)
    greater_is_better: Optional[bool] = Field(None, description="None = inferred from the metric name")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU"
    )
    resume: str = Field("auto", description="'auto' (newest complete checkpoint), 'never', or a checkpoint path")
    verify_checkpoints: bool = Field(
        True,
        description="resume only from checkpoints whose files match the manifest this project wrote into "
        "them (sizes and sha256); false also accepts checkpoints without one",
    )
    dataloader_num_workers: int = Field(0, ge=0)
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        description="more SFTConfig / TrainingArguments fields by name, for what this schema "
        "does not name (e.g. {adam_beta2: 0.95, neftune_noise_alpha: 5}); each key must be an SFTConfig field that "
        "this project does not set itself; tokens never go here (use the environment)",
    )
    # Speed switches: defaults are what the benchmark measured (BENCHMARKS.md, python -m llm_summarizer.bench).
    padding_free: bool = Field(
        False,
        description="concatenate each batch's examples into one row, no padding; position_ids restart per "
        "example so attention stays inside it. The Unsloth CPU backend turns it off (trainer.args shows it)",
    )
    packing: bool = Field(
        False,
        description="pack examples into rows of model.max_seq_length tokens (best-fit, TRL 'bfd'), padding-free "
        "inside each row: a fixed token budget per row instead of a fixed number of examples",
    )
    sampling: Literal["random", "group_by_length"] = Field(
        "group_by_length",
        description="training order: group_by_length (shuffled, then batches of similar length: "
        "less padding, 1.05-1.7x the non-padding tokens/s measured) or random",
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a NaN/inf loss or gradient: stop (keeping the last checkpoint) or skip the step"
    )
    max_nonfinite_skips: int = Field(10, ge=0, description="with on_nonfinite=skip: stop after this many skips")
    early_stopping: list[EarlyStopSpec] = Field(
        default_factory=list, description="e.g. [{metric: eval_rougeL, patience: 3, min_delta: 0.005}]"
    )

    @field_validator("eval_strategy", "save_strategy", mode="before")
    @classmethod
    def _yaml_no(cls, v):
        # YAML reads a bare `no` as false; the strategy is meant.
        return "no" if v is False else v

    @field_validator("optim")
    @classmethod
    def _optim(cls, v):
        from_transformers = {
            "adamw_torch",
            "adamw_torch_fused",
            "adamw_8bit",
            "adamw_bnb_8bit",
            "paged_adamw_8bit",
            "paged_adamw_32bit",
            "adafactor",
            "sgd",
            "adagrad",
            "lion_8bit",
            "paged_lion_8bit",
            "lion_32bit",
            "rmsprop",
            "adamw_anyprecision",
        }
        if v not in from_transformers:
            raise ValueError(f"unknown optimizer {v!r}; one of: {', '.join(sorted(from_transformers))}")
        return v

    @field_validator("extra_args")
    @classmethod
    def _finite(cls, v):
        def walk(x, where):
            if isinstance(x, float) and not math.isfinite(x):
                raise ValueError(f"extra_args.{where} is {x}; give a finite number")
            if isinstance(x, dict):
                for k, y in x.items():
                    walk(y, f"{where}.{k}")
            elif isinstance(x, list):
                for i, y in enumerate(x):
                    walk(y, f"{where}[{i}]")

        for k, x in v.items():
            walk(x, k)
        return v

    @field_validator("resume")
    @classmethod
    def _resume(cls, v):
        if not v:
            raise ValueError("resume must be 'auto', 'never' or a checkpoint path")
        return v


class EvalSection(_Section):
    section: ClassVar[str] = "eval"
    renamed: ClassVar[dict[str, str]] = {"rouge": "generate"}
    renamed_values: ClassVar[dict[str, dict]] = {"loss_rows": {"rouge_subset": "summary_subset"}}

    generate: bool = Field(
        True,
        description="generate summaries of the validation split at each evaluation and score them (every metric of "
        "generated summaries, the statistics against the documents); was eval.rouge",
    )
    base_eval: bool = Field(True, description="score the untrained model once before training ('base' in metrics.json)")
    num_samples: int = Field(
        64, ge=1, description="validation rows generated at each evaluation (fixed, seeded subset)"
    )
    batch_size: int = Field(8, ge=1, description="generation batch size (separate from training)")
    max_new_tokens: Optional[int] = Field(None, ge=1, description="None = derived from reference summary lengths")
    num_beams: int = Field(1, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    sample_seed: Seed = 1234
    every_steps: Optional[int] = Field(None, ge=1, description="ROUGE every N steps; None = every train.eval_steps")
    log_samples: int = Field(8, ge=0, description="examples written to rouge_samples.jsonl at each evaluation")
    loss_rows: Literal["summary_subset", "all"] = Field(
        "summary_subset",
        description="eval_loss over the same eval.num_samples validation rows as the generated summaries "
        "(summary_subset; was rouge_subset), or over the whole validation split (all); without eval.generate it is "
        "always the whole split",
    )
    bootstrap_samples: int = Field(
        1000, ge=100, description="evaluate: bootstrap resamples for the 95% confidence intervals"
    )
    bootstrap_seed: Seed = Field(
        1234, description="evaluate: seed of the bootstrap resampling (paired with --compare-base)"
    )
    rouge_tokenizer: Literal["auto", "default", "unicode", "chars"] = Field(
        "auto",
        description="ROUGE tokens: default = rouge-score's (ASCII only, as published English results), unicode = "
        "words of any script, chars = one token per CJK/Thai character; auto = default when under 0.5% of the "
        "references' letters are "
        "non-ASCII, chars when a third of their letters are CJK/Thai, else unicode",
    )
    rouge_lsum_split: Literal["regex", "punkt", "newline"] = Field(
        "regex",
        description="ROUGE-Lsum sentence split: regex (sentence punctuation, not after abbreviations or "
        "initials; the same everywhere), punkt (nltk's trained model; needs its data installed), newline",
    )
    batching: Literal["auto", "continuous", "static"] = Field(
        "auto",
        description="generation batches: continuous (a row that ends leaves the batch at once and the "
        "next prompt takes its place; greedy decoding only, the same texts), static (each batch runs until its "
        "longest summary ends; what sampling and beam search always use), or auto: continuous, except with "
        "Unsloth's CUDA decoder (static until a GPU run verifies it); the log says which ran and why",
    )
    cpu_threads: Union[Literal["auto"], Annotated[int, Field(ge=1)]] = Field(
        "auto",
        description="torch threads while generating on a CPU: auto = torch's threads, fewer while other processes "
        "keep cores busy (one per core they leave free, at least 1: torch's threads wait for each other at every "
        "operation, and a thread sharing its core with another process stalls them all; measured 1.9x faster on a "
        "busy 2-core machine), or a number of threads (at least 1). Training's threads are not changed",
    )
    long_documents: Literal["chunk", "truncate"] = Field(
        "chunk",
        description="evaluate, summarize, serve and the Python API, for a document over the token budget: "
        "chunk (summarize windows cut at line and sentence ends, then summarize the joined summaries, in rounds, "
        "until one fits) or truncate (cut it by data.truncation, as training does). The ROUGE pass during training "
        "always truncates, like training",
    )
    chunk_tokens: Optional[int] = Field(
        None,
        ge=16,
        description="chunk: document tokens per window; None = what fits the window the model reads (see "
        "eval.max_window_tokens) beside the prompt and max_new_tokens",
    )
    max_window_tokens: int = Field(
        1024,
        ge=64,
        description="chunk, without eval.chunk_tokens: the longest window (prompt + document + summary tokens): "
        "the model's context (its config's max_position_embeddings), capped by this and, on a GPU, by what its free "
        "memory holds for eval.batch_size rows; never below model.max_seq_length. 1024: on QMSum with SmolLM2-135M, "
        "2048-token windows read slower per token and ran into max_new_tokens more often (BENCHMARKS.md, Long "
        "documents)",
    )
    chunk_strategy: Literal["map_reduce", "refine"] = Field(
        "map_reduce",
        description="chunk: map_reduce (every window summarized, then the joined summaries merged in rounds, as "
        "LangChain's map-reduce chain) or refine (the first window summarized, then each next window updates the "
        "running summary, as LangChain's refine chain; one generation per window, in order)",
    )
    dedup_sentences: bool = Field(
        True,
        description="chunk: drop a sentence that repeats an earlier one (the same words, or 80% of its words "
        "in one earlier sentence) from the joined summaries before a merge and from each merged summary",
    )
    chunk_overlap: int = Field(
        32,
        ge=0,
        description="chunk: tokens at the end of a window that the next window repeats (whole lines or "
        "sentences, at most this many)",
    )
    max_chunks: int = Field(
        256,
        ge=1,
        description="chunk: the most windows one document may need; a longer document is refused with "
        "a message (each window is one generation)",
    )
    merge_instruction: Optional[str] = Field(
        None,
        description="chunk: the instruction of the merge rounds' prompt (the joined summaries are its document); "
        "None = one of its own that says the text is partial summaries of one document, in order, to combine "
        "(models/chunked.py MERGE_INSTRUCTION); the string 'data.instruction' = the prompt the model was trained with",
    )
    refine_instruction: Optional[str] = Field(
        None,
        description="chunk_strategy=refine: the instruction of each update's prompt (its document is the summary "
        "so far and the next part); None = models/chunked.py REFINE_INSTRUCTION",
    )
    max_merge_rounds: int = Field(
        4,
        ge=1,
        description="chunk: rounds of summarizing the joined summaries; a round that cannot shorten them, or "
        "the last round, summarizes them cut to one window (data.truncation) and the output says so",
    )


class OutputSection(_Section):
    run_name: str = "summarizer"
    dir: Optional[str] = Field(None, description="checkpoints and logs; default outputs/<run_name>")
    model_dir: Optional[str] = Field(None, description="final model; default fine_tuned/<run_name>")
    report: bool = Field(True, description="write report.md and PNG plots into output.dir after training")
    push_to_hub: bool = Field(
        False,
        description="push the final model dir (adapter + card) to the hub after training; "
        "the token comes from HF_TOKEN in the environment",
    )
    hub_model_id: Optional[str] = Field(None, description="hub repository 'namespace/name' for push_to_hub")
    hub_private: bool = Field(True, description="create the hub repository as private")

    @field_validator("hub_model_id")
    @classmethod
    def _hub_id(cls, v):
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError("hub_model_id must look like 'namespace/name' (letters, digits, '.', '_', '-')")
        return v

    @model_validator(mode="after")
    def _hub_needs_id(self):
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("output.push_to_hub=true needs output.hub_model_id (e.g. your-name/my-summarizer)")
        return self

    @field_validator("run_name")
    @classmethod
    def _name(cls, v):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError("run_name may use letters, digits, '.', '_' and '-' and must start with a letter or digit")
        return v


class TrackingSection(_Section):
    report_to: list[Literal["wandb", "tensorboard", "mlflow", "none"]] = Field(
        default_factory=lambda: ["none"], description="any of wandb, tensorboard, mlflow (several at once), or none"
    )
    project: str = Field("llm_summarizer", description="W&B project and MLflow experiment name")
    entity: Optional[str] = Field(None, description="W&B team or user; None = the account's default entity")
    run_name: Optional[str] = Field(None, description="name on the dashboards; None = output.run_name")
    tags: list[str] = Field(default_factory=list, description="W&B tags (MLflow tags with empty values)")
    group: Optional[str] = Field(None, description="W&B group (e.g. one sweep or one dataset)")
    notes: Optional[str] = Field(None, description="W&B notes / MLflow run description")
    log_model: bool = Field(False, description="upload the final adapter directory as a W&B artifact (type model)")
    wandb_mode: Literal["auto", "online", "offline"] = Field(
        "auto",
        description="auto: WANDB_MODE when set, else online when there is an API key and the W&B server "
        "answers, else offline (upload later with the printed `wandb sync` command)",
    )
    mlflow_tracking_uri: Optional[str] = Field(
        None,
        description="sqlite:///path/mlflow.db, a folder (MLflow's file store) or a server URL; "
        "None = MLFLOW_TRACKING_URI, else sqlite:///<output.dir>/mlflow.db",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _listify(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("tags", mode="before")
    @classmethod
    def _tag_list(cls, v):
        return [v] if isinstance(v, str) else v


class ScaleSection(_Section):
    """Several ranks: torchrun / accelerate launch of the train command, or a Ray cluster (engine: ray)."""

    engine: Literal["none", "ray"] = Field(
        "none",
        description="ray: the train command becomes a Ray Train driver "
        "(TorchTrainer) running scale.num_workers training workers",
    )
    num_workers: int = Field(1, ge=1, description="Ray training workers (one per GPU on GPUs)")
    use_gpu: Optional[bool] = Field(None, description="Ray workers on GPUs; None = when the driver sees a CUDA GPU")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="Ray resources per worker, e.g. {CPU: 4, GPU: 1}"
    )
    address: Optional[str] = Field(
        None,
        description="the Ray cluster: None = start a local one, auto = the running "
        "one, ray://host:10001 = a remote head",
    )
    max_failures: int = Field(
        0,
        ge=-1,
        description="worker-group restarts after a worker dies (-1: no limit); each "
        "restart resumes from the newest complete checkpoint",
    )
    timeout_s: int = Field(
        1800,
        ge=10,
        description="how long a rank waits for the others at a collective "
        "(a checkpoint, an evaluation) before the run fails",
    )
    allow_world_size_change: bool = Field(
        False,
        description="resume a checkpoint written by another number of "
        "ranks (the rest of the run then differs from an uninterrupted one)",
    )


class SearchParam(_Section):
    """One searched config key: a float or int range (log scale optional, int step optional) or a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = Field(None, gt=0)
    choices: Optional[list] = None

    @model_validator(mode="after")
    def _sane(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty choices list")
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("a categorical parameter takes choices, not low/high/log")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs low and high")
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes low/high, not choices")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log=true needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("log=true and step cannot go together (Optuna refuses it)")
        if self.type == "int" and any(v is not None and float(v) != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError("an int parameter needs whole low, high and step")
        return self


class TuneSection(_Section):
    """llm-summarizer tune: an Optuna study over config keys, each trial a training run (see the README's "Tune")."""

    dir: Optional[str] = Field(
        None, description="the study's folder (trials, study.db, summary); default outputs/<run_name>-tune"
    )
    storage: Optional[str] = Field(
        None, description="Optuna storage: any SQLAlchemy URL; None = sqlite:///<dir>/study.db"
    )
    study_name: Optional[str] = Field(None, description="None = output.run_name")
    metric: str = Field(
        eval_name(PRIMARY),
        description=f"the metric of generated summaries maximized ({', '.join(eval_name(k) for k in KEYS)}): the "
        "final model's, intermediate values at each evaluation for pruning",
    )
    seed: Seed = Field(0, description="seed of the TPE sampler")
    n_startup_trials: int = Field(5, ge=0, description="random trials before TPE models the space")
    pruner: Literal["median", "none"] = Field(
        "median",
        description="stop a trial whose intermediate value is below the median of earlier trials at the same step",
    )
    prune_startup_trials: int = Field(2, ge=0, description="finished trials before any pruning")
    prune_warmup_steps: int = Field(0, ge=0, description="training steps before a trial can be pruned")
    max_retries: int = Field(1, ge=0, description="reruns of a trial whose process died (resumed from its checkpoint)")
    space: dict[str, SearchParam] = Field(
        default_factory=dict,
        description="dotted config key -> distribution, e.g. "
        "train.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}",
    )

    @field_validator("metric")
    @classmethod
    def _rouge(cls, v):
        if not is_summary_metric(v):
            raise ValueError(
                f"tune.metric must be one of {', '.join(eval_name(k) for k in KEYS)} (a metric of generated "
                "summaries, the quantity the search is for)"
            )
        return eval_name(v)


class RewardWeights(_Section):
    """The weight of each named component of the summary reward (training/rewards.py; 0 switches one off)."""

    similarity: float = Field(1.0, description="ROUGE F1 against the reference (rl.similarity_metric), in [0, 1]")
    length: float = Field(0.5, description="0 inside rl.length_band, down to -1 the farther outside it")
    copying: float = Field(
        0.5, description="0 up to the references' own density x rl.copy_slack, towards -1 for a copy of the document"
    )
    unsupported: float = Field(0.5, description="-0.5 per number or name absent from the document, at most -1")
    repetition: float = Field(0.5, description="minus the share of repeated trigrams, in [-1, 0]")
    cut: float = Field(
        1.0, description="-1 for a completion cut by rl.max_completion_length (no end of turn); kept, not masked"
    )

    @field_validator("*")
    @classmethod
    def _not_negative(cls, v):
        if v < 0:
            raise ValueError("a weight is >= 0: each component already has its sign (0 switches it off)")
        return v


class CustomReward(_Section):
    """A reward component of your own: a Python function f(prompts, completions, **columns) -> list[float]."""

    function: str = Field(description="'package.module:function' or 'path/to/file.py:function'")
    weight: float = Field(1.0, ge=0)
    name: Optional[str] = Field(None, description="its name in the logs; default the function's name")

    @field_validator("function")
    @classmethod
    def _spec(cls, v):
        where, sep, fn = v.rpartition(":")
        if not sep or not where or not fn.isidentifier():
            raise ValueError(f"{v!r}: write 'package.module:function' or 'path/to/file.py:function'")
        return v


class RLSection(_Section):
    """A reinforcement-learning stage (GRPO) on the summary reward, after or instead of SFT (README: "GRPO")."""

    method: Literal["none", "grpo"] = Field(
        "none", description="grpo: train on the summary reward with TRL's GRPOTrainer instead of SFT's loss"
    )
    num_generations: int = Field(4, ge=2, description="completions sampled per prompt (the group GRPO compares)")
    max_completion_length: Optional[int] = Field(
        None, ge=1, description="token budget of a completion; None = the eval budget rule (references' lengths)"
    )
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the completions")
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.0, ge=0, description="KL coefficient against the starting model (0 = no reference model)")
    epsilon: float = Field(0.2, gt=0, lt=1, description="clipping range of the policy ratio")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="advantages divided by the group's (or batch's) reward std, or not scaled"
    )
    steps_per_generation: Optional[int] = Field(
        None, ge=1, description="micro-batches per generation round; None = train.gradient_accumulation_steps"
    )
    similarity_metric: str = Field(PRIMARY, description="the metric of the similarity component (any ROUGE key)")
    length_band: tuple[float, float] = Field(
        (0.6, 1.6), description="[low, high] of summary words / reference words rewarded as the right length"
    )
    target_words: Optional[int] = Field(
        None, ge=1, description="length target in words for rows without a reference (the band applies to it)"
    )
    copy_slack: float = Field(
        1.0, gt=0, description="density allowed before the copy penalty: the training references' mean x this"
    )
    weights: RewardWeights = Field(default_factory=RewardWeights)
    custom: list[CustomReward] = Field(default_factory=list, description="your own components, loaded like plug-ins")

    @field_validator("similarity_metric")
    @classmethod
    def _rouge_key(cls, v):
        keys = family("rouge")
        if plain_name(v) not in keys:
            raise ValueError(f"{v!r}: the similarity component is a ROUGE key, one of {', '.join(keys)}")
        return plain_name(v)

    @field_validator("length_band")
    @classmethod
    def _band(cls, v):
        lo, hi = v
        if not 0 < lo < hi:
            raise ValueError(f"{list(v)}: give [low, high] with 0 < low < high (ratios to the reference's length)")
        return v


class Config(_Section):
    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output: OutputSection = Field(default_factory=OutputSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    scale: ScaleSection = Field(default_factory=ScaleSection)
    tune: TuneSection = Field(default_factory=TuneSection)
    rl: RLSection = Field(default_factory=RLSection)

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.train.load_best_model_at_end and self.train.eval_strategy == "no":
            raise ValueError("train.load_best_model_at_end needs train.eval_strategy 'steps' or 'epoch'")
        if self.train.load_best_model_at_end and self.train.save_strategy not in (self.train.eval_strategy, "best"):
            raise ValueError("train.load_best_model_at_end needs train.save_strategy equal to train.eval_strategy")
        if self.scale.num_workers > 1 and self.scale.engine == "none":
            raise ValueError(
                f"scale.num_workers={self.scale.num_workers} needs scale.engine=ray; on one node you can "
                f"also leave it at 1 and launch torchrun --nproc_per_node={self.scale.num_workers} -m "
                "llm_summarizer train ..."
            )
        if self.lora.loftq and (self.model.load_in_4bit or self.model.load_in_8bit):
            raise ValueError(
                "lora.loftq quantizes the base itself: set model.load_in_4bit=false and model.load_in_8bit=false"
            )
        if self.rl.method == "grpo":
            self._check_grpo()
        return self

    def _check_grpo(self) -> None:
        t, rl = self.train, self.rl
        per_round = rl.steps_per_generation or t.gradient_accumulation_steps
        batch = t.per_device_train_batch_size * per_round
        if batch % rl.num_generations:
            raise ValueError(
                f"rl.num_generations={rl.num_generations} must divide the completions of one generation round, "
                f"train.per_device_train_batch_size x (rl.steps_per_generation or train.gradient_accumulation_steps) "
                f"= {t.per_device_train_batch_size} x {per_round} = {batch}: e.g. set "
                f"train.per_device_train_batch_size={rl.num_generations}"
            )
        if per_round % t.gradient_accumulation_steps:
            raise ValueError(
                f"rl.steps_per_generation={per_round} must be a multiple of train.gradient_accumulation_steps="
                f"{t.gradient_accumulation_steps} (a generation round ends on an optimizer step)"
            )
        rounds = per_round // t.gradient_accumulation_steps
        if t.save_strategy == "steps" and t.save_steps % rounds:
            raise ValueError(
                f"train.save_steps={t.save_steps} must be a multiple of {rounds} optimizer steps per generation round "
                f"(rl.steps_per_generation / train.gradient_accumulation_steps): a checkpoint inside a round could "
                "not resume to the same completions"
            )
        if t.packing:
            raise ValueError("train.packing is for SFT; rl.method=grpo generates its own completions: set it false")
        if not any(v > 0 for v in rl.weights.model_dump().values()) and not any(c.weight > 0 for c in rl.custom):
            raise ValueError("rl.weights: every component has weight 0; the reward would be constant")

    def greater_is_better(self, metric: str, given: Optional[bool] = None) -> bool:
        """Whether a higher `metric` is better: the same answer for best-model selection and early stopping.
        `given` (an early_stopping entry's own greater_is_better) wins; then train.greater_is_better for
        train.metric_for_best_model; then the metric's name (every loss is lower-better)."""
        if given is not None:
            return given
        if self.train.greater_is_better is not None and plain_name(metric) == plain_name(
            self.train.metric_for_best_model
        ):
            return self.train.greater_is_better
        return higher_is_better(metric)

    # Paths derived from the config, in one place.
    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir or os.path.join(OUTPUTS_DIR, self.output.run_name))

    @property
    def model_dir(self) -> Path:
        return Path(self.output.model_dir or os.path.join(FINE_TUNED_DIR, self.output.run_name))
