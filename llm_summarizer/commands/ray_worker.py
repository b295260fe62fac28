"""The function each Ray Train worker runs (scale.engine: ray; the driver is llm_summarizer.scale.ray_engine).

It sits in the command layer because, like a command, it must import the ML stack itself, Unsloth first, after
the worker's environment is set: Ray imports this module in a fresh worker process to unpickle the function.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import Config
from ..errors import EXIT_TRAINING_STOPPED, EXIT_USER_ERROR, TrainingStopped, UserError
from . import boot


def worker(config: dict) -> None:
    """One Ray Train worker: a rank of the same training run."""
    # ray (the ray extra) only inside a Ray worker
    import ray.train

    ctx = ray.train.get_context()
    os.environ.update(
        RANK=str(ctx.get_world_rank()),
        WORLD_SIZE=str(ctx.get_world_size()),
        LOCAL_RANK=str(ctx.get_local_rank()),
        LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()),
    )
    code, message = 0, ""
    try:
        if not Path(config["marker"]).is_file():
            raise UserError(
                f"output.dir {Path(config['marker']).parent} is not visible from the Ray worker on "
                f"{os.uname().nodename}: put output.dir on storage every node mounts at the same path"
            )
        cfg = Config.model_validate(config["cfg"])
        boot.ml_stack(cfg.model.backend)  # Unsloth before transformers, in this worker process too
        # in the worker process, after Unsloth is imported first
        from ..training.run import run
        from ..training.trial import TrialReporter

        # a tune trial on Ray: the driver's environment reaches the workers, so each reports (rank 0 talks to the
        # study) and is pruned as a local trial is
        run(cfg, take_lock=False, reporter=TrialReporter.from_env())
    except UserError as e:
        code, message = EXIT_USER_ERROR, str(e)
    except TrainingStopped as e:
        code, message = EXIT_TRAINING_STOPPED, str(e)
    if code:
        # ray (the ray extra) only inside a Ray worker
        import ray

        box = ray.get_actor(config["fatal_box"])
        ray.get(box.put.remote(ctx.get_world_rank(), code, message[:4000]))
