"""Progress bars for the long steps, on where someone watches and off in logs.

`LLM_SUMMARIZER_PROGRESS=on|off|auto` (or `--progress on|off` on every command, which sets it) decides;
`auto` (the default) shows bars when stderr is a terminal or the process runs inside Jupyter/Colab, and
none when output goes to a file or a pipe, so CI logs stay clean. Bars come from tqdm (`tqdm.auto`: a
widget in notebooks), with counts, rate and ETA.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

ENV = "LLM_SUMMARIZER_PROGRESS"


def in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    try:
        ip = shell.get_ipython() if shell is not None else None  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - any failure means "not a notebook"
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def enabled() -> bool:
    mode = os.environ.get(ENV, "auto").strip().lower()
    if mode in ("on", "1", "true", "yes"):
        return True
    if mode in ("off", "0", "false", "no"):
        return False
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tty or in_notebook()


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def update_to(self, done: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Bar(_Silent):
    def __init__(self, total: int, desc: str, unit: str):
        # tqdm loads only when a bar is actually shown
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def update_to(self, done: int) -> None:
        self._bar.update(max(0, done - self._bar.n))

    def close(self) -> None:
        self._bar.refresh()  # the final count is shown even when the work took less than tqdm's refresh interval
        self._bar.close()


def bar(total: int, desc: str, unit: str = "it", show: Optional[bool] = None):
    """A context-managed bar (`update(n)`, `update_to(done)`); a silent one when progress is off."""
    if total <= 0 or not (enabled() if show is None else show):
        return _Silent()
    return _Bar(total, desc, unit)
