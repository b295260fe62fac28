"""What can go wrong on purpose, and the exit code each gives at the command line.

    UserError        bad input (config, data, paths, model files): one message, exit code 2
    TrainingStopped  a guard stopped training (non-finite loss, out of memory, disk full): exit code 3
    (a full disk)    in any command: exit code 3 (EXIT_DISK_FULL), the code of a run that stopped and continues
                     when rerun; one rule (is_disk_full) and one message (disk_full_message)
    ExportFailed     an export was made but does not behave like its source: exit code 1, nothing kept
    (Ctrl-C)         exit code 130 with one line saying how to continue; a closed output pipe: 141, silently

Library code raises these; only the command layer (`llm_summarizer.commands`) turns them into exit codes.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Optional

EXIT_EXPORT_FAILED = 1
EXIT_BUG = 1  # an exception that is none of ours: printed with its traceback (secrets redacted), for a bug report
EXIT_USER_ERROR = 2
EXIT_TRAINING_STOPPED = 3
EXIT_DISK_FULL = 3  # the same as a stopped run, for the same reason: fix the cause, rerun, it continues
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
EXIT_BROKEN_PIPE = 141  # the reader of our output went away (`| head`), as shells report SIGPIPE


class UserError(Exception):
    """An error in what the user gave us (config, data, paths). Printed as-is, exit code 2."""


class ConfigError(UserError):
    """Every problem of a config at once, each naming its key."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        self.source = source
        lines = [f"{source}: {len(problems)} problem(s):"] + [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


class DataError(UserError):
    """A data file or row that cannot be used; the message names the file and row."""


class TrainingStopped(Exception):
    """Training stopped on purpose by a guard; the message says why and what to do. Exit code 3."""


class ExportFailed(Exception):
    """The export was made but does not behave like the adapter (or a tool failed); nothing was kept."""


_WRITE_FAILED = ("file write failed", "write failed")


def is_disk_full(e: BaseException, where: Optional[Path] = None) -> bool:
    """An exception that reports a full disk, whichever library raised it: OSError ENOSPC/EDQUOT, or another type
    whose message carries the OS's words (pyarrow, safetensors' StorageFull, torch's writers); or what torch.save
    raises when the disk fills (a RuntimeError from its zip writer, "PytorchStreamWriter failed writing file ...:
    file write failed") when `where`'s disk is full."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    if "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text:
        return True
    if isinstance(e, RuntimeError) and where is not None and any(t in text.lower() for t in _WRITE_FAILED):
        probe = next((p for p in [Path(where), *Path(where).absolute().parents] if p.exists()), None)
        return probe is not None and shutil.disk_usage(probe).free < 16 << 20
    return False


def disk_full_message(
    where,
    e: BaseException,
    kept: str = "files that were complete before are unchanged and nothing half-written was kept",
    then: str = "rerun the same command (an evaluation continues from the predictions already written)",
) -> str:
    """The one message of a full disk: where, what the OS said, what was kept, what to do."""
    what = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [""])[0][:200]
    return (
        f"no space left on the device while writing {where} ({what}). {kept[0].upper() + kept[1:]}: free some "
        f"space and {then}."
    )
