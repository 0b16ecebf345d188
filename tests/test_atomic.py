"""Crash-safe writes (tinyhelen/atomic.py) and the writers that go through them: metrics, plots, the answer cache.

The oracle for "survives a crash" is a real crash: a child process SIGKILLs itself in the middle of
a write, and the file it leaves is compared byte for byte with the old and the new content. The
oracle for "synced" is the system calls themselves: os.fsync is wrapped to record what each fd is
(a regular file or a folder, and its path) at the moment it is synced.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tinyhelen.atomic import (append_line, atomic_file, atomic_jsonl, atomic_write_bytes, atomic_write_json,
                    atomic_write_text, read_lines)
from tinyhelen.llm import AnswerCache, cache_key
from tinyhelen.metrics import MetricsLog, plot_losses, read_metrics

ROOT = Path(__file__).resolve().parents[1]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# -- a crash leaves the old file or the whole new one ------------------------------------------------

def test_an_exception_inside_the_block_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.jsonl"
    atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_jsonl(path) as rows:
            rows.write({"id": 1})
            rows.file.flush()
            raise RuntimeError("disk on fire")
    assert path.read_text() == "old\n" and leftovers(tmp_path) == []

    with pytest.raises(KeyboardInterrupt):
        with atomic_file(path) as f:
            f.write(b"half a checkpoint")
            raise KeyboardInterrupt
    assert path.read_text() == "old\n" and leftovers(tmp_path) == []


CHILD = """
import os, signal, sys
sys.path.insert(0, {root!r})
from tinyhelen.atomic import atomic_file, atomic_write_text
path = {path!r}
atomic_write_text(path, "old " * 1000)
with atomic_file(path, "w") as f:
    f.write("new " * 500)
    f.flush()
    os.fsync(f.fileno())  # the half-written new content is really on disk when the crash comes
    if {kill_inside}:
        os.kill(os.getpid(), signal.SIGKILL)
    f.write("new " * 500)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("kill_inside", [True, False], ids=["killed-mid-write", "killed-after-write"])
def test_sigkill_leaves_the_old_file_or_the_whole_new_one(tmp_path, kill_inside):
    path = tmp_path / "data.txt"
    code = CHILD.format(root=str(ROOT), path=str(path), kill_inside=kill_inside)
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert path.read_text() == ("old " * 1000 if kill_inside else "new " * 1000)
    # A SIGKILL cannot clean up: the half-written temp file stays, hidden, beside the target.
    assert len(leftovers(tmp_path)) == (1 if kill_inside else 0)


def test_text_json_and_jsonl_writers_round_trip(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"wörd": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text(encoding="utf-8")) == {"wörd": [1, 2]}
    assert "wörd" in (tmp_path / "a.json").read_text(encoding="utf-8")  # not \\u-escaped
    rows = [{"id": i, "text": f"line {i}\nwith a break"} for i in range(3)]
    with atomic_jsonl(tmp_path / "b.jsonl") as out:
        for row in rows:
            out.write(row)
    assert [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()] == rows
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w'"):
        with atomic_file(tmp_path / "c", "a"):
            pass


# -- the file and its folder are fsynced --------------------------------------------------------------

@pytest.fixture
def syscalls(monkeypatch):
    """Records ("fsync", path, is_folder) and ("replace", target) in the order they happen."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(os.fstat(fd).st_mode)))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def assert_synced_and_renamed(calls, target: Path):
    """A temp file beside target is fsynced, renamed onto target, then target's folder is fsynced."""
    folder = str(target.parent.resolve())
    file_sync = next(i for i, c in enumerate(calls) if c[0] == "fsync" and not c[2]
                     and Path(c[1]).parent == Path(folder) and Path(c[1]).name.startswith(f".{target.name}."))
    rename = next(i for i, c in enumerate(calls) if c == ("replace", str(target)) and i > file_sync)
    assert any(c[0] == "fsync" and c[2] and c[1] == folder for c in calls[rename:]), calls


WRITERS = {
    "bytes": lambda p: atomic_write_bytes(p, b"\x00\x01"),
    "text": lambda p: atomic_write_text(p, "hello\n"),
    "json": lambda p: atomic_write_json(p, {"a": 1}),
    "jsonl": lambda p: _write_jsonl(p),
}


def _write_jsonl(path):
    with atomic_jsonl(path) as out:
        out.write({"a": 1})


@pytest.mark.parametrize("name", WRITERS)
def test_every_writer_syncs_the_file_and_then_its_folder(tmp_path, syscalls, name):
    target = tmp_path / "new folder" / f"file.{name}"
    WRITERS[name](target)
    assert_synced_and_renamed(syscalls, target)


def test_the_answer_cache_writes_through_atomic(tmp_path, syscalls):
    cache = AnswerCache(tmp_path / "cache")
    key = cache_key(messages=[{"role": "user", "content": "hi"}], model="m", settings={"seed": 0})
    cache.put(key, {"content": "Hello.", "model": "m"})
    assert_synced_and_renamed(syscalls, cache.path(key))
    assert cache.get(key) == {"content": "Hello.", "model": "m"} and cache.hits == 1


def test_the_answer_cache_takes_concurrent_writers(tmp_path):
    cache = AnswerCache(tmp_path)
    keys = [cache_key(n=n) for n in range(64)]
    threads = [threading.Thread(target=lambda k=k: cache.put(k, {"content": k})) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [cache.get(k) for k in keys] == [{"content": k} for k in keys]
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_loss_plot_is_a_whole_png_written_through_atomic(tmp_path, syscalls):
    log = MetricsLog(tmp_path, None)
    for step in range(1, 6):
        log.write({"step": step, "loss": 5.0 / step, **({"val_loss": 1.5} if step == 5 else {})})
    plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_synced_and_renamed(syscalls, tmp_path / "loss.png")
    assert leftovers(tmp_path) == []


# -- an append-only log survives a torn last line ----------------------------------------------------

def test_append_line_syncs_each_line_and_the_folder_once(tmp_path, syscalls):
    log = tmp_path / "logs" / "events.jsonl"
    append_line(log, '{"n": 1}')
    append_line(log, '{"n": 2}')
    synced = [c for c in syscalls if c[0] == "fsync"]
    assert synced == [("fsync", str(log.resolve()), False), ("fsync", str(log.parent.resolve()), True),
                      ("fsync", str(log.resolve()), False)]
    with pytest.raises(ValueError, match="exactly one line"):
        append_line(log, "two\nlines")


def test_metrics_survive_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(tmp_path, None)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 4.0 - step})
    # What a crash in the middle of writing row 4 leaves: the row's first bytes, no newline.
    with open(path, "ab") as f:
        f.write(b'{"step": 4, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert read_lines(path) == [json.dumps({"step": s, "loss": 4.0 - s}) for s in (1, 2, 3)]

    # The next row is not glued onto the torn one: the torn bytes are cut off first.
    log.write({"step": 4, "loss": 0.5})
    lines = path.read_text().split("\n")
    assert lines[-1] == "" and [json.loads(line)["step"] for line in lines[:-1]] == [1, 2, 3, 4]


def test_resume_cuts_metrics_back_to_the_checkpoint_even_when_torn(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(tmp_path, None)
    for step in range(1, 7):
        log.write({"step": step, "loss": 1.0})
    with open(path, "ab") as f:
        f.write(b'{"st')
    MetricsLog(tmp_path, resume_step=4)
    assert path.read_text() == "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 5))


def test_a_torn_only_line_and_a_damaged_middle_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "lo')
    assert read_metrics(path) == []
    append_line(path, '{"step": 1}')
    assert path.read_bytes() == b'{"step": 1}\n'

    path.write_text('{"step": 1}\n{"step": 2, oops}\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON row"):
        read_metrics(path)
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        read_metrics(tmp_path / "missing.jsonl")
    assert read_lines(tmp_path / "missing.jsonl") == []

