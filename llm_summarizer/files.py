"""Writing files so that a crash never leaves a half-written one, and telling files apart by content.

Every file the project writes goes through here: `write_text` / `write_json` write a temporary file
beside the target (its name unique to the process and call), flush and fsync it, then rename it over
the target; `atomic_file` does the same for a file written as it goes (summaries as they finish, a download);
`atomic_directory` does the same for a whole directory (the final model, an export, a tokenized cache).
Readers therefore see the old version or the new one, never a mix, even after a SIGKILL or a full disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

from .layout import OWNER_FILE

log = logging.getLogger("llm_summarizer.files")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def fsync_tree(root: Path) -> None:
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


@contextlib.contextmanager
def atomic_file(path, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO]:
    """A file to write `path` through, as it goes ("w": text, "wb": bytes): a unique temporary file beside it
    that, when the block ends without an error, is flushed, fsynced and renamed over `path`; on an error (a full
    disk, Ctrl-C) it is removed and whatever `path` held stays."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes a whole file: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": encoding, "newline": ""} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Replace `path` with `text` atomically: a unique temporary file beside it, fsync, rename."""
    with atomic_file(path, "w", encoding) as f:
        f.write(text)
    return Path(path)


def write_json(path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str, ensure_ascii=False) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _umask_permissions(root: Path) -> None:
    """Ordinary permissions (the umask's) for what we publish: mkdtemp makes its directory private (0700)."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for p in root.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def recover_interrupted_replace(target: Path) -> None:
    """If a replace was interrupted between its two renames, put the previous directory back."""
    if target.exists():
        return
    olds = sorted(target.parent.glob(f".{target.name}.old-*")) if target.parent.exists() else []
    if olds:
        os.replace(olds[-1], target)
        log.warning("restored %s from an interrupted save", target)


def owner_record(root: Path, kind: str) -> dict:
    """What `root` holds, as this project wrote it: kind (model, export, run, ...) and its top-level entries."""
    return {
        "written_by": "llm_summarizer",
        "kind": kind,
        "entries": sorted(p.name for p in Path(root).iterdir() if p.name != OWNER_FILE),
    }


@contextlib.contextmanager
def target_lock(target: Path) -> Iterator[None]:
    """One writer per target: an exclusive lock on `.NAME.lock` beside it (released by the OS when the process
    dies). Holding it, whatever `.NAME.tmp-*` / `.NAME.work-*` folders are beside the target were left by a
    writer that was killed, and are removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.parent / f".{target.name}.lock"):  # another writer: wait for it (exports take minutes)
        recover_interrupted_replace(target)
        for stale in [
            *target.parent.glob(f".{target.name}.tmp-*"),
            *target.parent.glob(f".{target.name}.work-*"),
            *target.parent.glob(f".{target.name}.old-*"),
        ]:
            log.info("removing %s, left by an interrupted write of %s", stale.name, target)
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        yield


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on the file `path` (released by the OS if the process dies), removed when released so
    that users' folders keep only what they asked for. A waiter that wakes up holding a file already removed
    (its holder finished) opens the path again, so two writers never hold two different files. A lock file
    left by a killed holder is taken over by the next one."""
    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # removed (or replaced) while we waited: lock the file that is there now
    try:
        yield
    finally:
        try:
            path.unlink(missing_ok=True)  # under the lock: the next waiter sees it gone and opens a new one
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@contextlib.contextmanager
def atomic_directory(target: Path, owner: str | None = None, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `target` whole, on error it is removed. Under the
    target's lock, so a killed writer's leftovers are cleared by the next one. `owner` (model, export): record
    the folder as this project's (OWNER_FILE), so that a later replace knows it holds nothing else.
    `keep_existing` (a cache named by its content): a `target` that another writer published meanwhile is kept,
    and ours is removed."""
    target = Path(target)
    with target_lock(target):
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            yield tmp
            if keep_existing and target.exists():
                return
            if owner is not None:
                write_json(tmp / OWNER_FILE, owner_record(tmp, owner))
            _umask_permissions(tmp)
            replace_directory(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def scratch_beside(target: Path) -> Iterator[Path]:
    """Working space beside `target` (the same disk), always removed; inside `atomic_directory(target)`, so that a
    killed writer's scratch is cleared by the next one."""
    d = Path(tempfile.mkdtemp(prefix=f".{Path(target).name}.work-", dir=Path(target).parent))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def replace_directory(src: Path, dst: Path) -> None:
    """Move a complete directory `src` to `dst`, replacing what was there (the old one goes last)."""
    fsync_tree(src)
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(src, dst)
    _fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(p: Path, block: int = 1 << 22) -> str:
    """sha256 of the whole file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(p: Path, whole_below: int = 256 << 20, chunk: int = 1 << 20, samples: int = 16) -> str:
    """sha256 of the whole file when small (adapters), else of its size and evenly spaced 1 MiB chunks:
    a retrained model is noticed, a copied one (new path, new modification time) is the same model."""
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        if size <= whole_below:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
        else:
            for i in range(samples):
                f.seek((size - chunk) * i // (samples - 1))
                h.update(f.read(chunk))
    return h.hexdigest()
