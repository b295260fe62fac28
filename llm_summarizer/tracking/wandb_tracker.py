"""Weights & Biases: online when there is an API key and the server answers, offline otherwise (the run
prints, once, the `wandb sync` command that uploads it later). A resumed run continues the same W&B run."""

from __future__ import annotations

import json
import logging
import netrc
import os
import secrets
import shlex
import socket
import string
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlparse

import wandb

from ..contracts import RunMetrics
from ..evaluation.diagnostics import DIAGNOSTIC_KEYS
from ..metrics import KEYS
from ..redaction import redact
from .base import COMPLETION_COLUMNS, SAMPLE_COLUMNS, STEP_KEY, Tracker, evaluation_values, run_config, run_labels

log = logging.getLogger("llm_summarizer.tracking")

SAMPLES_KEY = "eval/rouge_samples"
COMPLETIONS_KEY = "train/grpo_completions"
WANDB_DIR = "wandb"
DEFAULT_WANDB_HOST = "https://api.wandb.ai"


def wandb_host(environ=None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get("WANDB_BASE_URL") or DEFAULT_WANDB_HOST


def has_wandb_key(environ=None) -> bool:
    """An API key in the environment, an identity token file, or a `wandb login` entry in ~/.netrc."""
    environ = os.environ if environ is None else environ
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(urlparse(wandb_host(environ)).hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def can_reach(url: str, timeout: float = 3.0) -> bool:
    u = urlparse(url)
    port = u.port or (80 if u.scheme == "http" else 443)
    try:
        socket.create_connection((u.hostname or "", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def decide_wandb_mode(
    setting: str, environ=None, has_key: Callable[[], bool] = None, reachable: Callable[[], bool] = None
) -> tuple[str, Optional[str]]:
    """(mode, why offline): the config's choice, else WANDB_MODE, else online only with a key and a server."""
    environ = os.environ if environ is None else environ
    has_key = has_key or (lambda: has_wandb_key(environ))
    reachable = reachable or (lambda: can_reach(wandb_host(environ)))
    if setting != "auto":
        return setting, (None if setting == "online" else f"tracking.wandb_mode={setting}")
    env = (environ.get("WANDB_MODE") or "").strip().lower()
    if env in ("offline", "dryrun"):
        return "offline", "WANDB_MODE=offline"
    if env == "disabled":
        return "disabled", "WANDB_MODE=disabled"
    if env == "online":
        return "online", None
    if not has_key():
        return "offline", "no W&B API key (set WANDB_API_KEY, run `wandb login`, or add a Colab secret)"
    if not reachable():
        return "offline", f"{urlparse(wandb_host(environ)).hostname} cannot be reached"
    return "online", None


def new_run_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def sync_command(wandb_dir: Path, run_id: str) -> str:
    # every segment of a resumed offline run has its own folder with the same id; sync uploads them in order
    return f"wandb sync {shlex.quote(str(wandb_dir))}/offline-run-*-{run_id}"


def start_run(mode: str, why: str, kwargs: dict, failed_online: str):
    """wandb.init in `mode`; an online start that fails falls back to offline, saying why (redacted)."""
    try:
        return wandb.init(mode=mode, settings=wandb.Settings(silent=mode != "online"), **kwargs), mode, why
    except Exception as e:
        if mode != "online":
            raise
        why = f"{failed_online} ({type(e).__name__}: {redact(str(e).splitlines()[0] if str(e) else '')})"
        return wandb.init(mode="offline", settings=wandb.Settings(silent=True), **kwargs), "offline", why


def _new_table(columns=SAMPLE_COLUMNS):
    try:
        # one table on the dashboard that grows at each evaluation (only the new rows are sent)
        return wandb.Table(columns=columns, log_mode="INCREMENTAL")
    except (TypeError, AssertionError):  # a wandb without incremental tables: re-log the one table
        return wandb.Table(columns=columns, log_mode="MUTABLE")


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, cfg, output_dir, prior, resume_step):
        super().__init__(cfg, output_dir, prior, resume_step)
        t = cfg.tracking
        mode, why = decide_wandb_mode(t.wandb_mode)
        run_id = prior.get("run_id") or new_run_id()
        wandb_dir = self.output_dir / WANDB_DIR
        if mode != "disabled":
            wandb_dir.mkdir(parents=True, exist_ok=True)
        labels = run_labels(cfg)
        kwargs = dict(
            project=t.project,
            entity=t.entity,
            name=labels["name"],
            tags=labels["tags"] or None,
            group=labels["group"],
            notes=labels["notes"],
            job_type="train",
            config=run_config(cfg),
            id=run_id,
            resume="allow",
            dir=str(self.output_dir),
            reinit="create_new",
        )  # leaves wandb.run alone: libraries that poke at it (TRL) stay out
        run, mode, why = start_run(mode, why, kwargs, "could not start an online run")
        run.define_metric(STEP_KEY)
        run.define_metric("*", step_metric=STEP_KEY, step_sync=True)
        self.run, self.table = run, _new_table()
        self._info = {"mode": mode, "run_id": run.id, "project": t.project, "dir": str(wandb_dir)}
        if mode == "online":
            self._info.update(entity=run.entity, url=run.url)
            log.info("W&B: %s", run.url)
        elif mode == "offline":
            self._info["sync_command"] = sync_command(wandb_dir, run.id)
            log.warning(
                "W&B: logging offline: %s. The run is saved under %s; upload it later with:\n    %s",
                why,
                wandb_dir,
                self._info["sync_command"],
            )

    def log(self, values, step):
        self.run.log({**values, STEP_KEY: step})

    def log_samples(self, step, samples):
        for s in samples:
            self.table.add_data(*[s.get(c) for c in SAMPLE_COLUMNS])
        self.run.log({SAMPLES_KEY: self.table, STEP_KEY: step})

    def log_completions(self, step, rows):
        if not rows:
            return
        parts = list(rows[0].get("rewards") or {})
        if getattr(self, "completions", None) is None:
            columns = [*COMPLETION_COLUMNS, *(f"reward_{p}" for p in parts)]  # "cut" is a column and a part
            self.completions, self.completion_parts = _new_table(columns), parts
        for r in rows:
            rewards = r.get("rewards") or {}
            total = r.get("reward")
            self.completions.add_data(
                *[total if c == "reward" else r.get(c) for c in COMPLETION_COLUMNS],
                *[rewards.get(p) for p in self.completion_parts],
            )
        self.run.log({COMPLETIONS_KEY: self.completions, STEP_KEY: step})

    def summary(self, values):
        self.run.summary.update(values)

    def log_model(self, model_dir, metrics):
        if not self.cfg.tracking.log_model:
            return
        final = metrics.final or {}
        art = wandb.Artifact(
            name=f"{self.cfg.output.run_name}-adapter",
            type="model",
            description=f"LoRA adapter fine-tuned from {self.cfg.model.name} to summarize (llm_summarizer)",
            metadata=redact(
                {
                    "base_model": self.cfg.model.name,
                    "backend": self.cfg.model.backend,
                    "global_step": metrics.train.global_step,
                    **{f"final_{k}": v for k, v in final.items()},
                }
            ),
        )
        art.add_dir(str(model_dir))
        self.run.log_artifact(art, aliases=["latest", "final"])
        log.info("W&B: final adapter logged as artifact %s (type model)", art.name)

    def close(self, failed):
        self.run.finish(exit_code=1 if failed else 0)

    def ids(self):
        return {"run_id": self.run.id, "project": self.cfg.tracking.project}

    def info(self):
        return dict(self._info)


# each registered metric of the summary and of the base's, then the summary's statistics against its document
EVAL_TABLE_COLUMNS = [
    "id",
    "reference",
    "prediction",
    "base_prediction",
    *(c for k in KEYS for c in (k, f"base_{k}")),
    *DIAGNOSTIC_KEYS,
]


def _rows(path: Optional[Path]) -> list[dict]:
    if path is None or not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def log_evaluation(training: RunMetrics, evaluation, table_rows: int = 200) -> Optional[dict]:
    """evaluate's scores and a predictions table into the W&B run that trained the model.

    `training` is the model directory's metrics.json (its `tracking.wandb` names the run); the run is resumed
    by id (job_type stays the training's; the keys are `test/*`), online when there is a key and the server
    answers, offline otherwise, under the evaluation's output folder. Returns what was logged (mode, run id,
    the sync command when offline), or None when the model records no W&B run.
    """
    known = (training.tracking or {}).get("wandb") or {}
    if not known.get("run_id"):
        return None
    mode, why = decide_wandb_mode("auto")
    if mode == "disabled":
        return None
    m = evaluation.metrics
    split = m["data"]["split"]
    out_dir = Path(evaluation.output_dir)
    (out_dir / WANDB_DIR).mkdir(parents=True, exist_ok=True)
    kwargs = dict(
        project=known.get("project"),
        entity=known.get("entity"),
        id=known["run_id"],
        resume="allow",
        dir=str(out_dir),
        reinit="create_new",
    )
    run, mode, why = start_run(mode, why, kwargs, "could not reach the run online")
    res = m["results"]
    values = evaluation_values(m)
    values.update(
        {f"{split}/{k}_ci95_low": v["ci95"][0] for k, v in res["model"].items() if isinstance(v, dict) and "ci95" in v}
    )
    run.summary.update(values)
    base = {r["id"]: r for r in _rows(evaluation.base_predictions)}
    table = wandb.Table(columns=EVAL_TABLE_COLUMNS)
    for r in _rows(evaluation.predictions)[:table_rows]:
        b = base.get(r["id"], {})
        diag = r.get("diagnostics") or {}  # the model's statistics of this summary (none in older files)
        table.add_data(
            str(r["id"]),
            r["reference"],
            r["prediction"],
            b.get("prediction"),
            *(v for k in KEYS for v in (r.get(k), b.get(k))),
            *[diag.get(k) for k in DIAGNOSTIC_KEYS],
        )
    run.log({f"{split}/predictions": table})
    run.finish()
    info = {"mode": mode, "run_id": run.id, "project": known.get("project"), "keys": sorted(values)}
    if mode == "online":
        info["url"] = run.url
        log.info("W&B: %s scores and predictions added to the training run %s", split, run.url)
    else:
        info["sync_command"] = sync_command(out_dir / WANDB_DIR, run.id)
        log.info(
            "W&B: %s scores added to the training run %s offline (%s); upload with:\n    %s",
            split,
            run.id,
            why,
            info["sync_command"],
        )
    return info
