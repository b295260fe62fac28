"""Several ranks (torchrun, accelerate launch, Ray Train workers): who does what, and waiting for each other.

Everything here is a no-op in a single process, so the training code calls it unconditionally. A rank is
known from the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK) before torch.distributed is set up;
`init()` sets up the process group early (gloo on a CPU, nccl on GPUs) so that the run's own steps (the
lock, the staging cleanup, the data cache) can wait for rank 0 before the trainer exists; transformers and
accelerate then use that same group.

Who does what: rank 0 alone takes the run lock, clears a killed run's leftovers, resolves the checkpoint to
resume from (and tells the others), builds caches (random-init model, GGUF conversion, tokenized data) that
the others then read, publishes checkpoints once every rank wrote its part, writes predictions, the final
model, the report and tracker runs. Every rank trains on its shard and generates its share of the ROUGE
summaries; the texts are gathered so that every rank computes the same metrics (early stopping and best
checkpoint decisions agree).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    return rank() == 0


def distributed() -> bool:
    return world_size() > 1


def initialized() -> bool:
    # torch only when asked: this module is read by the command layer before the ML stack loads
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def init(timeout_s: int = 1800) -> None:
    """The process group, when launched as several ranks and nobody set it up yet."""
    if not distributed() or initialized():
        return
    # torch only when asked: this module is read by the command layer before the ML stack loads
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))


def barrier() -> None:
    if distributed() and initialized():
        # torch only when asked: this module is read by the command layer before the ML stack loads
        import torch.distributed as dist

        dist.barrier()


def broadcast(obj: Any, src: int = 0) -> Any:
    """rank `src`'s object on every rank (any picklable value)."""
    if not (distributed() and initialized()):
        return obj
    # torch only when asked: this module is read by the command layer before the ML stack loads
    import torch.distributed as dist

    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather(obj: Any) -> list:
    """Every rank's object, in rank order, on every rank."""
    if not (distributed() and initialized()):
        return [obj]
    # torch only when asked: this module is read by the command layer before the ML stack loads
    import torch.distributed as dist

    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (it builds a cache); the others run it after (they find the cache)."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def shard(n: int) -> list[int]:
    """This rank's indices of n items: every world_size-th, starting at its rank (all of them when no process
    group is set up, so that shard and gather agree)."""
    if not (distributed() and initialized()):
        return list(range(n))
    return list(range(rank(), n, world_size()))


def unshard(parts: list[list], n: int) -> list:
    """Items put back in order from every rank's shard (as `shard` split them)."""
    out: list = [None] * n
    for r, part in enumerate(parts):
        for i, item in zip(range(r, n, len(parts)), part):
            out[i] = item
    return out
