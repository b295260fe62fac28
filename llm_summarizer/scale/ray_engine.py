"""The train command as a Ray Train driver (scale.engine: ray): TorchTrainer workers each run the same
training story as `llm-summarizer train` (training.run.run) as one rank of a data-parallel group.

The driver does what can fail for the user's reasons before any worker starts: paths made absolute
(workers run in Ray's own folders), output folders checked, the data read and validated, the model built or
converted into the cache, the run lock taken (for all workers; they do not take it), a marker file written
into output.dir that every worker must find (output.dir must be storage every node sees). Workers report
our own failures back instead of raising them: a user error (exit 2) or a stopped training (exit 3) on a
worker goes to a small actor the driver created (FatalBox) and the worker returns, so Ray does not retry a
run that would fail the same way, and the driver exits with our code and message. A worker that dies (a lost
node, SIGKILL, a crash) makes
Ray restart the worker group, up to scale.max_failures times; each restart resumes from the project's
newest complete checkpoint, like a rerun of the command. Nothing secret goes into Ray's job metadata: no
runtime_env environment (a local cluster's workers inherit the driver's environment); the resolved config
does travel as the workers' train_loop_config, so a password inside a URL in the config (tune.storage,
tracking.mlflow_tracking_uri) is visible to Ray's state API: give those through environment variables.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from pathlib import Path

import torch

from ..config import Config
from ..config_loading import config_to_dict
from ..contracts import RunMetrics
from ..data.rows import load_raw_splits
from ..errors import EXIT_USER_ERROR, TrainingStopped, UserError
from ..layout import METRICS_FILE
from ..models.loading import resolve_model_path
from ..training.guards import RunLock
from ..training.run import check_output_paths

log = logging.getLogger("llm_summarizer.scale")


class FatalBox:
    """A Ray actor (made with ray.remote by the driver): what our own errors on the workers were."""

    def __init__(self):
        self.items: list = []

    def put(self, rank: int, code: int, message: str) -> None:
        self.items.append((rank, code, message))

    def get(self) -> list:
        return list(self.items)


def absolute(cfg: Config) -> Config:
    """Every path in the config made absolute against the driver's working directory."""
    cfg = cfg.model_copy(deep=True)
    cfg.output.dir = str(cfg.output_dir.absolute())
    cfg.output.model_dir = str(cfg.model_dir.absolute())
    if cfg.model.cache_dir:
        cfg.model.cache_dir = str(Path(cfg.model.cache_dir).expanduser().absolute())
    if Path(cfg.model.name).expanduser().exists():  # a local model directory (not a registry name or hub id)
        cfg.model.name = str(Path(cfg.model.name).expanduser().absolute())
    for role in ("train", "validation", "test"):
        spec = getattr(cfg.data, role)
        if spec is not None and spec.path:
            spec.path = str(Path(spec.path).expanduser().absolute())
    return cfg


def check_reachable(address) -> None:
    """A cluster address that does not answer is one message in seconds (Ray itself would wait for minutes)."""
    if address in (None, "auto", "local"):
        return
    hostport = str(address).removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    try:
        if not 0 < int(port) < 65536:
            raise ValueError(f"port {port} out of range")
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            return
    except (OSError, ValueError) as e:
        raise UserError(
            f"scale.address={address!r}: cannot connect to a Ray cluster there ({type(e).__name__}); start "
            f"one with `ray start --head`, use address auto for the one running on this machine, or null "
            f"for a local one"
        ) from None


def run_on_ray(cfg: Config, worker) -> RunMetrics:
    """Train on Ray; the final model's metrics.json. Our failures come back as UserError / TrainingStopped.
    `worker(config)` is each worker's function (commands/ray_worker.py: it imports the ML stack in the worker,
    Unsloth first, which a module of this layer may not do at its top)."""
    import ray  # optional extra
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = absolute(cfg)
    output_dir = check_output_paths(cfg)
    raw = load_raw_splits(cfg)  # bad data: one message here, before any worker
    resolve_model_path(cfg, raw)  # a random-init or GGUF model built into the cache once, here
    sc = cfg.scale
    use_gpu = torch.cuda.is_available() if sc.use_gpu is None else sc.use_gpu
    with RunLock(output_dir):
        marker = output_dir / f".ray-driver-{uuid.uuid4().hex[:12]}"
        marker.write_text(json.dumps({"pid": os.getpid()}))
        try:
            check_reachable(sc.address)
            try:
                ray.init(address=sc.address, include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise UserError(
                    f"scale.address={sc.address!r}: cannot connect to a Ray cluster "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); start one with `ray start "
                    f"--head`, use address auto for the running one, or null for a local one"
                ) from None
            box_name = f"llm-summarizer-fatal-{marker.name}"
            box = ray.remote(FatalBox).options(name=box_name, num_cpus=0).remote()
            trainer = TorchTrainer(
                worker,
                train_loop_config={"cfg": config_to_dict(cfg), "marker": str(marker), "fatal_box": box_name},
                scaling_config=ScalingConfig(
                    num_workers=sc.num_workers,
                    use_gpu=use_gpu,
                    resources_per_worker=dict(sc.resources_per_worker) or None,
                ),
                run_config=RunConfig(
                    name=cfg.output.run_name,
                    storage_path=str(output_dir / "ray"),
                    failure_config=FailureConfig(max_failures=sc.max_failures),
                ),
            )
            log.info(
                "Ray: %d worker(s)%s, up to %d restart(s)",
                sc.num_workers,
                " on GPUs" if use_gpu else "",
                sc.max_failures,
            )
            try:
                trainer.fit()
            except ray.train.TrainingFailedError as e:
                fatal = sorted(ray.get(box.get.remote()))
                if fatal:  # one rank's own error, the others then failed waiting for it: that error is the news
                    _, code, message = fatal[0]
                    raise (UserError if code == EXIT_USER_ERROR else TrainingStopped)(message) from None
                raise TrainingStopped(
                    f"the Ray workers failed {sc.max_failures + 1 if sc.max_failures >= 0 else ''} "
                    f"time(s): {str(e).splitlines()[0][:500]}; the newest complete checkpoint in "
                    f"{output_dir} is kept: the same command resumes from it"
                ) from None
            fatal = sorted(ray.get(box.get.remote()))
        finally:
            marker.unlink(missing_ok=True)
            if ray.is_initialized():
                ray.shutdown()
    if fatal:  # our error, the same on every rank as a rule: rank 0's (the lowest) is the one shown
        _, code, message = fatal[0]
        raise (UserError if code == EXIT_USER_ERROR else TrainingStopped)(message)
    return RunMetrics.read(cfg.model_dir / METRICS_FILE)
