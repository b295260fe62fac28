"""Guards that keep a run from failing silently or losing work.

- `stopping.NonFiniteGuard`: a NaN/inf gradient stops training or skips the step (raises TrainingStopped).
- `RunLock`: one run per output directory; a second process refuses to start and names the first.
- `training_errors`: out of memory and disk full become one message with what to do (TrainingStopped).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pickle
from pathlib import Path
from typing import Optional

from ..config import Config
from ..errors import TrainingStopped, UserError, disk_full_message, is_disk_full
from ..faults import is_oom
from ..layout import LOCK_FILE

log = logging.getLogger("llm_summarizer.guards")


def oom_advice(cfg: Config) -> str:
    m, t = cfg.model, cfg.train
    tips = []
    if t.per_device_train_batch_size > 1:
        tips.append(
            f"train.per_device_train_batch_size={max(1, t.per_device_train_batch_size // 2)} with "
            f"train.gradient_accumulation_steps={t.gradient_accumulation_steps * 2} (same effective batch)"
        )
    if not m.load_in_4bit:
        tips.append("model.load_in_4bit=true (QLoRA)")
    if m.max_seq_length > 1024:
        tips.append(f"model.max_seq_length={m.max_seq_length // 2} (documents are truncated to fit, summaries kept)")
    if m.gradient_checkpointing is False:
        tips.append("model.gradient_checkpointing=unsloth")
    if cfg.eval.batch_size > 1:
        tips.append(f"eval.batch_size={max(1, cfg.eval.batch_size // 2)} (generation for ROUGE)")
    if not tips:
        tips.append("a smaller model, or lora.r below " + str(cfg.lora.r))
    return (
        "the GPU ran out of memory. The last complete checkpoint is kept and a rerun resumes from it. "
        "Try: " + "; ".join(tips) + "."
    )


class RunLock:
    """An exclusive lock on `<output_dir>/.lock`; released by the OS if the process dies."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / LOCK_FILE
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise UserError(
                f"output directory {self.path.parent} is in use by another run (process {holder}). "
                f"Wait for it to finish, stop it, or set output.dir / output.run_name to another "
                f"directory."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


@contextlib.contextmanager
def training_errors(cfg: Config, where: Path, resume_from: Optional[Path] = None):
    """Out-of-memory and disk-full become one clear message (exit code 3) instead of a traceback; a checkpoint
    file that holds more than tensors (torch's weights_only loader refuses it, running nothing) exit code 2."""
    try:
        yield
    except (TrainingStopped, UserError):
        raise
    except BaseException as e:  # noqa: B036 - re-raised unless it is one of ours
        if is_oom(e):
            raise TrainingStopped(oom_advice(cfg)) from None
        if is_disk_full(e, where):
            raise TrainingStopped(
                disk_full_message(
                    where,
                    e,
                    kept="nothing was replaced: the previous checkpoints and the final model directory are as "
                    "they were",
                    then="rerun to resume (or set output.dir / output.model_dir elsewhere)",
                )
            ) from None
        if resume_from is not None and isinstance(e, pickle.UnpicklingError):
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise UserError(
                f"train.resume: a file of {resume_from} holds more than tensors, and torch's weights_only "
                f"loader refused it without running it ({first}). It was not written by this project as "
                f"it is: delete that checkpoint (the previous one is then used) or set "
                f"train.resume=never"
            ) from None
        raise
