"""Recognising the faults a run must survive: running out of memory, running out of disk."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import torch

from .errors import says_disk_full


def is_oom(e: BaseException) -> bool:
    """Out of memory on any device: CUDA's error, what accelerate recognises (HIP, XPU, MPS, CPU allocator,
    cuDNN's not-supported), or any RuntimeError that says "out of memory"."""
    # accelerate imports torch: only when an error is being classified
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(e, torch.cuda.OutOfMemoryError) or should_reduce_batch_size(e) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


_WRITE_FAILED = ("file write failed", "write failed")


def is_disk_full(e: BaseException, where: Optional[Path] = None) -> bool:
    """An OSError ENOSPC/EDQUOT; or what torch.save raises when the disk fills (a RuntimeError from its zip
    writer, "PytorchStreamWriter failed writing file ...: file write failed") when `where`'s disk is full."""
    if says_disk_full(e):
        return True
    if isinstance(e, RuntimeError) and any(t in str(e).lower() for t in _WRITE_FAILED):
        if where is not None:
            probe = next((p for p in [Path(where), *Path(where).absolute().parents] if p.exists()), None)
            return probe is not None and shutil.disk_usage(probe).free < 16 << 20
    return False


def disk_full_message(where: Path, e: BaseException) -> str:
    what = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [""])[0][:200]
    return (f"no space left on the device while writing {where} ({what}). Nothing was replaced: the "
            f"previous checkpoints and the final model directory are as they were. Free some space (or set "
            f"output.dir / output.model_dir elsewhere) and rerun to resume.")
