"""One writer per run folder: a lock file that a second process writing the same folder stops at.

    with runlock.hold(out_dir): ...          # train.py, curriculum.py, inherit.py: the whole stage
    lock = runlock.acquire(out_dir); ...; lock.release()     # the Trainer: construction to end of run

Two processes training into one out_dir would both write ckpt.pt, metrics.jsonl and loss.png, and
the run that survived would be whichever wrote last. So the first process to write a run folder
creates OUT_DIR/run.lock, a small JSON record of who it is (pid, host, the host's boot id, the
process's start time, the command line), and a second process that finds it stops with a
RunFolderBusy error (a ConfigError: every entry point prints it and exits 2) before any compute,
naming the owner and what to do.

Creating the lock is atomic: the record is written to a temporary file that is then hard-linked to
the lock's name, which fails when the name exists; so of two processes starting together exactly
one gets it, and a reader never sees a half-written record.

A lock whose owner is gone is taken over with a message. Gone means:
  - same host, same boot: the process is not running (os.kill(pid, 0) fails, or the pid now belongs
    to a process started at another time, or it is a zombie): SIGKILL, a crash, an OOM kill;
  - same host, another boot id: the machine restarted since the lock was written;
  - another host (a folder on a shared filesystem): the lock file was not refreshed for
    STALE_AFTER_S = 10 minutes. The owner refreshes it (its modification time) every HEARTBEAT_S =
    60 s from a background thread, so only a process that is gone (or stopped for ten minutes)
    loses its lock; hosts' clocks must agree to within a few minutes;
  - a lock file that cannot be read as a record (written by hand, or damaged).
Two processes that find the same stale lock at once are serialised by an flock on the folder while
one of them replaces it; the other then finds the new owner alive and stops.

Within one process the lock is re-entrant (train.py holds it around the Trainer, which takes it
too) and released when the last holder releases it, or at the latest when the interpreter exits;
a SIGKILL leaves the file, which the next process takes over. Under torchrun only rank 0 holds the
lock: its ranks share their run's lock, and acquire() is a no-op on the others. Readers (sample,
evaluate, export) take no lock.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import fcntl
import json
import os
import shlex
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from tinyhelen.atomic import fsync_dir
from tinyhelen.config import ConfigError

LOCK_NAME = "run.lock"
HEARTBEAT_S = 60.0          # how often the owner refreshes its lock file
STALE_AFTER_S = 600.0       # another host's lock not refreshed for this long is taken over
HOST = socket.gethostname()


class RunFolderBusy(ConfigError):
    """Another live process writes this run folder: the message names it and what to do."""


def _boot_id() -> str:
    """The kernel's id of this boot (Linux): a lock from an earlier boot belongs to no process."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process from /proc (Linux), or None.

    The start time tells a live owner from a new process that got the dead owner's pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (command name)", which may hold spaces
    return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)


def _running(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    now = _process_start(pid)
    if now is None:
        return True  # no /proc to say more: trust kill
    state, started = now
    return state != "Z" and (start is None or started == start)


def _gone(owner: dict | None, refreshed: float) -> str | None:
    """Why the owner of a lock no longer holds it (for the takeover message), or None if it may."""
    if owner is None:
        return "the lock file is not a lock record"
    if owner.get("host") != HOST:
        age = time.time() - refreshed
        if age > STALE_AFTER_S:
            return (f"it was last refreshed {age / 60:.0f} minutes ago (a lock of another host is stale "
                    f"after {STALE_AFTER_S / 60:.0f} minutes without its heartbeat)")
        return None
    if owner.get("boot_id") and _boot_id() and owner["boot_id"] != _boot_id():
        return "this machine has restarted since"
    if not _running(int(owner.get("pid", 0)), owner.get("process_start")):
        return f"process {owner.get('pid')} is no longer running"
    return None


def _read(path: Path) -> tuple[dict | None, float]:
    """(the record, or None if unreadable; when it was last refreshed). FileNotFoundError if absent."""
    refreshed = path.stat().st_mtime
    try:
        owner = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return None, refreshed
    return (owner if isinstance(owner, dict) else None), refreshed


def describe_owner(owner: dict) -> str:
    where = "this machine" if owner.get("host") == HOST else f"host {owner.get('host')}"
    return (f"pid {owner.get('pid')} on {where}, started {owner.get('started')}, "
            f"running `{owner.get('command')}`")


@contextlib.contextmanager
def _takeovers_one_at_a_time(folder: Path):
    """An flock on the folder while a stale lock is replaced (the kernel drops it if we die). Where
    the filesystem cannot flock a folder (NFS) two takeovers at the same instant are not serialised."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


class RunLock:
    """This process's hold on one run folder's lock (see the module docstring)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / LOCK_NAME
        self.holders = 0
        self.record = None       # what we wrote: how we know the file is still ours
        self.created_folder = False
        self.created_top = None  # the highest of the folders it created
        self._stop = threading.Event()
        self._heartbeat = None

    # ---------------------------------------------------------------- taking it
    def _record(self) -> dict:
        command = shlex.join([Path(sys.executable).name, *sys.argv])
        start = _process_start(os.getpid())
        return {"pid": os.getpid(), "host": HOST, "boot_id": _boot_id(),
                "process_start": start[1] if start else None,
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": command, "cwd": os.getcwd()}

    def _create(self) -> bool:
        """Write our record to a temp file and link it to the lock's name: False if the name exists."""
        record = self._record()
        fd, tmp = tempfile.mkstemp(prefix=f".{LOCK_NAME}.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)  # atomic: fails if another process holds the name
            except FileExistsError:
                return False
        finally:
            os.unlink(tmp)
        self.record = record
        fsync_dir(self.folder)
        return True

    def _ours(self) -> bool:
        """Whether the lock file is still the one this process wrote (not removed, not taken over)."""
        try:
            return _read(self.path)[0] == self.record
        except FileNotFoundError:
            return False

    def _take(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"{self.folder} is a file, not a run folder: give another --out_dir")
        if not self.folder.exists():
            # the highest folder this creates, so that release() leaves no empty parents behind either
            missing = [self.folder, *(p for p in self.folder.parents if not p.exists())]
            self.created_top = missing[-1]
            self.folder.mkdir(parents=True, exist_ok=True)
            self.created_folder = True
        for _ in range(10):  # each pass either takes the lock, stops, or saw the file change under it
            if self._create():
                return
            try:
                owner, refreshed = _read(self.path)
            except FileNotFoundError:  # its owner released it just now
                continue
            if _gone(owner, refreshed) is None:
                raise RunFolderBusy(
                    f"{self.folder} is being written by another run: {describe_owner(owner)} (lock "
                    f"{self.path}). Wait for it to end, write into another --out_dir, or, once it has "
                    f"ended, continue it with --resume (the lock of a process that has died is taken "
                    f"over then)")
            with _takeovers_one_at_a_time(self.folder):
                try:  # look again: another process may have taken it over meanwhile
                    owner, refreshed = _read(self.path)
                except FileNotFoundError:
                    continue
                reason = _gone(owner, refreshed)
                if reason is None:
                    continue  # a live owner now: the next pass says so
                self.path.unlink(missing_ok=True)
                if self._create():
                    who = describe_owner(owner) if owner else "an unknown process"
                    print(f"note: took over the lock of {self.folder} from {who}: {reason}",
                          file=sys.stderr, flush=True)
                    return
        raise RunFolderBusy(f"{self.path} keeps changing: several processes are starting runs in "
                            f"{self.folder}; start one")

    # ---------------------------------------------------------------- holding it
    def _refresh_until_released(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                ours = self._ours()
                if ours:
                    os.utime(self.path)
            except OSError:
                continue  # a passing filesystem error (or a release just now): the next pass decides
            if not ours and not self._stop.is_set():
                print(f"warning: the lock {self.path} of this run was removed or replaced by another "
                      f"process: another run may now write {self.folder} too", file=sys.stderr, flush=True)
                return

    def hold(self) -> None:
        if self.holders == 0:
            self._take()
            self._stop.clear()
            self._heartbeat = threading.Thread(target=self._refresh_until_released, daemon=True,
                                               name=f"runlock heartbeat {self.folder}")
            self._heartbeat.start()
        self.holders += 1

    def release(self) -> None:
        """Give up one hold; the last one removes the lock file (and the folder, if this process
        created it and nothing was written into it)."""
        if self.holders == 0:
            return
        self.holders -= 1
        if self.holders:
            return
        self._stop.set()
        if self._ours():  # not one that took it over (after ten minutes without a heartbeat)
            self.path.unlink(missing_ok=True)
        if self.created_folder:
            with contextlib.suppress(OSError):  # not empty: the run wrote into it, which is what stays
                for folder in (self.folder, *self.folder.parents):
                    folder.rmdir()
                    if folder == self.created_top:
                        break
        _held.pop(_key(self.folder), None)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class _NoLock:
    """What ranks other than 0 hold: nothing (rank 0 holds the run's lock for all of them)."""

    def release(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


_held: dict[str, RunLock] = {}


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def acquire(folder: str | os.PathLike) -> RunLock | _NoLock:
    """Hold folder's lock (creating the folder), or raise RunFolderBusy naming the live owner.
    Re-entrant within a process; each acquire needs its release()."""
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 holds it for the run
        return _NoLock()
    folder = Path(folder)
    lock = _held.get(_key(folder))
    if lock is None:
        lock = RunLock(folder)
    lock.hold()
    _held[_key(folder)] = lock
    return lock


def hold(folder: str | os.PathLike) -> RunLock | _NoLock:
    """acquire() for a with-block: `with runlock.hold(out_dir): ...` releases at its end."""
    return acquire(folder)


@atexit.register
def _release_all() -> None:
    """A normal exit (also by an uncaught exception or SystemExit) frees every lock still held."""
    for lock in list(_held.values()):
        lock.holders = min(lock.holders, 1)
        lock.release()
