"""The tune driver: an Optuna study whose trials are training runs, each in a process of its own.

    run_study(cfg, config_arg, overrides, n_trials) -> summary dict

The study lives in an Optuna storage (SQLite in the study folder by default), so the same command run again
continues it: finished trials stay, a trial left RUNNING by a driver that died is marked failed and its
parameters queued again with its run folder, whose train process then resumes from its own checkpoint.
Each trial is `llm-summarizer train` with the user's config and overrides, the trial's parameters as
overrides, its own output folders and W&B run (grouped by the study name); its intermediate ROUGE goes to the
study from inside the run (training.trial.TrialReporter), which stops training when the pruner says so.
A trial's value is the final model's ROUGE from its metrics.json. Exit codes of a trial: 0 done (or
pruned), 2 a user error (the study stops: every trial would fail the same way), 3 training stopped (NaN,
out of memory: the trial fails, the study goes on), anything else a crash (retried up to tune.max_retries).
"""

from __future__ import annotations

import csv
import ctypes
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import optuna

from ..config import Config
from ..config_loading import load_config
from ..contracts import RunMetrics
from ..errors import EXIT_TRAINING_STOPPED, EXIT_USER_ERROR, UserError
from ..files import write_json, write_text
from ..layout import (
    BEST_CONFIG,
    CONFIG_FILE,
    FINE_TUNED_DIR,
    METRICS_FILE,
    OUTPUTS_DIR,
    STUDY_DB,
    SUMMARY_JSON,
    TRIALS_CSV,
    TUNE_SUFFIX,
)
from ..paths import Place, check_places, claim
from ..training.guards import RunLock
from ..training.run import run_sources
from ..training.trial import TRIAL_ENV, make_pruner

log = logging.getLogger("llm_summarizer.tune")


def tune_dir(cfg: Config) -> Path:
    return Path(cfg.tune.dir or os.path.join(OUTPUTS_DIR, cfg.output.run_name + TUNE_SUFFIX))


def storage_url(cfg: Config, folder: Path) -> str:
    return cfg.tune.storage or f"sqlite:///{(folder / STUDY_DB).resolve()}"


def format_value(v) -> str:
    """A parameter value as an override the config parser reads back exactly."""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def check_space(cfg: Config, config_arg: Optional[str], overrides: list[str]) -> None:
    """Every searched key exists and takes the distribution's values: checked as overrides, before any trial."""
    space = cfg.tune.space
    if not space:
        raise UserError(
            "tune.space is empty: name the config keys to search, e.g. tune.space={train.learning_rate: "
            "{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}"
        )
    for key, p in space.items():
        if key.startswith(("tune.", "output.")):
            raise UserError(f"tune.space.{key}: the study's own settings and output folders cannot be searched")
        samples = p.choices if p.type == "categorical" else [p.low, p.high]
        if p.type == "int":
            samples = [int(v) for v in samples]
        for v in samples:
            try:
                load_config(config_arg, [*overrides, f"{key}={format_value(v)}"])
            except UserError as e:
                raise UserError(f"tune.space.{key} (value {format_value(v)}): {e}") from None


def suggest(trial: optuna.Trial, cfg: Config) -> dict:
    params = {}
    for key, p in cfg.tune.space.items():
        if p.type == "float":
            params[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            params[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            params[key] = trial.suggest_categorical(key, p.choices)
    return params


def pruner_spec(cfg: Config) -> dict:
    t = cfg.tune
    return {"kind": t.pruner, "n_startup_trials": t.prune_startup_trials, "n_warmup_steps": t.prune_warmup_steps}


def make_study(cfg: Config, storage: str, name: str) -> optuna.Study:
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            pruner=make_pruner(pruner_spec(cfg)),
            direction="maximize",
            load_if_exists=True,
        )
    except Exception as e:  # an unreachable database, a bad URL: named by type only (the URL may hold a password)
        raise UserError(
            f"tune.storage: cannot open the study database ({type(e).__name__}); check the URL, that "
            f"the database server answers, and that its driver is installed"
        ) from None
    # Seeded by tune.seed and the trials already in the study: a resumed driver does not draw the same
    # start-up parameters again.
    study.sampler = optuna.samplers.TPESampler(
        seed=cfg.tune.seed + len(study.get_trials(deepcopy=False)), n_startup_trials=cfg.tune.n_startup_trials
    )
    return study


def requeue_orphans(study: optuna.Study) -> int:
    """Trials RUNNING when no driver runs (this one holds the lock) belong to a driver that died: failed, and
    queued again with their parameters and run folder (whose checkpoints the retry resumes from)."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(
            t.params,
            user_attrs={
                "run_dir": t.user_attrs.get("run_dir"),
                "retries": int(t.user_attrs.get("retries", 0)),
                "retry_of": t.number,
            },
        )
        log.warning(
            "tune: trial %d was running when the last driver stopped; queued again (it resumes from its checkpoints)",
            t.number,
        )
        n += 1
    return n


def _die_with_parent() -> None:
    """The trial's process ends when the driver does, however it ends (Linux: PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:
        pass


def run_trial(cmd: list[str], env: dict, log_path: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        try:
            return p.wait()
        except BaseException:
            p.kill()
            p.wait()
            raise


def finished(study: optuna.Study) -> list:
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in done or (t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("final"))
    ]


def _quiet(line: str) -> None:
    pass


def run_study(
    cfg: Config, config_arg: Optional[str], overrides: list[str], n_trials: int, say: Callable[[str], None] = _quiet
) -> dict:
    """Runs the study to n_trials finished trials and returns its summary; `say` gets one line per trial event
    (started, its value, pruned, failed, retried): the tune command prints them."""
    folder = tune_dir(cfg)
    check_places([Place("tune.dir", folder, "tune")], run_sources(cfg))
    check_space(cfg, config_arg, overrides)
    claim(folder, "tune")
    name = cfg.tune.study_name or cfg.output.run_name
    metric = cfg.tune.metric
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with RunLock(folder):  # one driver per study folder
        storage = storage_url(cfg, folder)
        study = make_study(cfg, storage, name)
        requeue_orphans(study)
        while len(finished(study)) < n_trials:
            trial = study.ask()
            params = suggest(trial, cfg)
            run_dir = Path(trial.user_attrs.get("run_dir") or folder / f"trial-{trial.number:03d}")
            retries = int(trial.user_attrs.get("retries", 0))
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr("retries", retries)
            trial_overrides = [
                *overrides,
                *(f"{k}={format_value(v)}" for k, v in params.items()),
                f"output.dir={run_dir / OUTPUTS_DIR}",
                f"output.model_dir={run_dir / FINE_TUNED_DIR}",
                f"output.run_name={name}-trial-{trial.number:03d}",
                f"tracking.group={name}",
                f"tracking.run_name={name}-trial-{trial.number:03d}",
                "output.push_to_hub=false",
                # the storage URL may hold a password: the trial gets it in its environment only,
                # never in its saved config.yaml or model card
                "tune.storage=null",
            ]
            cmd = [
                sys.executable,
                "-m",
                "llm_summarizer",
                "train",
                *(["--config", config_arg] if config_arg else []),
                *trial_overrides,
            ]
            env = dict(os.environ)
            env[TRIAL_ENV] = json.dumps(
                {
                    "storage": storage,
                    "study": name,
                    "trial_id": trial._trial_id,
                    "trial_number": trial.number,
                    "metric": metric,
                    "pruner": pruner_spec(cfg),
                }
            )
            shown = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
            say(f"[tune] trial {trial.number} ({len(finished(study)) + 1}/{n_trials}): {shown}")
            t0 = time.time()
            rc = run_trial(cmd, env, run_dir / "train.log")
            seconds = round(time.time() - t0, 1)
            trial_record(trial, rc, seconds)
            if rc == 0:
                m = RunMetrics.read(run_dir / FINE_TUNED_DIR / METRICS_FILE)
                value = m.final_score(metric)
                pruned = (m.tune or {}).get("pruned_at_step")
                if pruned is not None:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    say(f"[tune] trial {trial.number}: pruned at step {pruned} ({seconds:.0f} s)")
                elif value is None:
                    trial.set_user_attr("final", True)
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    say(f"[tune] trial {trial.number}: no {metric} in its metrics.json (eval.generate off?)")
                else:
                    study.tell(trial, float(value))
                    say(f"[tune] trial {trial.number}: {metric}={value:.4f} ({seconds:.0f} s)")
                continue
            tail = _log_tail(run_dir / "train.log")
            if rc == EXIT_USER_ERROR:
                trial.set_user_attr("final", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise UserError(
                    f"tune: trial {trial.number} stopped with a user error (every trial would): "
                    f"{tail}; its log: {run_dir / 'train.log'}"
                )
            if rc == EXIT_TRAINING_STOPPED or retries >= cfg.tune.max_retries:
                trial.set_user_attr("final", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                say(f"[tune] trial {trial.number}: failed (exit code {rc}): {tail}; the study goes on")
                continue
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(
                params, user_attrs={"run_dir": str(run_dir), "retries": retries + 1, "retry_of": trial.number}
            )
            say(f"[tune] trial {trial.number}: its process ended with exit code {rc}; retrying from its checkpoints")
        return write_summary(study, cfg, folder, metric, config_arg, overrides)


def trial_record(trial, rc: int, seconds: float) -> None:
    trial.set_user_attr("exit_code", rc)
    trial.set_user_attr("seconds", seconds)


def _log_tail(path: Path) -> str:
    try:
        lines = [l for l in path.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
    except OSError:
        return "(no log)"
    err = [l for l in lines if l.startswith("error:")]
    return (err[-1] if err else (lines[-1] if lines else "(empty log)"))[:300]


def write_summary(study: optuna.Study, cfg: Config, folder: Path, metric: str, config_arg, overrides) -> dict:
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    keys = list(cfg.tune.space)
    rows = [
        {
            "trial": t.number,
            "state": t.state.name.lower(),
            metric: t.value,
            **{k: t.params.get(k) for k in keys},
            "seconds": t.user_attrs.get("seconds"),
            "run_dir": t.user_attrs.get("run_dir"),
        }
        for t in trials
    ]
    with open(folder / TRIALS_CSV, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial"])
        w.writeheader()
        w.writerows(rows)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    summary = {"study": study.study_name, "metric": metric, "trials": rows, "best": None}
    if complete:
        best = study.best_trial
        run_dir = Path(best.user_attrs["run_dir"])
        shutil.copyfile(run_dir / FINE_TUNED_DIR / CONFIG_FILE, folder / BEST_CONFIG)
        summary["best"] = {
            "trial": best.number,
            metric: best.value,
            "params": best.params,
            "model_dir": str(run_dir / FINE_TUNED_DIR),
            "config": str(folder / BEST_CONFIG),
            "evaluate": f"llm-summarizer evaluate --model {shlex.quote(str(run_dir / FINE_TUNED_DIR))} --compare-base",
        }
    write_json(folder / SUMMARY_JSON, summary)
    write_text(folder / "summary.txt", "\n".join(summary_lines(summary, keys)) + "\n")
    return summary


def summary_lines(summary: dict, keys: list[str]) -> list[str]:
    metric = summary["metric"]
    head = ["trial", "state", metric, *keys, "seconds"]
    table = [
        [
            str(r["trial"]),
            r["state"],
            "" if r[metric] is None else f"{r[metric]:.4f}",
            *(format_value(r[k]) if r[k] is not None else "" for k in keys),
            "" if r["seconds"] is None else f"{r['seconds']:.0f}",
        ]
        for r in summary["trials"]
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *table)]
    lines = ["", f"== llm_summarizer tune: study {summary['study']}, {len(table)} trial(s)"]
    lines += ["   " + "  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["   " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
    b = summary["best"]
    if b:
        lines += [
            "",
            f"   best: trial {b['trial']}, {metric}={b[metric]:.4f}",
            f"   its resolved config: {b['config']}",
            f"   its model:           {b['model_dir']}",
            f"   evaluate it:         {b['evaluate']}",
        ]
    else:
        lines += ["", "   no trial completed"]
    return lines
