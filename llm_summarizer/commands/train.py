"""Fine-tune a summarizer: llm-summarizer train --config NAME_OR_FILE [key=value ...]

    llm-summarizer train --config demo                           # offline demo, CPU, minutes
    llm-summarizer train --config default                        # a real model + dataset (network)
    llm-summarizer train --config demo train.max_steps=50 lora.r=8
    llm-summarizer train --config my.yaml --print-config         # the resolved config, then exit
    llm-summarizer configs                                       # the ready configs

Checkpoints go to output.dir (default outputs/<run_name>/); running the same command again resumes
from the newest complete checkpoint there (train.resume=auto|never|PATH). The fine-tuned adapter,
tokenizer, config.yaml, metrics.json and a model card go to output.model_dir (default
fine_tuned/<run_name>/), written atomically.
"""

from __future__ import annotations

import argparse

from ..errors import UserError
from . import boot

PROG = "llm-summarizer train"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = boot.parser(prog, __doc__)
    ap.add_argument(
        "--config", help="a ready config by name (demo, default, ...; see `llm-summarizer configs`) or a YAML file"
    )
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ap.add_argument("--env-file", help="a .env file with WANDB_API_KEY / HF_TOKEN etc. (never logged or saved)")
    ap.add_argument(
        "overrides", nargs="*", help="dotted overrides: train.learning_rate=1e-4 lora.target_modules=[q_proj,v_proj]"
    )
    return ap


def run(args, cfg) -> int:
    boot.ml_stack(cfg.model.backend)
    if cfg.scale.engine == "ray":
        return run_ray(cfg)
    # after the config is checked: the ML stack loads only for a valid run
    from ..training.run import run as train_run
    from ..training.summary import summary_lines
    from ..training.trial import TrialReporter

    # a trial process started by `llm-summarizer tune` reports to the driver's study (its spec in the environment)
    result = train_run(cfg, reporter=TrialReporter.from_env())
    print("\n".join(summary_lines(result)))
    return 0


def run_ray(cfg) -> int:
    try:
        import ray.train  # noqa: F401  (an optional extra)
    except ImportError:
        raise UserError("scale.engine=ray needs Ray Train: pip install 'llm_summarizer[ray]' (ray[train])") from None
    # ray (the ray extra) only for scale.engine=ray
    from ..scale.ray_engine import run_on_ray
    from .ray_worker import worker

    metrics = run_on_ray(cfg, worker)
    # after the Ray run: the ML stack stays out of the driver until then
    from ..training.run import RunResult
    from ..training.summary import summary_lines

    result = RunResult(cfg.output_dir.absolute(), cfg.model_dir.absolute(), metrics)
    print("\n".join(summary_lines(result, f" on Ray ({metrics.train.world_size} workers)")))
    return 0


def main(argv=None, prog: str = PROG) -> int:
    return boot.run_command(build_parser(prog), run, argv, interrupted=resume_hint)


def resume_hint(cfg) -> str:
    return (
        f"rerun the same command to resume from the newest complete checkpoint in {cfg.output_dir}/ (train.resume=auto)"
    )
