"""Recognising the faults a run must survive: running out of memory (here) and out of disk (errors.is_disk_full)."""

from __future__ import annotations

import torch


def is_oom(e: BaseException) -> bool:
    """Out of memory on any device: CUDA's error, what accelerate recognises (HIP, XPU, MPS, CPU allocator,
    cuDNN's not-supported), or any RuntimeError that says "out of memory"."""
    # accelerate imports torch: only when an error is being classified
    from accelerate.utils.memory import should_reduce_batch_size

    return (
        isinstance(e, torch.cuda.OutOfMemoryError)
        or should_reduce_batch_size(e)
        or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())
    )
