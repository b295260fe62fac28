"""The command boundary: what every command does before and after its work, and the project's two
import rules, stated and enforced here only.

1. Nothing heavy before the input is valid. `--help`, `--print-config` and every config or argument
   error answer without importing torch, transformers, datasets or unsloth: a command module imports
   only `config`, `config_loading`, `errors` and this module at its top, and imports the library (which
   imports the ML stack at its own top, like any Python module) inside its `run` function, after `load_config`.
2. unsloth before transformers, trl and peft. Unsloth patches them when it is imported, so a command
   that will use the unsloth backend calls `ml_stack("unsloth")` before its first library import; a
   command on the transformers backend never imports unsloth (export checks rely on such a process).

`run_command` turns the library's exceptions into exit codes: UserError -> 2 with one message and no
traceback, TrainingStopped -> 3, ExportFailed -> 1, Ctrl-C -> 130 with one line; secrets never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Optional

from ..config import ModelSection
from ..config_loading import config_to_dict, config_to_yaml, load_config
from ..errors import (
    EXIT_BROKEN_PIPE,
    EXIT_BUG,
    EXIT_DISK_FULL,
    EXIT_EXPORT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TRAINING_STOPPED,
    EXIT_USER_ERROR,
    ExportFailed,
    TrainingStopped,
    UserError,
    disk_full_message,
    is_disk_full,
)
from ..layout import CONFIG_FILE
from ..redaction import env_secrets, redact, secret_values

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
    # the command layer imports what a command needs after its arguments are checked (start-up time)
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
    try:
        with open(p, encoding="utf-8") as f:
            bindings = list(parse_stream(f))
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or type(e).__name__
        raise UserError(f"--env-file {path}: cannot be read as UTF-8 text ({why})") from None
    for b in bindings:  # the whole file is checked before anything is set
        if b.error:
            raise UserError(
                f"--env-file {path}, line {b.original.line}: expected KEY=VALUE (a value with spaces, "
                f"'#' or line breaks goes in quotes)"
            )
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
    p = Path(os.path.expanduser(str(model_dir))) / CONFIG_FILE
    if p.is_file():
        try:
            return load_config(p).model.backend
        except UserError:
            pass  # the library names the problem when it reads the directory
    return ModelSection.model_fields["backend"].default  # the config's default backend, as a new config has it


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A command's parser: the first line of `doc` as its description, the rest (examples) under --help."""
    ap = argparse.ArgumentParser(
        prog=prog,
        description=doc.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(doc.split("\n")[2:]),
    )
    ap.add_argument(
        "--progress",
        choices=["auto", "on", "off"],
        help="progress bars: auto (default: when stderr is a terminal or in a notebook), on, off; "
        "the same as LLM_SUMMARIZER_PROGRESS",
    )
    return ap


def run_command(parser, go: Callable, argv=None, interrupted: Optional[Callable] = None) -> int:
    """Parse args, load the config (when the parser has --config or overrides), call go(args, cfg).

    Library errors become one message and an exit code; Ctrl-C one line and exit 130 (`interrupted(cfg)` says how
    to continue); anything else is a bug and keeps its traceback (exit 1). Whatever is printed, and the command
    line itself (which trackers such as W&B record from sys.argv), has the secrets the user gave redacted first.
    """
    args = parser.parse_intermixed_args(argv)  # overrides may come before, between or after the options
    if getattr(args, "progress", None):
        os.environ["LLM_SUMMARIZER_PROGRESS"] = args.progress  # child processes follow it too
    setup_logging()
    secrets = Secrets(argv if argv is not None else sys.argv[1:])
    cfg = None
    try:
        with secrets.kept_out():
            if getattr(args, "env_file", None):
                names = load_env_file(args.env_file)
                log.info("loaded %d variable(s) from %s: %s", len(names), args.env_file, ", ".join(names) or "none new")
            if getattr(args, "config", None) is not None or hasattr(args, "overrides"):
                cfg = load_config(getattr(args, "config", None), getattr(args, "overrides", None))
                secrets.add_config(cfg)
            if getattr(args, "print_config", False):
                print(config_to_yaml(cfg), end="")
                return 0
            quiet_libraries()
            return int(go(args, cfg) or 0)
    except UserError as e:
        print(secrets.clean(f"error: {e}"), file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingStopped as e:
        print(secrets.clean(f"error: training stopped: {e}"), file=sys.stderr)
        return EXIT_TRAINING_STOPPED
    except ExportFailed as e:
        print(secrets.clean(f"error: export failed: {e}"), file=sys.stderr)
        return EXIT_EXPORT_FAILED
    except BrokenPipeError:
        return broken_pipe()
    except KeyboardInterrupt:
        how = interrupted(cfg) if interrupted is not None and cfg is not None else "rerun the same command to continue"
        print(f"\ninterrupted (Ctrl-C): what was complete is kept; {how}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if is_disk_full(e):
            # evaluate, summarize, export: what was complete stays as it was (atomic writes), so a rerun continues
            where = getattr(e, "filename", None) or "a file"
            print(secrets.clean(f"error: {disk_full_message(where, e)}"), file=sys.stderr)
            return EXIT_DISK_FULL
        # a bug: the whole traceback, for the report, with the user's secrets taken out of it
        print(secrets.clean("".join(traceback.format_exception(type(e), e, e.__traceback__))), file=sys.stderr, end="")
        return EXIT_BUG


def broken_pipe() -> int:
    """The reader of our output went away (`llm-summarizer configs | head -1`): it has what it wanted; say nothing,
    now or when the interpreter flushes stdout at exit."""
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured in-process): nothing to silence
        pass
    return EXIT_BROKEN_PIPE


class Secrets:
    """What the user typed that must not leave the process: values under secret-named keys, URL passwords and
    secret environment variables (redaction.py decides what is one). Kept out of printed errors, of every log
    line, and of sys.argv, which W&B records as the run's command line."""

    def __init__(self, argv: list[str]):
        self.argv = [str(a) for a in argv]
        self.values: list[str] = secret_values(self.argv)

    def add_config(self, cfg) -> None:
        self.values += secret_values(config_to_dict(cfg))

    def clean(self, text: str) -> str:
        return redact(text, [*self.values, *env_secrets()])

    @contextlib.contextmanager
    def kept_out(self):
        sys.argv[1:] = redact(sys.argv[1:], [*self.values, *env_secrets()])
        f = _RedactingFilter(self)
        root = logging.getLogger("llm_summarizer")
        root.addFilter(f)
        for h in root.handlers:
            h.addFilter(f)
        try:
            yield
        finally:
            root.removeFilter(f)
            for h in root.handlers:
                h.removeFilter(f)


class _RedactingFilter(logging.Filter):
    def __init__(self, secrets: Secrets):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a malformed log call: leave it to logging's own error report
            return True
        clean = self.secrets.clean(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True
