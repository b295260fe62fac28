"""Importing unsloth, the one way: before transformers, trl and peft (it patches them on import), quietly,
and with a message that says how to install it when it is missing. This module imports nothing heavy,
so the command layer can call it before anything else (llm_summarizer.commands.boot, rule 2).
"""

from __future__ import annotations

import contextlib
import os
import sys
from importlib import metadata

from ..errors import UserError


def import_unsloth():
    """Import unsloth (before transformers/trl/peft so its patches apply everywhere); a missing install is
    one message with the fix."""
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    try:
        # Unsloth prints its banner; standard output belongs to the commands' results (summaries, JSON).
        with contextlib.redirect_stdout(sys.stderr):
            # the one import of unsloth, before transformers, trl and peft: its patches must come first
            import unsloth
    except ImportError as e:
        if getattr(e, "name", None) not in ("unsloth", "unsloth_zoo"):
            raise
        try:
            have = f" (installed: unsloth {metadata.version('unsloth')})"
        except metadata.PackageNotFoundError:
            have = ""
        raise UserError(
            f"model.backend=unsloth needs the unsloth package, which is not importable{have}: {e}. Install it "
            f"with `bash scripts/setup_env.sh` in a checkout of llm_summarizer, or with `pip install --no-deps "
            f"-r requirements/unsloth.txt` (its pinned unsloth and unsloth_zoo) after this package's "
            f"dependencies; or use model.backend=transformers (--backend transformers)."
        ) from None
    return unsloth
