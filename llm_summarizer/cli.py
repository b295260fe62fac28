"""Shared command-line plumbing: config loading, logging, and turning user errors into exit code 2."""

from __future__ import annotations

import logging
import os
import sys

from .config import UserError, load_config

EXIT_USER_ERROR = 2
EXIT_TRAINING_STOPPED = 3  # a guard stopped training (non-finite loss, out of memory, disk full)


class _CurrentStderr(logging.StreamHandler):
    """Writes to sys.stderr as it is when a line is logged: notebooks and test runners swap it."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger("llm_summarizer")
    if not any(type(h) is _CurrentStderr for h in root.handlers):
        h = _CurrentStderr()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(h)
    root.setLevel(level)
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
    import re

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


def run_cli(parser, go, argv=None) -> int:
    """Parse args, load the config (when the parser has --config), call go(args, cfg).

    A UserError anywhere prints one message and returns 2; nothing else is caught.
    """
    args = parser.parse_args(argv)
    setup_logging(os.environ.get("LLM_SUMMARIZER_LOG_LEVEL", "INFO"))
    try:
        if getattr(args, "env_file", None):
            names = load_env_file(args.env_file)
            logging.getLogger("llm_summarizer").info("loaded %d variable(s) from %s: %s", len(names),
                                                     args.env_file, ", ".join(names) or "none new")
        cfg = None
        if getattr(args, "config", None) is not None or hasattr(args, "overrides"):
            cfg = load_config(getattr(args, "config", None), getattr(args, "overrides", None))
        if getattr(args, "print_config", False):
            from .config import config_to_yaml

            print(config_to_yaml(cfg), end="")
            return 0
        quiet_libraries()
        return int(go(args, cfg) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:
        from .guards import TrainingStopped

        if isinstance(e, TrainingStopped):
            print(f"error: training stopped: {e}", file=sys.stderr)
            return EXIT_TRAINING_STOPPED
        raise
