"""Reading a folder laid out like the TinyHelen release into plain training documents.

The release mixes several formats (see ../shared/data/tinyhelen/README.md); this module is the one
place that knows them, so the rest of the engine sees only `Document(genre, text, path, line)`:

    ROOT/leaner/10M/SPLIT/GENRE0000.jsonl          JSON lines, plain
    ROOT/ori/10M/SPLIT/GENRE000N.jsonl[.zst]        JSON lines, mostly zstandard-compressed
    ROOT/ori/10M/SPLIT/conversation000N.json.zst    ONE JSON array of strings, not JSON lines

and the text to train on depends on the genre: `text` for most; the ori wiki rows are `{"<idx>": text}`;
code rows become `### CODING INPUT:\\n{prompt}\\n\\n### RESPONSE:\\n{response}` and math rows
`### MATH INPUT:\\n{problem}\\n\\n### RESPONSE:\\n{hints joined by newlines}`.

Reading streams line by line (also through zstd), so memory stays small whatever the file size; only
the conversation array must be parsed whole. Order is deterministic: genres in GENRES order, files
sorted by name, rows in file order. Problems raise DataError naming the file, the line and the fix.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, TextIO

import zstandard

GENRES = ("web", "book", "wiki", "textbook", "conversation", "code", "math")
SPLITS = ("train", "validation", "test")
CORPORA = ("leaner", "ori")
DEFAULT_SCALE = "10M"

CODE_TEMPLATE = "### CODING INPUT:\n{prompt}\n\n### RESPONSE:\n{response}"
MATH_TEMPLATE = "### MATH INPUT:\n{problem}\n\n### RESPONSE:\n{hints}"
_FILE_NAME = re.compile(r"^(?P<genre>[a-z]+)\d*\.(?P<kind>jsonl|json)(?P<zst>\.zst)?$")


class DataError(ValueError):
    """The data on disk is missing or not in the expected format; the message says where and how to fix."""


@dataclass(frozen=True)
class Document:
    genre: str
    text: str
    path: str
    line: int  # 1-based line of a JSON-lines file, or 1-based position in a JSON array file


# ---- finding files --------------------------------------------------------------------------------

def split_dir(root: str | Path, corpus: str = "leaner", split: str = "train",
              scale: str = DEFAULT_SCALE) -> Path:
    """ROOT/CORPUS/SCALE/SPLIT, checked to exist."""
    if corpus not in CORPORA:
        raise DataError(f"unknown corpus {corpus!r}: choose one of {', '.join(CORPORA)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    root = Path(root)
    folder = root / corpus / scale / split
    if not folder.is_dir():
        what = "TinyHelen data folder" if not root.is_dir() else "folder"
        raise DataError(
            f"{what} not found: expected {folder} (files like {folder}/book0000.jsonl). Pass "
            f"--data_root=PATH to a copy of the TinyHelen release (e.g. ../shared/data/tinyhelen), or leave "
            f"data_root empty so that python data/prepare.py downloads it.")
    return folder


def genre_files(root: str | Path, corpus: str = "leaner", split: str = "train",
                scale: str = DEFAULT_SCALE) -> dict[str, list[Path]]:
    """{genre: sorted data files} for the genres that have files in this split, in GENRES order."""
    found: dict[str, list[Path]] = {}
    for path in sorted(split_dir(root, corpus, split, scale).iterdir()):
        m = _FILE_NAME.match(path.name)
        if m and m["genre"] in GENRES and path.is_file():
            found.setdefault(m["genre"], []).append(path)
    for files in found.values():
        stems = [p.name.removesuffix(".zst") for p in files]
        for stem in {s for s in stems if stems.count(s) > 1}:
            raise DataError(f"both {stem} and {stem}.zst are in {files[0].parent}: the rows would be read "
                            f"twice; delete one of them")
    return {g: found[g] for g in GENRES if g in found}


def available_genres(root, corpus="leaner", split="train", scale=DEFAULT_SCALE) -> list[str]:
    return list(genre_files(root, corpus, split, scale))


def check_genres(genres: Iterable[str]) -> list[str]:
    genres = list(genres)
    for g in genres:
        if g not in GENRES:
            raise DataError(f"unknown genre {g!r}: the TinyHelen genres are {', '.join(GENRES)}")
    return genres


# ---- reading rows ---------------------------------------------------------------------------------

class _ZstdReader(io.RawIOBase):
    """Streaming zstd decompression that notices a truncated file.

    The release's .zst files record neither their content size nor a checksum, and zstandard's own
    stream_reader just stops where a cut file stops, so a truncated download would silently lose rows.
    Here the compressed data must end exactly at the end of a frame (several frames may follow each other)."""

    def __init__(self, path: Path):
        super().__init__()
        self._path, self._file = path, open(path, "rb")
        self._out, self._pos = b"", 0
        self._start_frame()

    def _start_frame(self):
        self._frame, self._in_frame = zstandard.ZstdDecompressor().decompressobj(), False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._pos == len(self._out):
            data = self._file.read(1 << 20)
            if not data:
                if self._in_frame:
                    raise DataError(f"{self._path}: the zstd data stops in the middle of a frame: the file "
                                    f"is truncated; fetch it again")
                return 0
            self._out, self._pos = self._decompress(data), 0
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos:self._pos + n]
        self._pos += n
        return n

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            self._in_frame = True
            out.append(self._frame.decompress(data))
            if not self._frame.eof:
                break
            data = self._frame.unused_data  # the start of a following frame, if any
            self._start_frame()
        return b"".join(out)

    def close(self):
        self._file.close()
        super().close()


def _open_text(path: Path) -> TextIO:
    """Open a plain or .zst file as text. newline="\\n": only \\n ends a JSON line, nothing is translated."""
    if path.name.endswith(".zst"):
        return io.TextIOWrapper(io.BufferedReader(_ZstdReader(path), 1 << 20), encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def _snippet(text: str, width: int = 80) -> str:
    return repr(text[:width] + ("..." if len(text) > width else ""))


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) for each non-blank line of a JSON-lines file, .zst or plain."""
    path = Path(path)
    lineno = 0
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: malformed JSON line ({e.msg} at column {e.colno}): "
                                    f"{_snippet(line.strip())}. Fix or delete that line.") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object per line, got "
                                    f"{type(row).__name__}: {_snippet(line.strip())}")
                yield lineno, row
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 near line {lineno + 1} ({e.reason})") from None
    except (OSError, zstandard.ZstdError) as e:  # a truncated or corrupt file
        raise DataError(f"{path}: cannot read ({e}); the file may be truncated, fetch it again") from None


def _field(row: dict, name: str, path: Path, lineno: int, kind=str):
    if name not in row:
        fields = ", ".join(map(repr, row)) or "none"
        raise DataError(f"{path}:{lineno}: row has no {name!r} field (its fields: {fields})")
    value = row[name]
    if not isinstance(value, kind):
        expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataError(f"{path}:{lineno}: field {name!r} is {type(value).__name__}, expected {expected}")
    return value


def row_text(genre: str, row: dict, path: Path, lineno: int) -> str:
    """The training text of one row of a genre's file (see the module docstring for the rules)."""
    if genre == "code":
        prompt = _field(row, "prompt", path, lineno)
        if row.get("response") is None:
            # The README says ori train code rows lack a response; every row of the current release has
            # one, but if it is absent we keep the prompt alone rather than a dangling header.
            return f"### CODING INPUT:\n{prompt}"
        return CODE_TEMPLATE.format(prompt=prompt, response=_field(row, "response", path, lineno))
    if genre == "math":
        hints = _field(row, "hints", path, lineno, kind=(list, str))
        if isinstance(hints, list) and not all(isinstance(h, str) for h in hints):
            raise DataError(f"{path}:{lineno}: field 'hints' must be a list of strings")
        hints = hints if isinstance(hints, str) else "\n".join(hints)
        return MATH_TEMPLATE.format(problem=_field(row, "problem", path, lineno), hints=hints)
    if genre == "wiki" and "text" not in row and len(row) == 1:
        (text,) = row.values()  # ori wiki: {"<idx>": text}
        if isinstance(text, str):
            return text
    return _field(row, "text", path, lineno)


def _iter_json_array(path: Path, genre: str) -> Iterator[Document]:
    """The ori conversation file: one JSON array of strings (small enough to load whole)."""
    try:
        with _open_text(path) as f:
            items = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    except (UnicodeDecodeError, OSError, zstandard.ZstdError) as e:
        raise DataError(f"{path}: cannot read ({e}); the file may be truncated, fetch it again") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected one JSON array of strings, got {type(items).__name__}")
    for i, text in enumerate(items, 1):
        if not isinstance(text, str):
            raise DataError(f"{path}: item {i} of the array is {type(text).__name__}, expected a string")
        yield Document(genre, text, str(path), i)


def iter_file(path: str | Path, genre: str) -> Iterator[Document]:
    """Documents of one data file of the given genre, whatever its format."""
    path = Path(path)
    if path.name.removesuffix(".zst").endswith(".json"):
        yield from _iter_json_array(path, genre)
        return
    for lineno, row in iter_json_lines(path):
        yield Document(genre, row_text(genre, row, path, lineno), str(path), lineno)


def iter_documents(root: str | Path, corpus: str = "leaner", split: str = "train",
                   genres: Iterable[str] | None = None, scale: str = DEFAULT_SCALE) -> Iterator[Document]:
    """Stream the documents of one corpus split. genres=None means every genre present in the split;
    a genre asked for by name must have documents in this split."""
    files = genre_files(root, corpus, split, scale)
    folder = split_dir(root, corpus, split, scale)
    present = ", ".join(files) or "none"
    if genres is None:
        if not files:
            raise DataError(f"no data files (GENRE0000.jsonl...) in {folder}")
        wanted = list(files)
    else:
        wanted = [g for g in GENRES if g in set(check_genres(genres))]
    for genre in wanted:
        if genre not in files:
            raise DataError(f"genre {genre!r} has no file in {folder} "
                            f"(genres present in this split: {present})")
        count = 0
        for path in files[genre]:
            for doc in iter_file(path, genre):
                count += 1
                yield doc
        if count == 0:
            raise DataError(f"genre {genre!r} has files in {folder} but no documents "
                            f"(genres present in this split: {present})")


def iter_jsonl_texts(path: str | Path) -> Iterator[Document]:
    """Any JSON-lines file (optionally .zst) of {"text": ...} rows, as documents of genre "text"."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file not found: {path} (expected JSON lines of {{\"text\": ...}} rows)")
    for lineno, row in iter_json_lines(path):
        yield Document("text", _field(row, "text", path, lineno), str(path), lineno)


def load_texts(path_or_folder: str | Path, corpus: str = "leaner", split: str = "test",
               genres: Iterable[str] | None = None, scale: str = DEFAULT_SCALE) -> list[Document]:
    """Documents for evaluation: a folder is read as the TinyHelen layout (each document keeps its genre),
    a file as {"text": ...} rows (genre "text")."""
    path = Path(path_or_folder)
    if path.is_file():
        return list(iter_jsonl_texts(path))
    return list(iter_documents(path, corpus, split, genres, scale))
