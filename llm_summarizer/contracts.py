"""What a run writes for others to read, as types: `metrics.json` of a fine-tuned model (RunMetrics), and the shapes of
every other JSON file a model folder carries (run_info.json, export_info.json, gguf_conversion.json, and an
evaluation's eval_settings.json), read through `read_model_file` like any untrusted input (untrusted.py): a wrong
type, a cut-off file or an absurd number is one message naming the file and the key.

Written and read only through these types: a reader asks `metrics.final_score("eval_rougeL")` or
`metrics.train.global_step` instead of digging into nested dicts. The file carries `version`:

- version 1: written before the field existed (llm_summarizer up to this change); reads the same, fields absent
  in it are None;
- version 2: `version` added; every other key as in version 1;
- version 3: this layout: the in-training evaluation's figures named for what they hold, not for ROUGE (base and
  final `summary_examples`, was `rouge_examples`; train `summary_eval_s` / `summary_eval_share`, were
  `rouge_callback_s` / `rouge_callback_share`; startup `base_eval_s`, was `base_rouge_s`); a version 1 or 2 file
  reads with its old names mapped to these (`OLD_NAMES`);
- a newer version than this code knows: a clear message (upgrade llm_summarizer), never a half-read.

Keys this code does not know are kept (`extra`) and written back, so a round trip loses nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import UserError
from .layout import EVAL_SETTINGS, EXPORT_INFO, GGUF_CONVERSION_FILE, METRICS_FILE, RUN_INFO_FILE
from .metrics import plain_name
from .untrusted import Any, Bool, Int, Lst, Map, Num, Obj, Opt, Shape, Str, check_shape, read_json

METRICS_VERSION = 3
# metrics.json before version 3: (where, old key, new key)
OLD_NAMES = (
    ("base", "rouge_examples", "summary_examples"),
    ("final", "rouge_examples", "summary_examples"),
    ("train", "rouge_callback_s", "summary_eval_s"),
    ("train", "rouge_callback_share", "summary_eval_share"),
    ("train.startup", "base_rouge_s", "base_eval_s"),
)

# ---- the shapes of a model folder's files: every key a reader of this project reads, with its type --------------
_SCORES = Map(Opt(Num()))  # metric -> value (base, final, references)
_DIFFERENCES = Map(
    Obj(
        diff=Opt(Num()),
        ci95=Opt(Lst(Opt(Num()), max_len=2)),
        share_of_resamples_not_better=Opt(Num(0, 1)),
        examples=Opt(Int()),
    )
)
_LENGTHS = Obj(**{k: Opt(Num(0, 1e9)) for k in ("min", "mean", "p50", "p95", "max")})
_SPLIT = Obj(
    source=Opt(Str()),
    rows_read=Opt(Int()),
    rows=Opt(Int()),
    dropped=Opt(Map(Opt(Int()))),
    dropped_first_rows=Opt(Map(Any())),
    truncated=Opt(Int()),
    prompt_tokens=Opt(_LENGTHS),
    summary_tokens=Opt(_LENGTHS),
)
_TRACKER = Obj(
    run_id=Opt(Str(500)),
    id=Opt(Str(500)),
    url=Opt(Str(2000)),
    project=Opt(Str(500)),
    entity=Opt(Str(500)),
    tracking_uri=Opt(Str(2000)),
    mode=Opt(Str(50)),
    logdir=Opt(Str(4000)),
)
_TRAIN = Obj(
    global_step=Opt(Int()),
    train_loss=Opt(Num()),
    train_runtime_s=Opt(Num(0)),
    best_checkpoint=Opt(Str(4000)),
    best_metric=Opt(Num()),
    summary_eval_s=Opt(Num(0)),
    summary_eval_share=Opt(Num(0, 1e6)),
    resumed_from=Opt(Str(4000)),
    world_size=Opt(Int(1, 10**6)),
    train_tokens=Opt(Int()),
    train_tokens_per_s=Opt(Num(0)),
    peak_memory_gib=Opt(Num(0)),
    peak_memory_of=Opt(Str(200)),
    startup=Opt(Map(Opt(Num()))),
)
METRICS_SHAPE = Obj(
    version=Int(1, 10**6),
    base=Opt(_SCORES),
    final=Opt(_SCORES),
    references=Opt(_SCORES),
    train=Opt(_TRAIN),
    data=Opt(Map(Opt(_SPLIT))),
    eval_protocol=Opt(
        Obj(
            decoding=Opt(
                Obj(
                    max_new_tokens=Opt(Int(1, 10**6)),
                    num_beams=Opt(Int(1, 10**4)),
                    do_sample=Opt(Bool()),
                    stop_tokens=Opt(Lst(Opt(Str(1000)))),
                )
            ),
            examples=Opt(Int()),
            split=Opt(Str(200)),
            diagnostics=Opt(Map(Any())),
        )
    ),
    final_vs_base=Opt(
        Obj(examples=Opt(Int()), model_minus_base=Opt(_DIFFERENCES), diagnostics_model_minus_base=Opt(_DIFFERENCES))
    ),
    tune=Opt(Obj(trial=Opt(Int()), pruned_at_step=Opt(Int()))),
    tracking=Opt(Map(Opt(_TRACKER))),
    stage=Opt(Obj(method=Opt(Str(20)), started_from=Opt(Str(4000)))),
)
RUN_INFO_SHAPE = Obj(
    seed=Opt(Int(0, 2**32)),
    split_seed=Opt(Int(0, 2**32)),
    model=Opt(
        Obj(
            base_model=Opt(Str(4000)),
            resolved_path=Opt(Str(4000)),
            backend=Opt(Str(50)),
            precision=Opt(Str(50)),
            precision_detail=Opt(Str(500)),
            trainable_params=Opt(Int()),
            total_params=Opt(Int()),
            gguf=Opt(Map(Any())),
        )
    ),
    versions=Opt(Map(Opt(Str(200)))),
    git_commit=Opt(Str(100)),
    wall_time_s=Opt(Num(0)),
)
EXPORT_INFO_SHAPE = Obj(
    format=Opt(Str(50)),
    source=Opt(Str(4000)),
    source_kind=Opt(Str(50)),
    base_model=Opt(Str(4000)),
    backend=Opt(Str(50)),
    dtype=Opt(Str(100)),
    method=Opt(Str(4000)),
    verification=Opt(Map(Any())),
    memory=Opt(Map(Any())),
)
GGUF_CONVERSION_SHAPE = Obj(changes=Opt(Lst(Any())), source=Opt(Any()))
EVAL_SETTINGS_SHAPE = Obj(
    model=Opt(Str(4000)),
    weights=Lst(Lst(Opt(Str(4000)), max_len=2)),
    data=Str(4000),
    data_rows=Str(100),
    split=Str(200),
    decoding=Obj(max_new_tokens=Int(1, 10**6)).require("max_new_tokens"),
    prompt=Map(Any()),
    prompt_digest=Str(100),
).require("weights", "data", "data_rows", "split", "decoding", "prompt", "prompt_digest")
SHAPES = {
    METRICS_FILE: METRICS_SHAPE,
    RUN_INFO_FILE: RUN_INFO_SHAPE,
    EXPORT_INFO: EXPORT_INFO_SHAPE,
    GGUF_CONVERSION_FILE: GGUF_CONVERSION_SHAPE,
    EVAL_SETTINGS: EVAL_SETTINGS_SHAPE,
}


def read_model_file(path: Path, shape: Optional[Shape] = None) -> dict:
    """A JSON file of a model folder (or of an evaluation), read as untrusted input against its shape (SHAPES by
    file name); one UserError naming the file and the key otherwise."""
    path = Path(path)
    return read_json(path, shape or SHAPES[path.name], str(path))


def optional_model_file(path: Path, left_out: str, log, shape: Optional[Shape] = None) -> Optional[dict]:
    """A file the command can work without: its content, or None with one warning that names the problem and what
    the command leaves out (None without a warning when the file is absent)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return read_model_file(path, shape)
    except UserError as e:
        log.warning("%s; going on without it (%s)", e, left_out)
        return None


@dataclass
class TrainFigures:
    """metrics.json "train": the training numbers of the run."""

    global_step: Optional[int] = None
    train_loss: Optional[float] = None
    train_runtime_s: Optional[float] = None
    best_checkpoint: Optional[str] = None
    best_metric: Optional[float] = None
    summary_eval_s: Optional[float] = None  # generating and scoring validation summaries, all evaluations
    summary_eval_share: Optional[float] = None  # its share of the training wall time
    resumed_from: Optional[str] = None
    world_size: int = 1
    train_tokens: Optional[int] = None
    train_tokens_per_s: Optional[float] = None
    peak_memory_gib: Optional[float] = None
    peak_memory_of: Optional[str] = None  # "CUDA memory allocated" or "process RSS"
    startup: Optional[dict] = None  # seconds per start-up phase (training.run.Startup.report())
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("startup", "extra")}
        if self.startup is not None:
            d["startup"] = self.startup
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainFigures":
        return cls(**_known(cls, d), extra=_unknown(cls, d))


@dataclass
class RunMetrics:
    """metrics.json of a fine-tuned model: ROUGE (and the summary statistics) of the base model and of the final
    one on the validation examples, the training numbers, the data report and the evaluation protocol."""

    base: Optional[dict] = None  # metric -> value (plain names: rougeL, coverage, ...); None without base_eval
    final: Optional[dict] = None  # the same for the fine-tuned model; None without validation data
    train: TrainFigures = field(default_factory=TrainFigures)
    data: dict = field(default_factory=dict)  # per split: rows, dropped, truncated, token lengths
    eval_protocol: dict = field(default_factory=dict)  # how ROUGE was computed (scorer, tokenizer, examples)
    references: Optional[dict] = None  # the references' own statistics on the same examples
    tune: Optional[dict] = None  # {"trial", "pruned_at_step"} when the run was a tune trial
    tracking: Optional[dict] = None  # tracker run ids and URLs
    final_vs_base: Optional[dict] = None  # paired differences (bootstrap intervals) of final against base
    stage: Optional[dict] = None  # {"method": "sft"|"grpo", "started_from", ...}: the stage that made the model
    version: int = METRICS_VERSION
    extra: dict = field(default_factory=dict)

    # -- reading -------------------------------------------------------------------------------------------
    def final_score(self, metric: str) -> Optional[float]:
        """The fine-tuned model's value of a metric named either way ("eval_rougeL" or "rougeL")."""
        return _number((self.final or {}).get(plain_name(metric)))

    def base_score(self, metric: str) -> Optional[float]:
        return _number((self.base or {}).get(plain_name(metric)))

    @property
    def wandb_url(self) -> Optional[str]:
        return ((self.tracking or {}).get("wandb") or {}).get("url")

    @property
    def validated_max_new_tokens(self) -> Optional[int]:
        """The generation budget the ROUGE callback used during training."""
        n = (self.eval_protocol.get("decoding") or {}).get("max_new_tokens")
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None

    @property
    def train_summary_p95(self) -> Optional[float]:
        """The 95th percentile token length of the training summaries."""
        p95 = ((self.data.get("train") or {}).get("summary_tokens") or {}).get("p95")
        return float(p95) if isinstance(p95, (int, float)) and not isinstance(p95, bool) and p95 > 0 else None

    @property
    def is_grpo(self) -> bool:
        return (self.stage or {}).get("method") == "grpo"

    @property
    def labels(self) -> tuple[str, str]:
        """What the two evaluated models are called in summaries, reports and cards: (before, after) training."""
        if not self.is_grpo:
            return "base model", "fine-tuned"
        kind = str((self.stage or {}).get("started_from_kind") or "")
        return ("SFT model" if kind.startswith("adapter") else "starting model"), "GRPO"

    @property
    def examples(self) -> Optional[int]:
        """How many validation examples the final scores were computed on."""
        n = (self.final or {}).get("summary_examples") or (self.final_vs_base or {}).get("examples")
        return int(n) if n else None

    # -- the file ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d: dict = {
            "version": self.version,
            "base": self.base,
            "final": self.final,
            "train": self.train.to_dict(),
            "data": self.data,
            "eval_protocol": self.eval_protocol,
        }
        for name in ("references", "tune", "tracking", "final_vs_base", "stage"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d, where: str = METRICS_FILE) -> "RunMetrics":
        if not isinstance(d, dict):
            raise UserError(
                f"{where} should hold a JSON object with the run's metrics; it holds "
                f"{type(d).__name__}. Is it a metrics.json written by llm-summarizer train?"
            )
        version = d.get("version", 1)
        if not isinstance(version, int) or version < 1:
            raise UserError(f"{where}: version {version!r} is not a metrics.json version (1, 2, ...)")
        if version > METRICS_VERSION:
            raise UserError(
                f"{where} was written by a newer llm_summarizer (metrics.json version {version}; this one "
                f"reads up to {METRICS_VERSION}). Upgrade llm_summarizer to read it"
            )
        if version < 3:
            d = _renamed(d)
        check_shape(d, METRICS_SHAPE, where)
        known = _known(cls, d)
        known["train"] = TrainFigures.from_dict(d.get("train") or {})
        for name in ("data", "eval_protocol"):
            known[name] = known.get(name) or {}
        known["version"] = METRICS_VERSION
        return cls(**known, extra=_unknown(cls, d))

    @classmethod
    def read(cls, path: Path) -> "RunMetrics":
        return cls.from_dict(read_json(Path(path), Any(), str(path)), str(path))


def _renamed(d: dict) -> dict:
    """A metrics.json of version 1 or 2 with its old key names mapped to version 3's (a copy)."""
    d = {**d}
    for where, old, new in OLD_NAMES:
        parent, path = d, where.split(".")
        for part in path:
            child = parent.get(part)
            if not isinstance(child, dict):
                break
            child = parent[part] = {**child}  # copied on the way down: the caller's dict is not changed
            parent = child
        else:
            if old in parent and new not in parent:
                parent[new] = parent.pop(old)
    return d


def _number(v) -> Optional[float]:
    if isinstance(v, dict):  # an evaluation block: {"f1": ..., "ci95": ...}
        v = v.get("f1")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _known(cls, d: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    return {k: v for k, v in d.items() if k in names}


def _unknown(cls, d: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k not in names}
