"""Checkpoints a run can trust: published whole, verified byte for byte, found again by the resume scan.

A checkpoint is written into `<output.dir>/.staging/` and renamed to checkpoint-N only once flushed, so a
crash mid-save never leaves a visible half-written one. The last file written before the rename is
`checkpoint_manifest.json`: every file's size and sha256. The resume scan verifies it, so a bit flipped or
a block zeroed after publication (a bad disk, a copy cut short, a sync conflict), a file added to the
folder (a planted pickle) or one removed is named and that checkpoint skipped for the previous one.

Trust: what a checkpoint holds besides JSON is read by transformers with torch's `weights_only=True`
(tensors, numpy RNG state), which runs no code; a checkpoint without this project's manifest is not
resumed from unless train.verify_checkpoints=false says so.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Optional

from safetensors import safe_open
from transformers.trainer_utils import rotate_checkpoints

from .. import __version__
from ..errors import UserError
from ..files import replace_directory, sha256_file, write_json
from ..layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CHECKPOINT_MANIFEST, FULL_WEIGHTS, STAGING_DIR
from ..rundir import list_checkpoints

log = logging.getLogger("llm_summarizer.checkpoints")

STATE_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != CHECKPOINT_MANIFEST)


def write_manifest(ckpt: Path, world_size: int = 1) -> dict:
    """Every file's size and sha256, written last into the checkpoint (before it is renamed into place), and
    the number of ranks that trained it."""
    t0 = time.perf_counter()
    files = {str(p.relative_to(ckpt)): {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in _files(ckpt)}
    manifest = {
        "format": 1,
        "written_by": f"llm_summarizer {__version__}",
        "world_size": int(world_size),
        "files": files,
        "hash_seconds": round(time.perf_counter() - t0, 4),
        "bytes": sum(f["size"] for f in files.values()),
    }
    write_json(ckpt / CHECKPOINT_MANIFEST, manifest)
    return manifest


def manifest_problem(ckpt: Path) -> Optional[str]:
    """None when every file is as the manifest recorded it, else the first difference, naming the file."""
    m = ckpt / CHECKPOINT_MANIFEST
    if not m.is_file():
        return f"no {CHECKPOINT_MANIFEST} (not written by llm_summarizer, or written before checkpoints carried one)"
    try:
        files = json.loads(m.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, OSError) as e:
        return f"{CHECKPOINT_MANIFEST} unreadable ({type(e).__name__})"
    present = {str(p.relative_to(ckpt)): p for p in _files(ckpt)}
    for name in sorted(set(present) - set(files)):
        return f"{name} was added after the checkpoint was written"
    for name, rec in files.items():
        p = present.get(name)
        if p is None:
            return f"{name} is missing"
        if p.stat().st_size != rec["size"]:
            return f"{name} is {p.stat().st_size} bytes, the manifest says {rec['size']} (cut short or replaced)"
        if sha256_file(p) != rec["sha256"]:
            return f"{name} changed after it was written (its sha256 differs from the manifest's)"
    return None


def checkpoint_problem(path: Path, verify: bool = True) -> Optional[str]:
    """None when the checkpoint is complete, readable and (verify) byte for byte as written; else what is wrong."""
    for f in STATE_FILES:
        p = path / f
        if not p.is_file() or p.stat().st_size == 0:
            return f"{f} missing or empty"
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        int(state["global_step"])
    except Exception as e:
        return f"trainer_state.json unreadable ({type(e).__name__})"
    ws = checkpoint_world_size(path)
    if ws > 1:  # one RNG file per rank, or the resumed ranks would not continue their own random streams
        missing = [f"rng_state_{r}.pth" for r in range(ws) if not (path / f"rng_state_{r}.pth").is_file()]
        if missing:
            return f"{', '.join(missing)} missing (trained by {ws} ranks)"
    weights = next((path / w for w in ADAPTER_WEIGHTS + FULL_WEIGHTS if (path / w).is_file()), None)
    if weights is None:
        return "no model or adapter weights"
    if weights.suffix == ".safetensors":
        try:
            with safe_open(str(weights), framework="pt") as f:
                list(f.keys())
        except Exception as e:
            return f"{weights.name} unreadable ({type(e).__name__})"
    return manifest_problem(path) if verify else None


def checkpoint_world_size(path: Path) -> int:
    """How many ranks trained the checkpoint (its manifest; 1 when it does not say)."""
    try:
        return int(json.loads((Path(path) / CHECKPOINT_MANIFEST).read_text(encoding="utf-8")).get("world_size") or 1)
    except (OSError, ValueError, AttributeError):
        return 1


def check_world_size(path: Path, world_size: int, allow_change: bool) -> None:
    """A checkpoint continues with the number of ranks that wrote it: the data order, the per-rank random
    streams and the batch each step averages depend on it."""
    ws = checkpoint_world_size(path)
    if ws != world_size and not allow_change:
        raise UserError(
            f"{path} was trained by {ws} rank(s) and this run has {world_size}: resuming would change "
            f"the batches and random streams of the rest of the run. Launch {ws} rank(s), or set "
            f"scale.allow_world_size_change=true to continue anyway (train.resume=never starts afresh)"
        )


def find_resume_checkpoint(output_dir: Path, verify: bool = True) -> tuple[Optional[Path], list[tuple[Path, str]]]:
    """Newest complete checkpoint, and the (path, problem) of newer ones that were skipped."""
    skipped = []
    for _, p in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(p, verify)
        if problem is None:
            return p, skipped
        skipped.append((p, problem))
    return None, skipped


UNVERIFIED_HINT = (
    "to resume from it anyway, set train.verify_checkpoints=false (its tensors still load with torch's "
    "weights_only=True, which runs no code)"
)


def resolve_resume(resume: str, output_dir: Path, verify: bool = True) -> Optional[Path]:
    if resume == "never":
        return None
    if resume == "auto":
        t0 = time.perf_counter()
        ckpt, skipped = find_resume_checkpoint(output_dir, verify)
        for p, why in skipped:
            log.warning(
                "skipping checkpoint %s: %s%s", p, why, f"; {UNVERIFIED_HINT}" if CHECKPOINT_MANIFEST in why else ""
            )
        if ckpt is not None:
            log.info(
                "resuming from %s (verified against its manifest in %.2f s)" if verify else "resuming from %s",
                ckpt,
                time.perf_counter() - t0,
            )
        return ckpt
    p = Path(resume)
    if not p.is_dir():
        raise UserError(f"train.resume: checkpoint directory not found: {p}")
    problem = checkpoint_problem(p, verify)
    if problem:
        raise UserError(
            f"train.resume: {p} is not a complete checkpoint ({problem}); use train.resume=auto to "
            f"pick the newest complete one" + (f", or, {UNVERIFIED_HINT}" if CHECKPOINT_MANIFEST in problem else "")
        )
    return p


def check_adapter_shape(resume: Path, lora, auto: bool) -> None:
    """A checkpoint's LoRA must have this run's shape (rank, alpha, DoRA), or its weights cannot be loaded: say so
    before loading anything, naming the setting, instead of a size mismatch deep in torch."""
    p = Path(resume) / ADAPTER_CONFIG
    try:
        saved = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # not an adapter checkpoint (or unreadable: the manifest check names that)
    wanted = {
        "r": ("lora.r", lora.r),
        "lora_alpha": ("lora.alpha", lora.alpha),
        "use_dora": ("lora.use_dora", lora.use_dora),
    }
    diffs = [
        f"{key}={saved[k]} there, {value} here"
        for k, (key, value) in wanted.items()
        if k in saved and saved[k] != value
    ]
    if diffs:
        how = (
            "set train.resume=never or another output.dir to start afresh"
            if auto
            else "give a checkpoint of this run, or set the LoRA settings it was written with"
        )
        raise UserError(
            f"train.resume: {resume} holds a LoRA adapter of another shape ({'; '.join(diffs)}), which "
            f"cannot continue as this run: {how}"
        )


def staging_root(run_dir) -> Path:
    p = Path(run_dir) / STAGING_DIR
    p.mkdir(parents=True, exist_ok=True)
    return p


def clean_staging(run_dir: Path) -> None:
    """Remove what an interrupted checkpoint save left behind (never a visible checkpoint)."""
    p = Path(run_dir) / STAGING_DIR
    if p.exists():
        shutil.rmtree(p, ignore_errors=True)


def fix_state_paths(trainer, staging: Path, run_dir: Path) -> None:
    """Paths recorded while the checkpoint sat in staging point at its final place (on every rank: each
    rank's trainer state decides about the best checkpoint at the end)."""
    for attr in ("best_model_checkpoint",):
        val = getattr(trainer.state, attr, None)
        if val and Path(val).parent == staging:
            setattr(trainer.state, attr, str(run_dir / Path(val).name))


def publish_checkpoint(trainer, staging: Path, run_dir: Path) -> Path:
    """Move the complete checkpoint from staging to run_dir/checkpoint-N, then rotate old ones."""
    name = f"checkpoint-{trainer.state.global_step}"
    src, dst = staging / name, run_dir / name
    fix_state_paths(trainer, staging, run_dir)
    state_file = src / "trainer_state.json"
    if state_file.exists():
        text = state_file.read_text().replace(str(staging), str(run_dir))
        state_file.write_text(text)
    write_manifest(
        src, trainer.args.world_size
    )  # last: a checkpoint is what its manifest says, or it is not resumed from
    replace_directory(src, dst)  # the same step may be saved again after a resume
    # Whatever else the save wrote beside the checkpoint (TRL's README) goes with the staging area.
    shutil.rmtree(staging, ignore_errors=True)
    if trainer.args.should_save:
        rotate_checkpoints(
            output_dir=str(run_dir),
            save_total_limit=trainer.args.save_total_limit,
            best_model_checkpoint=trainer.state.best_model_checkpoint,
            use_mtime=True,
        )
    return dst
