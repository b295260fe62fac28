"""The command boundary: what every command does before and after its work, and the project's two
import rules, stated and enforced here only.

1. Nothing heavy before the input is valid. `--help`, `--print-config` and every config or argument
   error answer without importing torch, transformers, datasets or unsloth: a command module imports
   only `config`, `errors` and this module at its top, and imports the library (which imports the ML
   stack at its own top, like any Python module) inside its `run` function, after `load_config`.
2. unsloth before transformers, trl and peft. Unsloth patches them when it is imported, so a command
   that will use the unsloth backend calls `ml_stack("unsloth")` before its first library import; a
   command on the transformers backend never imports unsloth (export checks rely on such a process).

`run_command` turns the library's exceptions into exit codes: UserError -> 2 with one message and no
traceback, TrainingStopped -> 3, ExportFailed -> 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import Callable, Optional

from ..config import UserError, config_to_yaml, load_config
from ..errors import (
    EXIT_EXPORT_FAILED,
    EXIT_TRAINING_STOPPED,
    EXIT_USER_ERROR,
    ExportFailed,
    TrainingStopped,
    says_disk_full,
)

log = logging.getLogger("llm_summarizer")


class _CurrentStderr(logging.StreamHandler):
    """Writes to sys.stderr as it is when a line is logged: notebooks and test runners swap it."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(level: Optional[str] = None) -> None:
    root = logging.getLogger("llm_summarizer")
    if not any(type(h) is _CurrentStderr for h in root.handlers):
        h = _CurrentStderr()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(h)
    root.setLevel(level or os.environ.get("LLM_SUMMARIZER_LOG_LEVEL", "INFO"))
    root.propagate = False


def quiet_libraries() -> None:
    """Keep the noise of the ML stack out of the way of our own log lines."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def load_env_file(path: str) -> list[str]:
    """KEY=VALUE lines (e.g. WANDB_API_KEY, HF_TOKEN) into the environment; values are never printed.

    Variables already set in the environment win. Returns the names that were set.
    """
    p = os.path.expanduser(path)
    if not os.path.isfile(p):
        raise UserError(f"--env-file: file not found: {path}")
    names = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = re.fullmatch(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)", line)
            if not m:
                raise UserError(f"--env-file {path}, line {n}: expected KEY=VALUE")
            key, value = m.group(1), m.group(2).strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            if key not in os.environ:
                os.environ[key] = value
                names.append(key)
    return names


def ml_stack(backend: Optional[str]) -> None:
    """Rule 2: import unsloth first when the unsloth backend will be used (a missing install is a UserError)."""
    if backend == "unsloth":
        from ..models.unsloth_first import import_unsloth  # imports nothing before unsloth

        import_unsloth()


def saved_model_backend(model_dir, flag: Optional[str]) -> str:
    """The backend a saved model directory will be loaded on (--backend, else its config.yaml's), read
    without importing anything heavy so that rule 2 can be kept."""
    if flag:
        return flag
    p = Path(os.path.expanduser(str(model_dir))) / "config.yaml"
    if p.is_file():
        try:
            return load_config(p).model.backend
        except UserError:
            pass  # the library names the problem when it reads the directory
    return "unsloth"


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A command's parser: the first line of `doc` as its description, the rest (examples) under --help."""
    return argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="\n".join(doc.split("\n")[2:]))


def run_command(parser, go: Callable, argv=None) -> int:
    """Parse args, load the config (when the parser has --config or overrides), call go(args, cfg).

    Library errors become one message and an exit code; anything else is a bug and keeps its traceback.
    """
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if getattr(args, "env_file", None):
            names = load_env_file(args.env_file)
            log.info("loaded %d variable(s) from %s: %s", len(names), args.env_file, ", ".join(names) or "none new")
        cfg = None
        if getattr(args, "config", None) is not None or hasattr(args, "overrides"):
            cfg = load_config(getattr(args, "config", None), getattr(args, "overrides", None))
        if getattr(args, "print_config", False):
            print(config_to_yaml(cfg), end="")
            return 0
        quiet_libraries()
        return int(go(args, cfg) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingStopped as e:
        print(f"error: training stopped: {e}", file=sys.stderr)
        return EXIT_TRAINING_STOPPED
    except ExportFailed as e:
        print(f"error: export failed: {e}", file=sys.stderr)
        return EXIT_EXPORT_FAILED
    except Exception as e:
        if not says_disk_full(e):
            raise
        # evaluate, summarize, export: what was complete stays as it was (atomic writes), so a rerun continues
        where = getattr(e, "filename", None) or getattr(e, "strerror", None) or (str(e).splitlines() or [""])[0][:200]
        print(f"error: no space left on the device ({where}). Files that were complete "
              f"before are unchanged and nothing half-written was kept: free some space and rerun the same command "
              f"(an evaluation continues from the predictions already written).", file=sys.stderr)
        return EXIT_TRAINING_STOPPED
