"""What every tracker does, and the names it logs under.

A tracker is one class with these methods (see the three beside this file); `Trackers` (trackers.py)
calls each of them in turn. A new tracker is one class here plus one line in `trackers.TRACKERS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..config import Config
from ..config_loading import config_to_dict
from ..contracts import RunMetrics
from ..evaluation.diagnostics import DIAGNOSTIC_KEYS
from ..metrics import EVAL_PREFIX, KEYS, plain_name
from ..redaction import redact

# the samples table: ROUGE and the statistics of each summary against its document, per example
# the GRPO completions table: the reward components (training/rewards.py COMPONENTS) are its last columns
COMPLETION_COLUMNS = ["step", "id", "completion", "tokens", "cut", "reward"]
SAMPLE_COLUMNS = ["step", "tag", "id", "document", "reference", "prediction", *KEYS, *DIAGNOSTIC_KEYS]
STEP_KEY = "train/global_step"


def scalar_name(key: str) -> str:
    """The trainer's log keys as dashboards group them (the names transformers' integrations use)."""
    if key.startswith(EVAL_PREFIX):
        return "eval/" + plain_name(key)
    if key.startswith("test_"):
        return "test/" + key[len("test_") :]
    return "train/" + key


def scalars(logs: dict) -> dict[str, float]:
    out = {}
    for k, v in logs.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[scalar_name(k)] = float(v)
    return out


def evaluation_values(metrics: dict) -> dict[str, float]:
    """evaluate's numbers as the training run's trackers keep them: `<split>/<rouge>` F1, `<split>/<statistic>`
    means, and with --compare-base `<split>/base_<name>` and `<split>/gain_<name>` (model - base)."""
    split, res = metrics["data"]["split"], metrics["results"]
    values = {f"{split}/{k}": v["f1"] for k, v in res["model"].items() if isinstance(v, dict) and "f1" in v}
    stats = lambda block: ((block or {}).get("diagnostics") or {}).get("stats") or {}  # noqa: E731
    values.update({f"{split}/{k}": v["mean"] for k, v in stats(res["model"]).items() if v.get("mean") is not None})
    if "model_minus_base" in res:
        values.update(
            {f"{split}/base_{k}": v["f1"] for k, v in res["base"].items() if isinstance(v, dict) and "f1" in v}
        )
        values.update({f"{split}/gain_{k}": v["diff"] for k, v in res["model_minus_base"].items()})
        values.update(
            {f"{split}/base_{k}": v["mean"] for k, v in stats(res["base"]).items() if v.get("mean") is not None}
        )
        values.update(
            {
                f"{split}/gain_{k}": v["diff"]
                for k, v in (res.get("diagnostics_model_minus_base") or {}).items()
                if v.get("diff") is not None
            }
        )
    values.update(
        {
            f"{split}/references_{k}": v["mean"]
            for k, v in stats(res.get("references")).items()
            if v.get("mean") is not None
        }
    )
    values[f"{split}/examples"] = float(metrics["data"]["examples"])
    return values


def run_config(cfg: Config) -> dict:
    """What the dashboards show as the run's config: the resolved config, secrets removed."""
    return redact(config_to_dict(cfg))


def run_labels(cfg: Config) -> dict:
    """The free text a tracker shows beside the config (run name, tags, group, notes), secrets removed the way the
    saved config removes them: these reach the tracker's own files and server, not only the config."""
    t = cfg.tracking
    return redact(
        {
            "name": t.run_name or cfg.output.run_name,
            "tags": list(t.tags),
            "group": t.group,
            "notes": t.notes,
        }
    )


class Tracker:
    """One tracker's run. Subclasses open it in __init__ (continuing `prior`, the ids a resumed run kept)."""

    name = "tracker"

    def __init__(self, cfg: Config, output_dir: Path, prior: dict, resume_step: Optional[int]):
        self.cfg, self.output_dir = cfg, Path(output_dir)

    @classmethod
    def preflight(cls, cfg: Config) -> None:
        """Checks that take seconds and must not wait until the model has loaded (a server that does not answer)."""

    def log(self, values: dict[str, float], step: int) -> None:
        """Scalars (already named: train/loss, eval/rougeL, ...) at a trainer global step."""

    def log_samples(self, step: int, samples: list[dict]) -> None:
        """A few generated summaries of one evaluation (columns SAMPLE_COLUMNS)."""

    def log_completions(self, step: int, rows: list[dict]) -> None:
        """A few completions a GRPO step sampled, each with its reward parts (columns COMPLETION_COLUMNS)."""

    def summary(self, values: dict[str, float]) -> None:
        """Final numbers of the run (base/..., final/... and references/...: ROUGE and the statistics)."""

    def log_model(self, model_dir: Path, metrics: RunMetrics) -> None:
        """The final model directory, where the tracker keeps artifacts (tracking.log_model)."""

    def close(self, failed: bool) -> None:
        """End the run, marked failed or finished."""

    def ids(self) -> Optional[dict]:
        """What a resumed run needs to continue this run (kept in <output.dir>/tracking.json)."""
        return None

    def info(self) -> dict:
        """Where the run went, for metrics.json and the model card."""
        return {}
