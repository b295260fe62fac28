"""Run directories, checkpoint discovery, and the atomic final save.

A checkpoint counts as complete only when its trainer state parses, its adapter weights open, and its
optimizer and scheduler states are present; the resume scan skips anything else with a warning.
Directories we write (the final model) appear under their name only once complete: they are
written under a temporary name beside the target, flushed, then renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional

log = logging.getLogger("llm_summarizer.artifacts")

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
STATE_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def checkpoint_problem(path: Path) -> Optional[str]:
    """None when the checkpoint is complete and readable, else what is wrong with it."""
    for f in STATE_FILES:
        p = path / f
        if not p.is_file() or p.stat().st_size == 0:
            return f"{f} missing or empty"
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        int(state["global_step"])
    except Exception as e:
        return f"trainer_state.json unreadable ({type(e).__name__})"
    weights = next((path / w for w in ADAPTER_WEIGHTS + FULL_WEIGHTS if (path / w).is_file()), None)
    if weights is None:
        return "no model or adapter weights"
    if weights.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                list(f.keys())
        except Exception as e:
            return f"{weights.name} unreadable ({type(e).__name__})"
    return None


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    if not output_dir.is_dir():
        return []
    found = []
    for p in output_dir.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_resume_checkpoint(output_dir: Path) -> tuple[Optional[Path], list[tuple[Path, str]]]:
    """Newest complete checkpoint, and the (path, problem) of newer ones that were skipped."""
    skipped = []
    for _, p in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(p)
        if problem is None:
            return p, skipped
        skipped.append((p, problem))
    return None, skipped


def resolve_resume(resume: str, output_dir: Path) -> Optional[Path]:
    from .config import UserError

    if resume == "never":
        return None
    if resume == "auto":
        ckpt, skipped = find_resume_checkpoint(output_dir)
        for p, why in skipped:
            log.warning("skipping incomplete checkpoint %s: %s", p, why)
        if ckpt is not None:
            log.info("resuming from %s", ckpt)
        return ckpt
    p = Path(resume)
    if not p.is_dir():
        raise UserError(f"train.resume: checkpoint directory not found: {p}")
    problem = checkpoint_problem(p)
    if problem:
        raise UserError(f"train.resume: {p} is not a complete checkpoint ({problem}); "
                        f"use train.resume=auto to pick the newest complete one")
    return p


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                pass
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def recover_interrupted_replace(target: Path) -> None:
    """If a replace was interrupted between its two renames, put the previous directory back."""
    if target.exists():
        return
    olds = sorted(target.parent.glob(f".{target.name}.old-*")) if target.parent.exists() else []
    if olds:
        os.replace(olds[-1], target)
        log.warning("restored %s from an interrupted save", target)


def _umask_permissions(root: Path) -> None:
    """Ordinary permissions (the umask's) for what we publish: mkdtemp makes its directory private (0700)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(root, 0o777 & ~mask)
    for p in root.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `target` whole, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_replace(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _umask_permissions(tmp)
        _fsync_tree(tmp)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


STAGING_DIR = ".staging"


def staging_root(run_dir) -> Path:
    p = Path(run_dir) / STAGING_DIR
    p.mkdir(parents=True, exist_ok=True)
    return p


def clean_staging(run_dir: Path) -> None:
    """Remove what an interrupted checkpoint save left behind (never a visible checkpoint)."""
    p = Path(run_dir) / STAGING_DIR
    if p.exists():
        shutil.rmtree(p, ignore_errors=True)


def publish_checkpoint(trainer, staging: Path, run_dir: Path) -> Path:
    """Move the complete checkpoint from staging to run_dir/checkpoint-N, then rotate old ones."""
    from transformers.trainer_utils import rotate_checkpoints

    name = f"checkpoint-{trainer.state.global_step}"
    src, dst = staging / name, run_dir / name
    # Paths recorded while the checkpoint sat in staging point at its final place.
    for attr in ("best_model_checkpoint",):
        val = getattr(trainer.state, attr, None)
        if val and Path(val).parent == staging:
            setattr(trainer.state, attr, str(run_dir / Path(val).name))
    state_file = src / "trainer_state.json"
    if state_file.exists():
        text = state_file.read_text().replace(str(staging), str(run_dir))
        state_file.write_text(text)
    _fsync_tree(src)
    old = None
    if dst.exists():  # the same step saved again after a resume
        old = run_dir / f".{name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(src, dst)
    _fsync_dir(run_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    # Whatever else the save wrote beside the checkpoint (TRL's README) goes with the staging area.
    shutil.rmtree(staging, ignore_errors=True)
    if trainer.args.should_save:
        rotate_checkpoints(output_dir=str(run_dir), save_total_limit=trainer.args.save_total_limit,
                           best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=True)
    return dst


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def git_commit() -> Optional[str]:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except Exception:
        return None


def package_versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for pkg in ("llm_summarizer", "unsloth", "unsloth_zoo", "torch", "transformers", "trl", "peft", "datasets",
                "accelerate", "bitsandbytes", "rouge-score", "wandb"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
