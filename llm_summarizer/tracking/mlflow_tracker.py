"""MLflow: a run in the tracking store (sqlite:///<output.dir>/mlflow.db by default, a folder, or a server),
through an explicit MlflowClient (no process-global active run); a resumed run continues the same run."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from ..contracts import RunMetrics
from ..errors import UserError
from ..redaction import redact
from .base import Tracker, evaluation_values, run_config, run_labels

log = logging.getLogger("llm_summarizer.tracking")


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


SERVER_WAIT_S = 5.0  # how long a tracking server may take to accept a connection before the run refuses to start


def check_server(uri: str) -> None:
    """An http(s) tracking server must answer in seconds: MLflow's own retries would otherwise spend minutes
    before failing (and its error quoted the URL, password included)."""
    u = urlparse(uri)
    if u.scheme not in ("http", "https"):
        return
    # MLflow's per-request retries and timeout, unless the user set them: a server that stops answering later
    # fails a logging call in about a minute, not in several
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        socket.create_connection(
            (u.hostname or "", u.port or (443 if u.scheme == "https" else 80)), timeout=SERVER_WAIT_S
        ).close()
    except OSError as e:
        raise UserError(
            f"tracking.mlflow_tracking_uri {redact(uri)}: the MLflow server does not answer "
            f"({e.strerror or type(e).__name__}). Start it or fix the address, use a local store "
            f"(tracking.mlflow_tracking_uri=sqlite:///mlflow.db), or leave mlflow out of "
            f"tracking.report_to"
        ) from None


@contextlib.contextmanager
def _server_errors(uri: str):
    try:
        yield
    except Exception as e:
        if not uri.startswith(("http:", "https:")) or isinstance(e, UserError):
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise UserError(
            f"tracking.mlflow_tracking_uri {redact(uri)}: the MLflow server refused or failed the run's "
            f"start ({type(e).__name__}: {redact(first)}). Check the address and the server's log, or "
            f"leave mlflow out of tracking.report_to"
        ) from None


def mlflow_uri(cfg, output_dir: Path) -> str:
    uri = cfg.tracking.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{(Path(output_dir) / 'mlflow.db').resolve()}"
    if "://" not in uri and not uri.startswith("file:"):
        uri = Path(uri).resolve().as_uri()  # a plain folder: MLflow's file store
    return uri


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, cfg, output_dir, prior, resume_step):
        super().__init__(cfg, output_dir, prior, resume_step)
        uri = mlflow_uri(cfg, self.output_dir)
        check_server(uri)
        # MLflow 3 refuses its file store unless asked (it checks when the store opens); naming a folder asks
        with _env("MLFLOW_ALLOW_FILE_STORE", "true" if uri.startswith("file:") else None), _server_errors(uri):
            client = MlflowClient(tracking_uri=uri)
            self._start(client, uri, cfg, prior)

    @classmethod
    def preflight(cls, cfg) -> None:
        check_server(mlflow_uri(cfg, cfg.output_dir))

    def _start(self, client, uri, cfg, prior):
        t = cfg.tracking
        run_id = prior.get("run_id") if prior.get("tracking_uri") == redact(uri) else None
        if run_id:
            client.update_run(run_id, status="RUNNING")
        else:
            exp = client.get_experiment_by_name(t.project)
            exp_id = exp.experiment_id if exp is not None else client.create_experiment(t.project)
            labels = run_labels(cfg)
            tags = {tag: "" for tag in labels["tags"]}
            if labels["group"]:
                tags["group"] = labels["group"]
            if labels["notes"]:
                tags["mlflow.note.content"] = labels["notes"]
            run = client.create_run(exp_id, run_name=labels["name"], tags=tags)
            run_id = run.info.run_id
            flat = _flatten(run_config(cfg))
            params = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in flat.items()]
            for i in range(0, len(params), 100):
                client.log_batch(run_id, params=params[i : i + 100])
            client.log_batch(run_id, tags=[RunTag("llm_summarizer.output_dir", str(self.output_dir))])
        self.client, self.run_id = client, run_id
        self._info = {"tracking_uri": redact(uri), "run_id": run_id, "experiment": t.project}

    def log(self, values, step):
        ts = int(time.time() * 1000)
        finite = [Metric(k, v, ts, step) for k, v in values.items() if math.isfinite(v)]
        for i in range(0, len(finite), 500):
            self.client.log_batch(self.run_id, metrics=finite[i : i + 500])

    def close(self, failed):
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")

    def ids(self):
        return {k: self._info[k] for k in ("run_id", "tracking_uri")}

    def info(self):
        return dict(self._info)


def log_evaluation(training: RunMetrics, evaluation, tracking_uri: str) -> Optional[dict]:
    """evaluate's scores into the MLflow run that trained the model (its metrics.json `tracking.mlflow` names the
    run): `<split>/<rouge>` and `<split>/<statistic>` metrics (and the base's and the gain with --compare-base), a
    tag with the evaluation's folder, in the store at `tracking_uri` (the user's; the address the model folder
    records is never written to). None when the model records no MLflow run, or that run is not in that store."""
    known = (training.tracking or {}).get("mlflow") or {}
    run_id, uri = known.get("run_id"), tracking_uri
    if not uri or not run_id:
        return None
    m = evaluation.metrics
    split = m["data"]["split"]
    values = evaluation_values(m)
    ts = int(time.time() * 1000)
    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id)
    except Exception as e:  # noqa: BLE001 - MLflow raises its own types for an unknown run; all mean "not here"
        log.warning(
            "MLflow: run %s is not in the store %s (%s); scores not added", run_id, redact(uri), type(e).__name__
        )
        return None
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), ts, 0) for k, v in values.items() if math.isfinite(v)],
        tags=[RunTag(f"llm_summarizer.evaluation.{split}", str(Path(evaluation.output_dir).resolve()))],
    )
    return {"run_id": run_id, "tracking_uri": redact(uri), "keys": sorted(values)}
