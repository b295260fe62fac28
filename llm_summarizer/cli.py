"""Shared command-line plumbing: config loading, logging, and turning user errors into exit code 2."""

from __future__ import annotations

import logging
import os
import sys

from .config import UserError, load_config

EXIT_USER_ERROR = 2


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger("llm_summarizer")
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
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


def run_cli(parser, go, argv=None) -> int:
    """Parse args, load the config (when the parser has --config), call go(args, cfg).

    A UserError anywhere prints one message and returns 2; nothing else is caught.
    """
    args = parser.parse_args(argv)
    setup_logging(os.environ.get("LLM_SUMMARIZER_LOG_LEVEL", "INFO"))
    try:
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
