"""Checkpoints a run can trust: published whole, found again by the resume scan.

A checkpoint counts as complete only when its trainer state parses, its weights open, and its optimizer
and scheduler states are present; the resume scan skips anything else with a warning. A checkpoint is
written into `<output.dir>/.staging/` and renamed to checkpoint-N only once flushed, so a crash mid-save
never leaves a visible half-written one.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Optional

from safetensors import safe_open
from transformers.trainer_utils import rotate_checkpoints

from ..errors import UserError
from ..files import replace_directory
from ..models.directory import ADAPTER_WEIGHTS, FULL_WEIGHTS
from ..rundir import STAGING_DIR, list_checkpoints

log = logging.getLogger("llm_summarizer.checkpoints")

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
            with safe_open(str(weights), framework="pt") as f:
                list(f.keys())
        except Exception as e:
            return f"{weights.name} unreadable ({type(e).__name__})"
    return None


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
    replace_directory(src, dst)  # the same step may be saved again after a resume
    # Whatever else the save wrote beside the checkpoint (TRL's README) goes with the staging area.
    shutil.rmtree(staging, ignore_errors=True)
    if trainer.args.should_save:
        rotate_checkpoints(output_dir=str(run_dir), save_total_limit=trainer.args.save_total_limit,
                           best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=True)
    return dst
