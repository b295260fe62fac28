"""The one rule for where a command writes, checked before anything is loaded or written (train, export,
evaluate, summarize, score, tune, bench):

1. No two output locations of one command are the same place, or inside one another.
2. No output is a source the command reads (a model directory, a data file), holds one, or lies inside one.
3. A folder a command writes into or replaces is new, empty, or one this project wrote there before, of the same
   kind: recognised by the record it leaves in it (`files.OWNER_FILE`), or, for folders written before that record
   existed, by files only this project writes there.
4. A folder replaced whole (the final model, an export) holds nothing but what this project wrote there: anything
   else is named, and nothing is touched.

So `--overwrite` and a rerun replace an earlier result of the same command, and never a user's folder, a source, or
a training run's checkpoints. Every refusal is one UserError naming the key and the folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from .errors import UserError
from .files import write_json
from .layout import (
    ADAPTER_CONFIG,
    BASE_METRICS_FILE,
    CONFIG_FILE,
    DATA_CACHE_DIR,
    EVAL_SETTINGS,
    EXPORT_INFO,
    LOCK_FILE,
    METRICS_FILE,
    OWNER_FILE,
    PREDICTIONS_DIR,
    RUN_INFO_FILE,
    SAMPLES_FILE,
    STAGING_DIR,
    STUDY_DB,
)
from .rundir import CHECKPOINT_RE
from .untrusted import check_path

# in any folder, files that say nothing about its kind: the ownership record, and a run's lock (held by a run that
# has not written anything yet, or left by a killed one)
OURS = frozenset({OWNER_FILE, LOCK_FILE})

KINDS = {  # kind -> what it is, in the words of a refusal
    "model": "a fine-tuned model written by `llm-summarizer train`",
    "export": "an export written by `llm-summarizer export`",
    "run": "a training run's checkpoints and logs (output.dir of `llm-summarizer train`)",
    "evaluation": "an evaluation written by `llm-summarizer evaluate`",
    "tune": "a study written by `llm-summarizer tune`",
    "bench": "a benchmark's work folder",
}


@dataclass(frozen=True)
class Place:
    """One output location: how the user named it, where it is, what goes there."""

    key: str  # output.model_dir, --output, ...
    path: Path
    kind: str  # one of KINDS, "file" (one file written), or "cache" (shared, content-keyed: rule 1 only)
    replaced: bool = False  # the command replaces (or deletes) the whole folder


def _legacy_kind(names: set[str]) -> Optional[str]:
    """The kind of a folder written before OWNER_FILE existed, from the files only this project writes there."""
    if EXPORT_INFO in names:
        return "export"
    if CONFIG_FILE in names and names & {ADAPTER_CONFIG, "config.json"} and names & {RUN_INFO_FILE, METRICS_FILE}:
        return "model"
    if names & {BASE_METRICS_FILE, PREDICTIONS_DIR, DATA_CACHE_DIR, SAMPLES_FILE, STAGING_DIR} or any(
        CHECKPOINT_RE.match(n) for n in names
    ):
        return "run"
    if EVAL_SETTINGS in names:
        return "evaluation"
    if STUDY_DB in names or any(n.startswith("trial-") for n in names):
        return "tune"
    return None


def owner_of(folder: Path) -> tuple[Optional[str], Optional[set[str]]]:
    """(kind, entries this project wrote) of a folder; (None, None) when nothing says this project wrote it."""
    record = folder / OWNER_FILE
    if record.is_file():
        try:
            obj = json.loads(record.read_text(encoding="utf-8"))
            return obj.get("kind"), (set(obj["entries"]) if isinstance(obj.get("entries"), list) else None)
        except (ValueError, OSError, AttributeError):
            pass  # unreadable: decided from the files, like a folder written before the record existed
    return _legacy_kind({p.name for p in folder.iterdir()}), None


def claim(folder: Path, kind: str) -> None:
    """Record a folder that a command writes into (not replaced whole) as this project's."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / OWNER_FILE).is_file():
        write_json(folder / OWNER_FILE, {"written_by": "llm_summarizer", "kind": kind})


def _abs(p) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(p))))


def _real(p: Path) -> Path:
    return Path(os.path.realpath(p))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _show(p: Path, n: int = 5) -> str:
    names = sorted(x.name for x in p.iterdir() if x.name != OWNER_FILE)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_places(places: Iterable[Place], sources: Iterable[tuple[str, object]] = ()) -> None:
    """Rules 1-4 for one command's outputs against its sources; raises one UserError at the first problem."""
    places = [p for p in places if p.path is not None]
    for p in places:
        check_path(p.path, p.key)
    for key, src in sources:
        check_path(src, key)
    sources = [(k, _real(_abs(s))) for k, s in sources if s is not None and os.path.exists(os.path.expanduser(str(s)))]
    real = {p.key: _real(_abs(p.path)) for p in places}
    for i, a in enumerate(places):  # 1. outputs apart
        for b in places[i + 1 :]:
            ra, rb = real[a.key], real[b.key]
            if ra == rb:
                raise UserError(
                    f"{a.key} and {b.key} are the same place ({a.path}); each needs its own "
                    f"(the defaults are outputs/<run_name> and fine_tuned/<run_name>)"
                )
            if _within(ra, rb) or _within(rb, ra):
                inner, outer = (a, b) if _within(ra, rb) else (b, a)
                raise UserError(
                    f"{inner.key} ({inner.path}) is inside {outer.key} ({outer.path}); put them side by "
                    f"side, not one inside the other"
                )
    for p in places:
        r = real[p.key]
        if p.kind == "cache":
            _check_location(p)
            continue
        for key, s in sources:  # 2. outputs apart from sources
            if r == s:
                raise UserError(f"{p.key} {p.path} is {key} itself, which this command reads; choose another {p.key}")
            if _within(s, r):
                raise UserError(
                    f"{p.key} {p.path} holds {key} ({s}), which this command reads; choose a {p.key} outside it"
                )
            if _within(r, s):
                raise UserError(
                    f"{p.key} {p.path} is inside {key} ({s}); choose a {p.key} outside it, so the source stays as it is"
                )
        if p.kind == "file":
            _check_file(p)
        else:
            _check_folder(p)


def _check_file(p: Place) -> None:
    path = _abs(p.path)
    if path.is_dir():
        raise UserError(f"{p.key} {p.path} is a directory; give a file name")
    parent = next((a for a in path.parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{p.key} {p.path}: {parent} is a file, not a directory; choose another {p.key}")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{p.key} {p.path}: cannot write to {parent}; choose a writable location")


def _check_location(p: Place) -> None:
    """A folder that is, or can be made, and written to."""
    path = _abs(p.path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{p.key} {p.path} is a file; expected a directory (or a path that does not exist yet)")
    parent = path if path.exists() else next((a for a in path.parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{p.key} {p.path}: {parent} is a file, not a directory; choose another {p.key}")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{p.key} {p.path}: cannot write to {parent}; choose a writable location")


def _check_folder(p: Place) -> None:  # 3 and 4
    _check_location(p)
    path = _abs(p.path)
    if not path.exists() or not any(x.name not in OURS for x in path.iterdir()):
        return
    kind, entries = owner_of(path)
    what = KINDS[p.kind]
    if kind is None:
        raise UserError(
            f"{p.key} {p.path} holds files this project did not write ({_show(path)}); it "
            f"{'would replace that whole folder' if p.replaced else 'writes there'} with {what}. Choose a "
            f"new or empty folder, or move those files away"
        )
    if kind != p.kind:
        raise UserError(
            f"{p.key} {p.path} holds {KINDS.get(kind, kind)}, not {what}; choose another {p.key} so "
            f"that it stays as it is"
        )
    if p.replaced and entries is not None:
        foreign = sorted({x.name for x in path.iterdir()} - entries - {OWNER_FILE})
        if foreign:
            raise UserError(
                f"{p.key} {p.path} is {what}, but also holds files this project did not write there "
                f"({', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}), which replacing it would "
                f"delete; move them away, or choose another {p.key}"
            )
