"""What a run writes for others to read, as types: `metrics.json` of a fine-tuned model (RunMetrics).

Written and read only through these types: a reader asks `metrics.final_score("eval_rougeL")` or
`metrics.train.global_step` instead of digging into nested dicts. The file carries `version`:

- version 1: written before the field existed (llm_summarizer up to this change); reads the same, fields absent
  in it are None;
- version 2: this layout (`version` added; every other key as in version 1);
- a newer version than this code knows: a clear message (upgrade llm_summarizer), never a half-read.

Keys this code does not know are kept (`extra`) and written back, so a round trip loses nothing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import UserError
from .layout import METRICS_FILE
from .metric_names import plain_name

METRICS_VERSION = 2


@dataclass
class TrainFigures:
    """metrics.json "train": the training numbers of the run."""

    global_step: Optional[int] = None
    train_loss: Optional[float] = None
    train_runtime_s: Optional[float] = None
    best_checkpoint: Optional[str] = None
    best_metric: Optional[float] = None
    rouge_callback_s: Optional[float] = None  # the ROUGE callback's generation and scoring, all evaluations
    rouge_callback_share: Optional[float] = None  # its share of the training wall time
    resumed_from: Optional[str] = None
    world_size: int = 1
    train_tokens: Optional[int] = None
    train_tokens_per_s: Optional[float] = None
    peak_memory_gib: Optional[float] = None
    peak_memory_of: Optional[str] = None  # "CUDA memory allocated" or "process RSS"
    startup: Optional[dict] = None  # seconds per start-up phase (bench.measure.Startup.report())
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
    def examples(self) -> Optional[int]:
        """How many validation examples the final scores were computed on."""
        n = (self.final or {}).get("rouge_examples") or (self.final_vs_base or {}).get("examples")
        return int(n) if n else None

    # -- the file ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "version": self.version,
            "base": self.base,
            "final": self.final,
            "train": self.train.to_dict(),
            "data": self.data,
            "eval_protocol": self.eval_protocol,
        }
        for name in ("references", "tune", "tracking", "final_vs_base"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: Any, where: str = METRICS_FILE) -> "RunMetrics":
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
        for name in (
            "base",
            "final",
            "data",
            "eval_protocol",
            "references",
            "tune",
            "tracking",
            "final_vs_base",
            "train",
        ):
            if d.get(name) is not None and not isinstance(d[name], dict):
                raise UserError(f'{where}: "{name}" should be a JSON object, not {type(d[name]).__name__}')
        known = _known(cls, d)
        known["train"] = TrainFigures.from_dict(d.get("train") or {})
        for name in ("data", "eval_protocol"):
            known[name] = known.get(name) or {}
        known["version"] = METRICS_VERSION
        return cls(**known, extra=_unknown(cls, d))

    @classmethod
    def read(cls, path: Path) -> "RunMetrics":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(
                f"{path} is not readable JSON ({type(e).__name__}); is the model directory complete?"
            ) from None
        return cls.from_dict(d, str(path))


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
