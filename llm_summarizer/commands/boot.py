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
    from ..progress import enabled

    if not enabled():  # datasets' own bars (data preparation) follow --progress / LLM_SUMMARIZER_PROGRESS
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def load_env_file(path: str) -> list[str]:
    """KEY=VALUE lines (e.g. WANDB_API_KEY, HF_TOKEN) into the environment; values are never printed.

    Parsed by python-dotenv: `export KEY=...`, single or double quotes, quoted values over several lines and
    inline `# comments` after unquoted values. Variables already set in the environment win. Returns the names
    that were set. A line it cannot read is one message naming the file and line (never its text: it may hold
    a secret).
    """
    from dotenv.parser import parse_stream  # small, pure Python; only when --env-file is given

    p = os.path.expanduser(path)
    if not os.path.isfile(p):
        raise UserError(f"--env-file: file not found: {path}")
    names = []
    with open(p, encoding="utf-8") as f:
        bindings = list(parse_stream(f))
    for b in bindings:  # the whole file is checked before anything is set
        if b.error:
            raise UserError(f"--env-file {path}, line {b.original.line}: expected KEY=VALUE (a value with spaces, "
                            f"'#' or line breaks goes in quotes)")
    for b in bindings:
        if b.key is None:
            continue  # a comment or a blank line
        if b.key not in os.environ:
            os.environ[b.key] = b.value if b.value is not None else ""
            names.append(b.key)
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
    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(doc.split("\n")[2:]))
    ap.add_argument("--progress", choices=["auto", "on", "off"],
                    help="progress bars: auto (default: when stderr is a terminal or in a notebook), on, off; "
                         "the same as LLM_SUMMARIZER_PROGRESS")
    return ap


def run_command(parser, go: Callable, argv=None) -> int:
    """Parse args, load the config (when the parser has --config or overrides), call go(args, cfg).

    Library errors become one message and an exit code; anything else is a bug and keeps its traceback.
    """
    args = parser.parse_args(argv)
    if getattr(args, "progress", None):
        os.environ["LLM_SUMMARIZER_PROGRESS"] = args.progress  # child processes follow it too
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
