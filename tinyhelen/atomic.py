"""Crash-safe file writes: a crash at any moment leaves either the old file or the whole new one.

Every file a later step trusts goes through here: checkpoints, exported models, tokenizers, token
files, metrics, plots, the simplify outputs and its answer cache.

Whole files are written to a temporary name in the same folder, flushed and fsynced, renamed onto
the target (os.replace is atomic on POSIX) and then the folder itself is fsynced: the rename is a
change to the folder, and until the folder is on disk a power cut can bring back the old name or
no file at all.

    with atomic_file(path) as f: ...            # binary; the file appears only if the block succeeds
    with atomic_file(path, "w") as f: ...       # the same in UTF-8 text
    with atomic_jsonl(path) as rows: rows.write({"id": 1})
    atomic_write_bytes(path, data); atomic_write_text(path, text); atomic_write_json(path, obj)

An append-only log (metrics.jsonl) cannot be renamed into place on every row without rewriting
the whole file each time, so it is appended to instead: `append_line` writes one whole line,
flushes and fsyncs it, and a crash can then only tear the last line. `read_lines` ignores a last
line without its newline and `append_line` cuts such a line off before it appends, so a torn row
is neither read nor glued to the next one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder, so that the names created, renamed or removed in it survive a power cut."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside path for writing ("wb" bytes, "w" UTF-8 text); only if the block
    succeeds is it fsynced, renamed onto path and the folder fsynced. On an exception the temp file
    is removed and path is untouched; after a SIGKILL a hidden `.NAME.*.tmp` file may be left."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes whole files: mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    """obj as JSON (non-ASCII kept as is) plus a final newline."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


class JsonLines:
    """Writes one JSON object per line to an open text file."""

    def __init__(self, file: IO[str]):
        self.file = file
        self.rows = 0

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows += 1


@contextlib.contextmanager
def atomic_jsonl(path: str | os.PathLike) -> Iterator[JsonLines]:
    """A JSON-lines file streamed row by row that appears, whole, only if the block succeeds."""
    with atomic_file(path, "w") as f:
        yield JsonLines(f)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line (a newline is added) to an append-only log and fsync it.

    A torn last line left by an earlier crash is cut off first. The folder is fsynced when this
    call creates the file, so that its name survives too."""
    if "\n" in line:
        raise ValueError("append_line appends exactly one line; the text contains a newline")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    with open(path, "ab") as f:
        _cut_torn_tail(f)
        f.write(line.encode("utf-8") + b"\n")
        f.flush()
        os.fsync(f.fileno())
    if created:
        fsync_dir(path.parent)


def read_lines(path: str | os.PathLike) -> list[str]:
    """The complete lines of an append-only log, without their newlines; a torn last line (one a
    crash cut before its newline) is left out. A missing file has no lines."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    complete = data[: data.rfind(b"\n") + 1]
    return complete.decode("utf-8").split("\n")[:-1]


def _cut_torn_tail(f) -> None:
    """Truncate a file opened for appending back to just after its last newline."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    with open(f.name, "rb") as r:
        r.seek(size - 1)
        if r.read(1) == b"\n":
            return  # the common case: the last line is whole
        r.seek(0)
        keep = r.read().rfind(b"\n") + 1  # only after a crash: reading the whole log is fine
    f.truncate(keep)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
