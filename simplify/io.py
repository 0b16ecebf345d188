"""Reading documents of every genre and writing outputs atomically.

TinyHelen ships several layouts: JSON lines (plain or zstandard), the original conversations as ONE
JSON array of strings, original wiki rows shaped `{"<idx>": text}`, and structured genres (code,
math, instruction, Leaner-Glue rows) whose text lives in named fields. Everything becomes a
`Document`: the text fields to simplify, in order, plus the rest of the row carried through
untouched, so a label or an idx survives the rewrite. Outputs are written to a temporary file and
renamed into place, so a crash never leaves half a file that a restarted run would trust.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from simplify import GENRES

# Leaner-Glue rows: the text fields of each task, everything else (label, idx) is metadata.
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "wnli", "rte", "qqp", "qnli", "mnli")
GLUE_TEXT_FIELDS = ("sentence", "sentence1", "sentence2", "question", "question1", "question2",
                    "premise", "hypothesis")
SUFFIXES = (".jsonl", ".jsonl.zst", ".json", ".json.zst")


class DataError(ValueError):
    """A file that cannot be read as documents; the message names the file, the line and a fix."""


@dataclass
class Document:
    id: str
    genre: str
    fields: dict[str, str]                     # the text to simplify, in order
    meta: dict = field(default_factory=dict)   # the rest of the row, carried through unchanged
    source: str = ""                           # "file:line", for messages and rejects

    def train_text(self) -> str:
        """The text a model trains on, in the TinyHelen formats for structured genres."""
        return render_train_text(self.genre, self.fields)


def render_train_text(genre: str, fields: dict[str, str]) -> str:
    if genre == "code":
        return f"### CODING INPUT:\n{fields.get('prompt', '')}\n\n### RESPONSE:\n{fields.get('response', '')}"
    if genre == "math":
        return f"### MATH INPUT:\n{fields.get('problem', '')}\n\n### RESPONSE:\n{fields.get('hints', '')}"
    if genre == "instruction":
        task = "\n".join(v for k, v in fields.items() if k in ("instruction", "input") and v)
        return f"### TASK INPUT:\n{task}\n\n### RESPONSE:\n{fields.get('response', '')}"
    return "\n".join(v for v in fields.values() if v)


def genre_of_path(path: str | Path) -> str | None:
    """book0000.jsonl.zst -> book; cola_train.jsonl -> glue; None when the name says nothing."""
    name = Path(path).name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem = re.sub(r"\d+$", "", name)
    if stem in GENRES:
        return stem
    if stem.split("_")[0] in GLUE_TASKS:
        return "glue"
    return None


def _zstd_lines(path: Path) -> Iterator[str]:
    """Lines of a zstandard file, frame after frame. The release's frames carry no content size
    or checksum, so a cut-off download would otherwise just end early; here it is an error."""
    import zstandard  # only needed for compressed files

    dctx = zstandard.ZstdDecompressor()
    frame, fed, pending = dctx.decompressobj(), False, b""
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            while block:
                pending += frame.decompress(block)
                fed = True
                if frame.eof:  # the next frame starts in what this one left over
                    block, frame, fed = frame.unused_data, dctx.decompressobj(), False
                else:
                    block = b""
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode("utf-8") + "\n"
    if fed and not frame.eof:
        raise DataError(f"{path}: the zstandard data ends in the middle of a frame (a truncated file); "
                        f"copy or download it again")
    if pending:
        yield pending.decode("utf-8")


def _lines(path: Path) -> Iterator[str]:
    if path.name.endswith(".zst"):
        yield from _zstd_lines(path)
    else:
        with open(path, encoding="utf-8") as f:
            yield from f


def iter_rows(path: str | Path) -> Iterator[tuple[int, object]]:
    """(line or item number from 1, parsed JSON) for a JSON-lines file or a JSON-array file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (give a .jsonl, .jsonl.zst, .json or .json.zst file or a folder)")
    if path.name.endswith((".json", ".json.zst")):
        try:
            data = json.loads("".join(_lines(path)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); a .json file must hold "
                            f"one JSON array of strings or objects") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json file must hold one JSON array, found {type(data).__name__}")
        yield from enumerate(data, start=1)
        return
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not valid JSON ({e.msg}); each line of a JSON-lines "
                            f"file must be one JSON object") from None


def _row_id(row: dict, fallback: str) -> str:
    for key in ("id", "hash", "idx", "problem_idx"):
        if row.get(key) not in (None, ""):
            return str(row[key])
    return fallback


def row_to_document(row: object, genre: str, source: str, fallback_id: str) -> Document:
    """Turn one parsed row into a Document; raise DataError naming source when it has no text."""
    if isinstance(row, str):  # original conversations: one string per conversation
        return Document(fallback_id, genre, {"text": row}, {}, source)
    if not isinstance(row, dict):
        raise DataError(f"{source}: expected a JSON object or string, found {type(row).__name__}")
    if len(row) == 1:  # original wiki rows: {"<idx>": text}
        (key, value), = row.items()
        if key.isdigit() and isinstance(value, str):
            return Document(key, genre, {"text": value}, {"idx": int(key)}, source)
    row = dict(row)
    genre = row.pop("genre", None) or genre
    doc_id = _row_id(row, fallback_id)
    hints = None
    if genre == "code":
        names = ("prompt", "response")
    elif genre == "math":
        hints = row.get("hints")
        if isinstance(hints, list):  # the prompt sees one text; the output keeps the list (meta)
            row["hints"] = "\n".join(str(h) for h in hints)
        names = ("problem", "hints")
    elif genre == "instruction":
        if "output" in row and "response" not in row:
            row["response"] = row.pop("output")
        names = ("instruction", "input", "response")
    elif genre == "glue":
        names = GLUE_TEXT_FIELDS
    else:
        names = ("text",)
    fields = {k: row.pop(k) for k in names if isinstance(row.get(k), str)}
    if genre == "math" and isinstance(hints, list):
        row["hints"] = hints
    if not fields:
        raise DataError(f"{source}: a {genre} row needs a text field ({', '.join(names)}); it has "
                        f"{sorted(row)}. Pass the right genre (--genres=...) or fix the file")
    return Document(doc_id, genre, fields, row, source)


def list_files(root: str | Path, split: str = "", genres: Iterable[str] = ()) -> list[Path]:
    """The data files under root (or root itself), filtered by split folder name and genre."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder (for TinyHelen use ../shared/data/tinyhelen/ori/10M)")
    genres = set(genres)
    files = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or not path.name.endswith(SUFFIXES):
            continue
        if split and split not in path.relative_to(root).parts[:-1]:
            continue
        if genres and genre_of_path(path) not in genres:
            continue
        files.append(path)
    if not files:
        raise DataError(f"{root}: no .jsonl/.jsonl.zst/.json.zst files"
                        + (f" in a '{split}' folder" if split else "")
                        + (f" for genres {sorted(genres)}" if genres else ""))
    return files


def iter_documents(root: str | Path, split: str = "", genres: Iterable[str] = (),
                   genre: str = "") -> Iterator[Document]:
    """Every document under root. genre forces one genre; otherwise it comes from each file name
    (book0000.jsonl -> book) or a row's own "genre" field, and plain text is the fallback."""
    for path in list_files(root, split, genres):
        file_genre = genre or genre_of_path(path) or "web"
        for number, row in iter_rows(path):
            yield row_to_document(row, file_genre, f"{path}:{number}", f"{path.name}:{number}")


class AtomicWriter:
    """Write a text file under a temporary name and rename it into place only on success."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.file = open(self.tmp, "w", encoding="utf-8")

    def write_row(self, row: dict) -> None:
        self.file.write(json.dumps(row, ensure_ascii=False) + "\n")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.file.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
