"""Search hyperparameters on ROUGE: llm-summarizer tune --config NAME_OR_FILE --trials N [key=value ...]

    llm-summarizer tune --config tiny --trials 8 \
        'tune.space={train.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true},
                    lora.r: {type: categorical, choices: [8, 16, 32]}}'
    llm-summarizer tune --config my.yaml --trials 20          # the space in my.yaml's tune section
    optuna-dashboard sqlite:///outputs/summarizer-tune/study.db  # watch it (pip install optuna-dashboard)

An Optuna study (TPE sampler with tune.seed, median pruning on the ROUGE of each evaluation) whose trials
are training runs, each in its own process with its own folders under tune.dir (default
outputs/<run_name>-tune/trial-NNN/) and W&B run (grouped by the study name). The study is stored in
tune.storage (default sqlite:///<tune.dir>/study.db; any SQLAlchemy URL), so running the same command
again continues it: a trial that was running when the driver stopped resumes from its own checkpoints.
At the end: a table of every trial, trials.csv, summary.json, the best trial's resolved config
(best_config.yaml) and the evaluate command for its model.
"""

from __future__ import annotations

import argparse

from ..errors import UserError
from . import boot

PROG = "llm-summarizer tune"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = boot.parser(prog, __doc__)
    ap.add_argument("--config", help="a ready config by name or a YAML file: every trial's base")
    ap.add_argument(
        "--trials",
        type=int,
        required=True,
        help="finished trials the study should hold (a rerun adds only the missing ones)",
    )
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ap.add_argument("--env-file", help="a .env file with WANDB_API_KEY / HF_TOKEN etc. (never logged or saved)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides for every trial, and tune.* settings")
    return ap


def run(args, cfg) -> int:
    if args.trials < 1:
        raise UserError("--trials must be at least 1")
    try:
        # after the arguments are checked: optuna and the ML stack load only for a valid command
        from ..tune.study import run_study, summary_lines
    except ImportError as e:
        if "optuna" not in str(e):
            raise
        raise UserError("tune needs Optuna: pip install 'llm_summarizer[tune]' (or pip install optuna)") from None
    trial_overrides = [o for o in args.overrides if not o.startswith("tune.")]
    summary = run_study(cfg, args.config, trial_overrides, args.trials, say=lambda line: print(line, flush=True))
    print("\n".join(summary_lines(summary, list(cfg.tune.space))))
    return 0


def main(argv=None, prog: str = PROG) -> int:
    return boot.run_command(build_parser(prog), run, argv)
