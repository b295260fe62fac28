"""What can go wrong on purpose, and the exit code each gives at the command line.

    UserError        bad input (config, data, paths, model files): one message, exit code 2
    TrainingStopped  a guard stopped training (non-finite loss, out of memory, disk full): exit code 3
    (a full disk)    OSError ENOSPC in any other command: exit code 3 too, with what to do
    ExportFailed     an export was made but does not behave like its source: exit code 1, nothing kept
    (Ctrl-C)         exit code 130 with one line saying how to continue; a closed output pipe: 141, silently

Library code raises these; only the command layer (`llm_summarizer.commands`) turns them into exit codes.
"""

from __future__ import annotations

import errno

EXIT_EXPORT_FAILED = 1
EXIT_BUG = 1  # an exception that is none of ours: printed with its traceback (secrets redacted), for a bug report
EXIT_USER_ERROR = 2
EXIT_TRAINING_STOPPED = 3
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


def says_disk_full(e: BaseException) -> bool:
    """An exception that reports a full disk, whichever library raised it: OSError ENOSPC/EDQUOT, or another type
    whose message carries the OS's words (pyarrow, safetensors' StorageFull, torch's writers)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text
