"""Experiment tracking: Weights & Biases, TensorBoard and MLflow, all fed from one callback.

    python -m llm_summarizer.train --config configs/demo.yaml tracking.report_to=[wandb]
    python -m llm_summarizer.train --config configs/demo.yaml tracking.report_to=[tensorboard,mlflow]
    tensorboard --logdir outputs/demo/tensorboard
    mlflow ui --backend-store-uri sqlite:///outputs/demo/mlflow.db
    wandb sync outputs/demo/wandb/offline-run-*-RUNID      # upload a run that was logged offline

W&B goes offline by itself when there is no API key (WANDB_API_KEY, `wandb login`, a Colab secret)
or its server cannot be reached; the run prints, once, the `wandb sync` command that uploads it later.

Why our own callback rather than transformers' `report_to` integrations: every tracker gets the same
name for each scalar (train/loss, eval/loss, eval/rougeL, ...); the base model's ROUGE (step 0) and
the samples table go through the same path as the trainer's logs; the run config is our resolved
config with secrets removed, not every TrainingArguments field; and a resumed run continues the SAME
W&B and MLflow runs (their ids are kept in <output.dir>/tracking.json), with TensorBoard dropping the
steps logged after the checkpoint it resumes from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shlex
import socket
import time
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlparse

from .config import Config, UserError, config_to_dict

log = logging.getLogger("llm_summarizer.tracking")

TRACKING_FILE = "tracking.json"  # in output.dir: the tracker run ids a resumed run continues
SAMPLES_KEY = "eval/rouge_samples"
SAMPLE_COLUMNS = ["step", "tag", "id", "document", "reference", "prediction", "rouge1", "rouge2", "rougeL", "rougeLsum"]
STEP_KEY = "train/global_step"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
DEFAULT_WANDB_HOST = "https://api.wandb.ai"
REDACTED = "<redacted>"

_PACKAGES = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow"}


# ---------------------------------------------------------------------------------------------
# Names and secrets


def scalar_name(key: str) -> str:
    """The trainer's log keys as dashboards group them (the names transformers' integrations use)."""
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_"):]
    if key.startswith("test_"):
        return "test/" + key[len("test_"):]
    return "train/" + key


def scalars(logs: dict) -> dict[str, float]:
    out = {}
    for k, v in logs.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[scalar_name(k)] = float(v)
    return out


_SECRET_KEY = re.compile(r"(^|[_.-])(token|api_?key|secret|password|passwd|credentials?|private_key)$", re.I)
_SECRET_ENV = re.compile(r"(^|_)(TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(_|$)", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def env_secrets(environ=None) -> list[str]:
    """Values of environment variables whose names say they are secrets (HF_TOKEN, WANDB_API_KEY, ...)."""
    environ = os.environ if environ is None else environ
    found = {v for k, v in environ.items() if _SECRET_ENV.search(k) and v and len(v) >= 8}
    return sorted(found, key=len, reverse=True)


def redact(obj, secrets: Optional[list[str]] = None):
    """A copy of obj with secret-named keys, known secret values and URL passwords replaced."""
    secrets = env_secrets() if secrets is None else secrets
    if isinstance(obj, dict):
        return {k: (REDACTED if _SECRET_KEY.search(str(k)) and obj[k] not in (None, "") else redact(v, secrets))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, REDACTED)
        return _URL_USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", obj)
    return obj


def run_config(cfg: Config) -> dict:
    """What the dashboards show as the run's config: the resolved config, secrets removed."""
    return redact(config_to_dict(cfg))


# ---------------------------------------------------------------------------------------------
# W&B online or offline


def wandb_host(environ=None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get("WANDB_BASE_URL") or DEFAULT_WANDB_HOST


def has_wandb_key(environ=None) -> bool:
    """An API key in the environment, an identity token file, or a `wandb login` entry in ~/.netrc."""
    import netrc

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


def decide_wandb_mode(setting: str, environ=None, has_key: Callable[[], bool] = None,
                      reachable: Callable[[], bool] = None) -> tuple[str, Optional[str]]:
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
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def sync_command(wandb_dir: Path, run_id: str) -> str:
    # every segment of a resumed offline run has its own folder with the same id; sync uploads them in order
    return f"wandb sync {shlex.quote(str(wandb_dir))}/offline-run-*-{run_id}"


# ---------------------------------------------------------------------------------------------
# The trackers of one run


def check_installed(cfg: Config) -> None:
    """Fail before any heavy work when a requested tracker's package is missing."""
    import importlib.util

    needed = [_PACKAGES[r] for r in cfg.tracking.report_to if r in _PACKAGES]
    uri = cfg.tracking.mlflow_tracking_uri
    if "mlflow" in needed and (uri is None or uri.startswith("sqlite")):
        needed += ["sqlalchemy", "alembic"]  # MLflow's SQLite store (mlflow-skinny leaves them out)
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"tracking.report_to={cfg.tracking.report_to} needs {', '.join(missing)}, not installed: "
                        f"pip install {' '.join(missing)}  (or pip install -e '.[trackers]'), "
                        "or remove the tracker from tracking.report_to")


def _read_ids(output_dir: Path) -> dict:
    try:
        return json.loads((output_dir / TRACKING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _checkpoint_step(resume_from: Optional[Path]) -> Optional[int]:
    if resume_from is None:
        return None
    try:
        return int(json.loads((Path(resume_from) / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError):
        return int(Path(resume_from).name.split("-")[-1])


class Trackers:
    """The tracker runs of one training run. `start()` opens them; `finish()` or `close()` ends them."""

    def __init__(self, cfg: Config, output_dir: Path):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.wandb_run = None
        self.wandb_info: dict = {}
        self.table = None
        self.tb = None
        self.tb_dir: Optional[Path] = None
        self.mlflow = None  # MlflowClient: explicit run ids, no process-global active run
        self.mlflow_info: dict = {}
        self.closed = False

    @property
    def active(self) -> bool:
        return any(x is not None for x in (self.wandb_run, self.tb, self.mlflow))

    # -- logging ------------------------------------------------------------------------------

    def log(self, values: dict[str, float], step: int) -> None:
        """Scalars (already named: train/loss, eval/rougeL, ...) at a trainer global step, to every tracker."""
        if not values or self.closed:
            return
        if self.wandb_run is not None:
            self.wandb_run.log({**values, STEP_KEY: step})
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.mlflow is not None:
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            finite = [Metric(k, v, ts, step) for k, v in values.items() if math.isfinite(v)]
            for i in range(0, len(finite), 500):
                self.mlflow.log_batch(self.mlflow_info["run_id"], metrics=finite[i:i + 500])

    def on_rouge(self, step: Optional[int], tag: str, metrics: dict, samples: list[dict]) -> None:
        """Called by RougeEvaluator after each pass: the base model's scores, and the samples table."""
        if self.closed:
            return
        step = step or 0
        if tag == "base":
            # evaluations during training reach us through the trainer's log; the untrained model's does not
            self.log(scalars({f"eval_{k}": v for k, v in metrics.items()}), step)
        if self.wandb_run is not None and samples:
            for s in samples:
                self.table.add_data(*[s.get(c) for c in SAMPLE_COLUMNS])
            self.wandb_run.log({SAMPLES_KEY: self.table, STEP_KEY: step})

    def callback(self):
        """The TrainerCallback that forwards the trainer's logs (losses, learning rate, eval metrics)."""
        from transformers import TrainerCallback

        trackers = self

        class TrackingCallback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if state.is_world_process_zero and logs:
                    trackers.log(scalars(logs), state.global_step)

        return TrackingCallback()

    # -- end of the run -----------------------------------------------------------------------

    def info(self) -> dict:
        """Where the run went, for metrics.json and the model card."""
        out = {}
        if self.wandb_info:
            out["wandb"] = dict(self.wandb_info)
        if self.tb_dir is not None:
            out["tensorboard"] = {"logdir": str(self.tb_dir)}
        if self.mlflow_info:
            out["mlflow"] = dict(self.mlflow_info)
        return out

    def finish(self, model_dir: Optional[Path], metrics: dict) -> None:
        """Final scores, the adapter as a W&B artifact (tracking.log_model), then close every run."""
        if self.closed:
            return
        step = (metrics.get("train") or {}).get("global_step") or 0
        blocks = {f"{name}/{k}": float(v) for name in ("base", "final") for k, v in (metrics.get(name) or {}).items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.log({k: v for k, v in blocks.items() if k.startswith("final/")}, step)
        if self.wandb_run is not None:
            self.wandb_run.summary.update(blocks)
        if self.wandb_run is not None and self.cfg.tracking.log_model and model_dir is not None:
            self._log_model(Path(model_dir), metrics)
        self.close(failed=False)

    def _log_model(self, model_dir: Path, metrics: dict) -> None:
        import wandb

        final = metrics.get("final") or {}
        art = wandb.Artifact(
            name=f"{self.cfg.output.run_name}-adapter", type="model",
            description=f"LoRA adapter fine-tuned from {self.cfg.model.name} to summarize (llm_summarizer)",
            metadata=redact({"base_model": self.cfg.model.name, "backend": self.cfg.model.backend,
                             "global_step": (metrics.get("train") or {}).get("global_step"),
                             **{f"final_{k}": v for k, v in final.items()}}))
        art.add_dir(str(model_dir))
        self.wandb_run.log_artifact(art, aliases=["latest", "final"])
        log.info("W&B: final adapter logged as artifact %s (type model)", art.name)

    def close(self, failed: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=1 if failed else 0)
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.set_terminated(self.mlflow_info["run_id"], "FAILED" if failed else "FINISHED")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(failed=exc_type is not None)
        return False

    # -- opening each tracker -----------------------------------------------------------------

    @staticmethod
    def _new_table():
        import wandb

        try:
            # one table on the dashboard that grows at each evaluation (only the new rows are sent)
            return wandb.Table(columns=SAMPLE_COLUMNS, log_mode="INCREMENTAL")
        except (TypeError, AssertionError):  # a wandb without incremental tables: re-log the one table
            return wandb.Table(columns=SAMPLE_COLUMNS, log_mode="MUTABLE")

    def _start_wandb(self, prior: dict) -> None:
        import wandb

        t = self.cfg.tracking
        mode, why = decide_wandb_mode(t.wandb_mode)
        run_id = prior.get("run_id") or new_run_id()
        wandb_dir = self.output_dir / WANDB_DIR
        if mode != "disabled":
            wandb_dir.mkdir(parents=True, exist_ok=True)
        kwargs = dict(project=t.project, entity=t.entity, name=t.run_name or self.cfg.output.run_name,
                      tags=list(t.tags) or None, group=t.group, notes=t.notes, job_type="train",
                      config=run_config(self.cfg), id=run_id, resume="allow", dir=str(self.output_dir),
                      reinit="create_new")  # leaves wandb.run alone: libraries that poke at it (TRL) stay out
        try:
            run = wandb.init(mode=mode, settings=wandb.Settings(silent=mode != "online"), **kwargs)
        except Exception as e:
            if mode != "online":
                raise
            why = f"could not start an online run ({type(e).__name__}: {redact(str(e).splitlines()[0] if str(e) else '')})"
            mode = "offline"
            run = wandb.init(mode=mode, settings=wandb.Settings(silent=True), **kwargs)
        run.define_metric(STEP_KEY)
        run.define_metric("*", step_metric=STEP_KEY, step_sync=True)
        self.wandb_run, self.table = run, self._new_table()
        self.wandb_info = {"mode": mode, "run_id": run.id, "project": t.project, "dir": str(wandb_dir)}
        if mode == "online":
            self.wandb_info.update(entity=run.entity, url=run.url)
            log.info("W&B: %s", run.url)
        elif mode == "offline":
            self.wandb_info["sync_command"] = sync_command(wandb_dir, run.id)
            log.warning("W&B: logging offline: %s. The run is saved under %s; upload it later with:\n    %s",
                        why, wandb_dir, self.wandb_info["sync_command"])

    def _start_tensorboard(self, resume_step: Optional[int]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.tb_dir = self.output_dir / TENSORBOARD_DIR
        # purge_step: TensorBoard drops what a killed run logged after the checkpoint we resume from
        self.tb = SummaryWriter(log_dir=str(self.tb_dir),
                                purge_step=None if resume_step is None else resume_step + 1)
        if resume_step is None:
            self.tb.add_text("config", "```\n" + json.dumps(run_config(self.cfg), indent=2) + "\n```", 0)

    def mlflow_uri(self) -> str:
        uri = self.cfg.tracking.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            return f"sqlite:///{(self.output_dir / 'mlflow.db').resolve()}"
        if "://" not in uri and not uri.startswith("file:"):
            uri = Path(uri).resolve().as_uri()  # a plain folder: MLflow's file store
        return uri

    def _start_mlflow(self, prior: dict) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunTag
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        t = self.cfg.tracking
        uri = self.mlflow_uri()
        # MLflow 3 refuses its file store unless asked (it checks when the store opens); naming a folder asks
        with _env("MLFLOW_ALLOW_FILE_STORE", "true" if uri.startswith("file:") else None):
            client = MlflowClient(tracking_uri=uri)
        run_id = prior.get("run_id") if prior.get("tracking_uri") == redact(uri) else None
        if run_id:
            client.update_run(run_id, status="RUNNING")
        else:
            exp = client.get_experiment_by_name(t.project)
            exp_id = exp.experiment_id if exp is not None else client.create_experiment(t.project)
            tags = {tag: "" for tag in t.tags}
            if t.group:
                tags["group"] = t.group
            if t.notes:
                tags["mlflow.note.content"] = t.notes
            run = client.create_run(exp_id, run_name=t.run_name or self.cfg.output.run_name, tags=tags)
            run_id = run.info.run_id
            flat = _flatten(run_config(self.cfg))
            params = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in flat.items()]
            for i in range(0, len(params), 100):
                client.log_batch(run_id, params=params[i:i + 100])
            client.log_batch(run_id, tags=[RunTag("llm_summarizer.output_dir", str(self.output_dir))])
        self.mlflow = client
        self.mlflow_info = {"tracking_uri": redact(uri), "run_id": run_id,
                            "experiment": t.project}


@contextlib.contextmanager
def _env(name: str, value: Optional[str]):
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if value is not None:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, type(None))) else v
    return out


def start(cfg: Config, resume_from: Optional[Path] = None) -> Trackers:
    """Open the trackers in cfg.tracking.report_to. A run resuming from a checkpoint continues the
    tracker runs recorded in <output.dir>/tracking.json; a fresh run opens new ones."""
    from .artifacts import write_json

    trackers = Trackers(cfg, cfg.output_dir)
    wanted = [r for r in cfg.tracking.report_to if r != "none"]
    if not wanted:
        return trackers
    check_installed(cfg)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    prior = _read_ids(cfg.output_dir) if resume_from is not None else {}
    try:
        if "wandb" in wanted:
            trackers._start_wandb(prior.get("wandb") or {})
        if "tensorboard" in wanted:
            trackers._start_tensorboard(_checkpoint_step(resume_from))
        if "mlflow" in wanted:
            trackers._start_mlflow(prior.get("mlflow") or {})
    except BaseException:
        trackers.close(failed=True)
        raise
    ids = {}
    if trackers.wandb_run is not None:
        ids["wandb"] = {"run_id": trackers.wandb_run.id, "project": cfg.tracking.project}
    if trackers.mlflow is not None:
        ids["mlflow"] = {k: trackers.mlflow_info[k] for k in ("run_id", "tracking_uri")}
    write_json(cfg.output_dir / TRACKING_FILE, ids)
    return trackers
