"""files.py: what every writer of the project relies on. A file or folder is replaced whole or not at all, a
killed writer's leftovers are cleared by the next one, and digests tell a copy from a changed file."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llm_summarizer import files
from llm_summarizer.files import (
    OWNER_FILE,
    atomic_directory,
    atomic_file,
    file_digest,
    recover_interrupted_replace,
    scratch_beside,
    sha256_file,
    target_lock,
    write_json,
    write_text,
)

ROOT = Path(__file__).resolve().parent.parent


def beside(target: Path) -> list[str]:
    """What the writers left beside `target` (their lock file included: it goes with its last holder)."""
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


@pytest.fixture
def umask():
    """Set a umask for one test, and put the previous one back."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# -- write_text / write_json ---------------------------------------------------------------------------------------


def test_write_text_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "deep" / "er" / "report.md"  # parents are made
    write_text(target, "first\r\nline")
    assert target.read_bytes() == b"first\r\nline"  # written as given: no newline translation
    write_text(target, "second")
    assert target.read_text() == "second"
    assert beside(target) == []


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    # mkstemp makes its file 0600 whatever the umask: a published file gets what `open` would have given it
    assert mode(write_text(tmp_path / "a.txt", "x")) == expected
    assert mode(write_json(tmp_path / "b.json", {})) == expected


def test_write_json_is_readable_json_with_text_as_written(tmp_path):
    p = write_json(tmp_path / "m.json", {"path": tmp_path, "summary": "Zürich – 東京", "n": 1.5})
    text = p.read_text(encoding="utf-8")
    assert text.endswith("}\n") and "Zürich – 東京" in text  # not \u-escaped
    assert json.loads(text) == {"path": str(tmp_path), "summary": "Zürich – 東京", "n": 1.5}


def test_a_failure_while_encoding_keeps_the_old_content(tmp_path):
    target = write_text(tmp_path / "notes.txt", "old content")
    with pytest.raises(UnicodeEncodeError):
        write_text(target, "new content with é", encoding="ascii")  # fails after the temp file was opened
    assert target.read_text() == "old content"
    assert beside(target) == []


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_full_disk_mid_write_keeps_the_old_content(tmp_path, monkeypatch, step):
    target = write_json(tmp_path / "metrics.json", {"rouge1": 0.3})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, step, full)
    with pytest.raises(OSError, match="No space left"):
        write_json(target, {"rouge1": 0.4})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"rouge1": 0.3}
    assert beside(target) == []


def test_atomic_file_publishes_what_was_written_as_it_went_only_at_the_end(tmp_path):
    target = write_text(tmp_path / "out" / "summaries.jsonl", "old\n")
    with atomic_file(target) as f:
        f.write("one\n")
        f.flush()
        assert target.read_text() == "old\n"  # readers still see the old file
        assert [n.startswith(".summaries.jsonl.tmp-") for n in beside(target)] == [True]  # beside it: a rename
        f.write("two\r\n")
    assert target.read_bytes() == b"one\ntwo\r\n" and beside(target) == []
    with atomic_file(tmp_path / "new" / "model.gguf", "wb") as f:  # bytes; parents are made
        f.write(b"\x00GGUF")
    assert (tmp_path / "new" / "model.gguf").read_bytes() == b"\x00GGUF"


def test_an_error_inside_atomic_file_keeps_the_old_file_and_leaves_nothing_beside_it(tmp_path):
    target = write_text(tmp_path / "summaries.txt", "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target) as f:
            f.write("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and beside(target) == []
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "never.bin", "wb"):
            raise RuntimeError
    assert not (tmp_path / "never.bin").exists() and beside(tmp_path / "never.bin") == []
    with pytest.raises(ValueError, match="mode"):
        with atomic_file(target, "a"):
            pass


# -- atomic_directory ----------------------------------------------------------------------------------------------


def old_model(tmp_path: Path) -> Path:
    target = tmp_path / "fine_tuned"
    target.mkdir()
    (target / "adapter_model.safetensors").write_text("old weights")
    (target / "sub").mkdir()
    (target / "sub" / "x").write_text("old")
    return target


def test_atomic_directory_replaces_the_whole_folder(tmp_path):
    target = old_model(tmp_path)
    with atomic_directory(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".fine_tuned.tmp-")  # same disk: a rename
        assert (target / "adapter_model.safetensors").read_text() == "old weights"  # readers still see the old one
        (tmp / "model.safetensors").write_text("new weights")
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]  # nothing of the old one is left
    assert (target / "model.safetensors").read_text() == "new weights"
    assert beside(target) == []


def test_atomic_directory_creates_a_new_target(tmp_path):
    target = tmp_path / "exports" / "gguf"
    with atomic_directory(target) as tmp:
        (tmp / "model.gguf").write_text("g")
    assert (target / "model.gguf").read_text() == "g"


def test_keep_existing_keeps_a_target_another_writer_published_meanwhile(tmp_path):
    """A cache named by its content: the same content, so the first copy published stays (a reader may hold it)."""
    target = tmp_path / "data_cache" / "train-abc"
    with atomic_directory(target, keep_existing=True) as tmp:
        (tmp / "data.arrow").write_text("first")
    with atomic_directory(target, keep_existing=True) as tmp:
        (tmp / "data.arrow").write_text("second")
    assert (target / "data.arrow").read_text() == "first" and beside(target) == []


def test_an_error_inside_keeps_the_old_folder_and_removes_the_temporary_one(tmp_path):
    target = old_model(tmp_path)
    with pytest.raises(RuntimeError, match="export failed"):
        with atomic_directory(target) as tmp:
            (tmp / "half.safetensors").write_text("half")
            raise RuntimeError("export failed")
    assert sorted(p.name for p in target.iterdir()) == ["adapter_model.safetensors", "sub"]
    assert (target / "sub" / "x").read_text() == "old"
    assert beside(target) == []


def test_an_error_inside_a_new_target_leaves_nothing(tmp_path):
    target = tmp_path / "fine_tuned"
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as tmp:
            (tmp / "a").write_text("a")
            raise KeyboardInterrupt
    assert not target.exists() and beside(target) == []


def test_owner_records_the_kind_and_every_top_level_entry(tmp_path):
    target = tmp_path / "fine_tuned"
    with atomic_directory(target, owner="model") as tmp:
        (tmp / "adapter_config.json").write_text("{}")
        (tmp / "adapter_model.safetensors").write_text("w")
        (tmp / "plots").mkdir()
        (tmp / "plots" / "loss.png").write_text("p")
    record = json.loads((target / OWNER_FILE).read_text())
    assert record == {
        "written_by": "llm_summarizer",
        "kind": "model",
        "entries": ["adapter_config.json", "adapter_model.safetensors", "plots"],
    }


def test_no_owner_no_record(tmp_path):
    with atomic_directory(tmp_path / "t") as tmp:
        (tmp / "a").write_text("a")
    assert not (tmp_path / "t" / OWNER_FILE).exists()


def test_a_published_folder_has_ordinary_permissions(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "fine_tuned"
    with atomic_directory(target) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f").write_text("x")
        os.chmod(tmp / "sub" / "f", 0o600)
    assert mode(target) == 0o755  # not mkdtemp's private 0700: other users of a shared model can read it
    assert mode(target / "sub") == 0o755 and mode(target / "sub" / "f") == 0o644


def test_leftovers_of_a_killed_writer_are_cleared_by_the_next_one(tmp_path):
    target = old_model(tmp_path)
    (tmp_path / ".fine_tuned.tmp-dead1").mkdir()
    (tmp_path / ".fine_tuned.tmp-dead1" / "model.safetensors").write_text("half")
    (tmp_path / ".fine_tuned.work-dead2").mkdir()
    (tmp_path / ".fine_tuned.tmp-123-abc").write_text("half a file")  # write_text's temp file
    (tmp_path / ".other.tmp-1").mkdir()  # another target's: not ours to clear
    with atomic_directory(target) as tmp:
        (tmp / "new").write_text("n")
    assert beside(target) == []
    assert (tmp_path / ".other.tmp-1").is_dir()


WRITER_KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from llm_summarizer.files import atomic_directory, scratch_beside
target = Path(sys.argv[1])
with atomic_directory(target, owner="export") as tmp:
    (tmp / "model.gguf").write_text("half")
    with scratch_beside(target) as work:
        (work / "f16.gguf").write_text("scratch")
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_writer_killed_mid_write_leaves_the_old_folder_and_the_next_writer_clears_its_leftovers(tmp_path):
    target = old_model(tmp_path)
    r = subprocess.run([sys.executable, "-c", WRITER_KILLED_MID_WRITE, str(target)], cwd=ROOT, timeout=60)
    assert r.returncode == -9
    left = beside(target)
    assert any(n.startswith(".fine_tuned.tmp-") for n in left) and any(n.startswith(".fine_tuned.work-") for n in left)
    assert (target / "adapter_model.safetensors").read_text() == "old weights"
    with atomic_directory(target, owner="export") as tmp:
        (tmp / "model.gguf").write_text("whole")
    assert beside(target) == []
    assert (target / "model.gguf").read_text() == "whole"


def test_an_interrupted_replace_is_recovered_from_the_old_folder(tmp_path):
    # killed between replace_directory's two renames: the target is gone, the previous one is .NAME.old-PID
    target = tmp_path / "fine_tuned"
    old = tmp_path / ".fine_tuned.old-4242"
    old.mkdir()
    (old / "adapter_model.safetensors").write_text("previous")
    with target_lock(target):
        assert (target / "adapter_model.safetensors").read_text() == "previous"
    assert beside(target) == []


def test_an_old_folder_left_after_the_second_rename_is_removed_and_the_new_one_kept(tmp_path):
    target = tmp_path / "fine_tuned"
    target.mkdir()
    (target / "new").write_text("new")
    (tmp_path / ".fine_tuned.old-4242").mkdir()
    with target_lock(target):
        pass
    assert [p.name for p in target.iterdir()] == ["new"]
    assert beside(target) == []


def test_recover_interrupted_replace_takes_the_newest_old_folder_and_leaves_an_existing_target_alone(tmp_path):
    target = tmp_path / "m"
    for pid in ("100", "200"):
        (tmp_path / f".m.old-{pid}").mkdir()
        (tmp_path / f".m.old-{pid}" / "pid").write_text(pid)
    recover_interrupted_replace(target)
    assert (target / "pid").read_text() == "200"
    recover_interrupted_replace(target)  # the target exists: nothing moves
    assert (target / "pid").read_text() == "200" and (tmp_path / ".m.old-100").is_dir()


def test_target_lock_lets_one_writer_at_a_time(tmp_path):
    target = tmp_path / "export"
    events = []
    inside = threading.Event()

    def first():
        with target_lock(target):
            inside.set()
            time.sleep(0.3)
            events.append("first out")

    t = threading.Thread(target=first)
    t.start()
    inside.wait(10)
    with target_lock(target):  # a separate open file: flock makes it wait, in one process as across processes
        events.append("second in")
    t.join()
    assert events == ["first out", "second in"]


def test_the_lock_file_goes_with_its_last_holder_and_writers_still_take_turns(tmp_path):
    # the lock file is removed on release; a writer that waited on a removed file must not run beside the next one
    target = tmp_path / "fine_tuned"
    (tmp_path / ".fine_tuned.lock").write_text("")  # left by a killed holder: taken over, then removed
    holders, most, lock = [0], [0], threading.Lock()

    def writer():
        for _ in range(20):
            with target_lock(target):
                with lock:
                    holders[0] += 1
                    most[0] = max(most[0], holders[0])
                time.sleep(0.001)
                with lock:
                    holders[0] -= 1

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert most[0] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- scratch_beside ------------------------------------------------------------------------------------------------


def test_scratch_beside_is_on_the_targets_disk_and_always_removed(tmp_path):
    target = tmp_path / "out" / "model.gguf"
    target.parent.mkdir()
    with scratch_beside(target) as work:
        assert work.parent == target.parent and work.name.startswith(".model.gguf.work-") and work.is_dir()
        (work / "big").write_text("x")
    assert not work.exists()
    with pytest.raises(ValueError):
        with scratch_beside(target) as work2:
            raise ValueError
    assert not work2.exists()
    assert list(target.parent.iterdir()) == []


# -- digests -------------------------------------------------------------------------------------------------------


def test_sha256_file_is_the_sha256_of_the_bytes(tmp_path):
    data = os.urandom(10_000)
    p = tmp_path / "w.bin"
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()
    assert sha256_file(p, block=999) == hashlib.sha256(data).hexdigest()  # several blocks: the same
    (tmp_path / "e").write_bytes(b"")
    assert sha256_file(tmp_path / "e") == hashlib.sha256(b"").hexdigest()


def test_file_digest_of_a_small_file_covers_every_byte(tmp_path):
    data = bytearray(os.urandom(5000))
    a = tmp_path / "adapter.safetensors"
    a.write_bytes(data)
    copy = tmp_path / "elsewhere" / "adapter.safetensors"
    copy.parent.mkdir()
    shutil.copy(a, copy)
    os.utime(copy, (1, 1))  # another path and modification time: still the same model
    assert file_digest(copy) == file_digest(a)
    data[2500] ^= 1
    changed = tmp_path / "changed.safetensors"
    changed.write_bytes(data)
    assert file_digest(changed) != file_digest(a)
    assert file_digest(a) != file_digest(a, whole_below=0, chunk=100, samples=4)  # whole and sampled differ


def test_file_digest_of_a_large_file_samples_it(tmp_path):
    # "large" made small: 1000 bytes read as 4 chunks of 16 at 0, 328, 656 and 984
    kw = dict(whole_below=100, chunk=16, samples=4)
    data = bytearray(os.urandom(1000))
    a = tmp_path / "model.safetensors"
    a.write_bytes(data)
    copy = tmp_path / "copy.safetensors"
    shutil.copy(a, copy)
    assert file_digest(copy, **kw) == file_digest(a, **kw)

    def digest_with(change) -> str:
        d = bytearray(data)
        change(d)
        p = tmp_path / "other.safetensors"
        p.write_bytes(d)
        return file_digest(p, **kw)

    def flip(i):
        return lambda d: d.__setitem__(i, d[i] ^ 1)

    for sampled in (0, 330, 999):
        assert digest_with(flip(sampled)) != file_digest(a, **kw), sampled
    assert digest_with(flip(500)) == file_digest(a, **kw)  # between samples: not read, the price of sampling
    assert digest_with(lambda d: d.append(0)) != file_digest(a, **kw)  # the size is part of it
