"""Recognising the faults a run must survive: running out of memory, running out of disk."""

from __future__ import annotations

import errno
from pathlib import Path

import torch


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(where: Path, e: OSError) -> str:
    return (f"no space left on the device while writing {where} ({e.strerror or e}). Nothing was replaced: the "
            f"previous checkpoints and the final model directory are as they were. Free some space (or set "
            f"output.dir / output.model_dir elsewhere) and rerun to resume.")
