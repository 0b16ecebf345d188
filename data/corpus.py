"""Reading the TinyHelen release: the one place that knows its layout, its formats and its quirks.

Everything becomes a `Document`: its genre, the text fields of the row in order, the rest of the row
(`meta`, carried through untouched so that a label or an idx survives a rewrite by simplify/), and
where it came from. `Document.text` is the text a model trains on. The files:

    ROOT/leaner/10M/SPLIT/GENRE0000.jsonl          JSON lines, plain
    ROOT/ori/10M/SPLIT/GENRE000N.jsonl[.zst]        JSON lines, mostly zstandard-compressed
    ROOT/ori/10M/SPLIT/conversation000N.json.zst    ONE JSON array of strings, not JSON lines
    ROOT/leaner/glue/TASK_SPLIT.jsonl               Leaner-Glue rows (read by data/tasks.py)

The text fields depend on the genre: `text` for most; the ori wiki rows are `{"<idx>": text}`; code
rows are `prompt` + `response` and train as `### CODING INPUT:\\n{prompt}\\n\\n### RESPONSE:\\n{response}`,
math rows `problem` + `hints` as `### MATH INPUT:\\n{problem}\\n\\n### RESPONSE:\\n{hints joined by
newlines}`, instruction rows `instruction`, `input`, `response` as `### TASK INPUT:\\n...`.

Reading streams line by line (also through zstd), so memory stays small whatever the file size; only
the conversation array must be parsed whole. Order is deterministic: genres in GENRES order, files
sorted by name, rows in file order. Problems raise DataError naming the file, the line and the fix.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, TextIO

import zstandard

GENRES = ("web", "book", "wiki", "textbook", "conversation", "code", "math")  # Leaner-Pretrain
TEXT_GENRES = GENRES + ("instruction", "glue")  # every kind of row simplify/ can rewrite
SPLITS = ("train", "validation", "test")
CORPORA = ("leaner", "ori")
DEFAULT_SCALE = "10M"
SUFFIXES = (".jsonl", ".jsonl.zst", ".json", ".json.zst")

CODE_TEMPLATE = "### CODING INPUT:\n{prompt}\n\n### RESPONSE:\n{response}"
MATH_TEMPLATE = "### MATH INPUT:\n{problem}\n\n### RESPONSE:\n{hints}"
TASK_TEMPLATE = "### TASK INPUT:\n{task}\n\n### RESPONSE:\n{response}"
_FILE_NAME = re.compile(r"^(?P<genre>[a-z]+)\d*\.(?P<kind>jsonl|json)(?P<zst>\.zst)?$")


@dataclass(frozen=True)
class GlueTask:
    """One Leaner-Glue task: its text fields in order, its labels, and how GLUE scores it."""
    name: str
    text_fields: tuple[str, ...]
    labels: tuple[str, ...]           # class names by label id; () for regression (stsb: a float 0-5)
    splits: tuple[str, ...]           # the file names' SPLIT part, as the release names them
    metrics: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1

    @property
    def regression(self) -> bool:
        return not self.labels


_TV = ("train", "validation")
GLUE_TASKS = {t.name: t for t in (
    GlueTask("cola", ("sentence",), ("unacceptable", "acceptable"), _TV, ("mcc", "accuracy")),
    GlueTask("sst2", ("sentence",), ("negative", "positive"), _TV, ("accuracy",)),
    GlueTask("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), _TV, ("accuracy", "f1")),
    GlueTask("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), _TV, ("accuracy", "f1")),
    GlueTask("stsb", ("sentence1", "sentence2"), (), _TV, ("pearson", "spearman")),
    GlueTask("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
             ("train", "validation_matched", "validation_mismatched"), ("accuracy",)),
    GlueTask("qnli", ("question", "sentence"), ("entailment", "not_entailment"), _TV, ("accuracy",)),
    GlueTask("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), _TV, ("accuracy",)),
    GlueTask("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), _TV, ("accuracy",)),
)}
GLUE_TEXT_FIELDS = tuple(dict.fromkeys(f for t in GLUE_TASKS.values() for f in t.text_fields))


class DataError(ValueError):
    """The data on disk is missing or not in the expected format; the message says where and how to fix."""


def task_prompt(instruction: str, input: str = "") -> str:
    """What an instruction-tuned model is given: the task, then the header its answer follows."""
    task = "\n".join(t for t in (instruction, input) if t)
    return TASK_TEMPLATE.format(task=task, response="")


def render_text(genre: str, fields: dict[str, str]) -> str:
    """The text a model trains on for a row's text fields, in the TinyHelen templates."""
    if genre == "code":
        if "response" not in fields:
            # The README says ori train code rows lack a response (every row of the current release has
            # one): the prompt alone then, rather than a dangling header.
            return f"### CODING INPUT:\n{fields.get('prompt', '')}"
        return CODE_TEMPLATE.format(prompt=fields.get("prompt", ""), response=fields["response"])
    if genre == "math":
        return MATH_TEMPLATE.format(problem=fields.get("problem", ""), hints=fields.get("hints", ""))
    if genre == "instruction":
        prompt = task_prompt(fields.get("instruction", ""), fields.get("input", ""))
        return prompt + fields.get("response", "")
    if len(fields) == 1:
        (text,) = fields.values()
        return text
    return "\n".join(v for v in fields.values() if v)


@dataclass
class Document:
    id: str                                    # the row's id/hash/idx, else "FILE:LINE"
    genre: str
    fields: dict[str, str]                     # the row's text fields, in order
    meta: dict = field(default_factory=dict)   # the rest of the row, carried through unchanged
    path: str = ""
    line: int = 0  # 1-based line of a JSON-lines file, or 1-based position in a JSON array file

    @property
    def text(self) -> str:
        return render_text(self.genre, self.fields)

    def train_text(self) -> str:
        return self.text

    @property
    def source(self) -> str:
        """"FILE:LINE", for messages and reject logs."""
        return f"{self.path}:{self.line}" if self.path else ""


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
        # No flag is named here: each entry point that reads a folder says how to give it one.
        raise DataError(f"{what} not found: expected {folder} (files like {folder}/book0000.jsonl); give "
                        f"the path of a copy of the TinyHelen release (e.g. ../shared/data/tinyhelen)")
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
                    raise DataError(f"{self._path}: the zstd data stops in the middle of a frame (a truncated "
                                    f"file); copy or download it again")
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


def _check_file(path: Path) -> None:
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "no such file"
        raise DataError(f"{path}: {what} (expected a .jsonl, .jsonl.zst, .json or .json.zst file)")


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) for each non-blank line of a JSON-lines file, .zst or plain."""
    path = Path(path)
    _check_file(path)
    lineno = 0
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}): "
                                    f"{_snippet(line.strip())}. Each line of a JSON-lines file must be one "
                                    f"JSON object: fix or delete that line.") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object per line, got "
                                    f"{type(row).__name__}: {_snippet(line.strip())}")
                yield lineno, row
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 near line {lineno + 1} ({e.reason})") from None
    except (OSError, zstandard.ZstdError) as e:  # a truncated or corrupt file
        raise DataError(f"{path}: cannot read ({e}); the file may be truncated, fetch it again") from None


def _iter_json_array(path: Path) -> Iterator[tuple[int, str | dict]]:
    """The ori conversation file: one JSON array of strings (small enough to load whole)."""
    try:
        with _open_text(path) as f:
            items = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}); a .json file "
                        f"must hold one JSON array of strings or objects") from None
    except (UnicodeDecodeError, OSError, zstandard.ZstdError) as e:
        raise DataError(f"{path}: cannot read ({e}); the file may be truncated, fetch it again") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected one JSON array of strings, got {type(items).__name__}")
    for i, item in enumerate(items, 1):
        if not isinstance(item, (str, dict)):
            raise DataError(f"{path}: item {i} of the array is {type(item).__name__}, expected a string")
        yield i, item


def iter_rows(path: str | Path) -> Iterator[tuple[int, str | dict]]:
    """(line, or position in an array, from 1; parsed row) for a JSON-lines or a JSON-array file."""
    path = Path(path)
    _check_file(path)
    if path.name.removesuffix(".zst").endswith(".json"):
        return _iter_json_array(path)
    return iter_json_lines(path)


def get_field(row: dict, name: str, where: str, what: str = "row", kind=str, required: bool = True):
    """row[name], checked to be of the given type(s); None when it is absent (or null) and optional."""
    if row.get(name) is None and not required:
        return None
    if name not in row:
        fields = ", ".join(map(repr, row)) or "none"
        raise DataError(f"{where}: a {what} needs a field {name!r} (its fields: {fields}); fix the row")
    value = row[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # True is an int
        raise DataError(f"{where}: field {name!r} is {type(value).__name__} {_snippet(repr(value), 40)}, "
                        f"expected {' or '.join(k.__name__ for k in kinds)}")
    return value


def _row_id(row: dict, fallback: str) -> str:
    for key in ("id", "hash", "idx", "problem_idx"):
        if row.get(key) not in (None, ""):
            return str(row[key])
    return fallback


def _text_fields(row: dict, genre: str, where: str) -> tuple[dict[str, str], set[str]]:
    """(the row's text fields for its genre, the row keys they came from)."""
    what = f"{genre} row"
    if genre == "code":
        fields = {"prompt": get_field(row, "prompt", where, what)}
        if row.get("response") is not None:
            fields["response"] = get_field(row, "response", where, what)
        return fields, set(fields)
    if genre == "math":
        hints = get_field(row, "hints", where, what, kind=(list, str))
        if isinstance(hints, list) and not all(isinstance(h, str) for h in hints):
            raise DataError(f"{where}: field 'hints' must be a list of strings or a string; fix the row")
        fields = {"problem": get_field(row, "problem", where, what),
                  "hints": hints if isinstance(hints, str) else "\n".join(hints)}
        # A list of hints also stays in meta: a rewritten row keeps its original shape.
        return fields, {"problem"} | ({"hints"} if isinstance(hints, str) else set())
    if genre == "instruction":
        fields, used = {"instruction": get_field(row, "instruction", where, what)}, {"instruction"}
        for name, key in (("input", "input"), ("response", "response" if "response" in row else "output")):
            value = get_field(row, key, where, what, required=False)
            if value is not None:
                fields[name] = value
                used.add(key)
        return fields, used
    if genre == "glue":
        fields = {k: v for k, v in row.items() if k in GLUE_TEXT_FIELDS and isinstance(v, str)}
        if not fields:
            raise DataError(f"{where}: a glue row needs a text field ({', '.join(GLUE_TEXT_FIELDS)}); its "
                            f"fields: {', '.join(map(repr, row)) or 'none'}")
        return fields, set(fields)
    if "text" not in row:
        raise DataError(f"{where}: a {genre} row needs a text field 'text' (its fields: "
                        f"{', '.join(map(repr, row)) or 'none'}); fix the row, or name its genre")
    return {"text": get_field(row, "text", where, what)}, {"text"}


def row_to_document(row: str | dict, genre: str, path: str | Path, line: int,
                    genre_from_row: bool = False) -> Document:
    """One parsed row of a file of the given genre as a Document (the rules: see the module docstring).
    genre_from_row: a row's own "genre" field, when it has one, overrides the file's genre."""
    where = f"{path}:{line}"
    fallback_id = f"{Path(path).name}:{line}"
    if isinstance(row, str):  # ori conversations: one string per conversation
        return Document(fallback_id, genre, {"text": row}, {}, str(path), line)
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object or string, found {type(row).__name__}")
    if len(row) == 1:  # ori wiki rows: {"<idx>": text}
        ((key, value),) = row.items()
        if key.isdigit() and isinstance(value, str):
            return Document(key, genre, {"text": value}, {"idx": int(key)}, str(path), line)
    used = set()
    if genre_from_row and "genre" in row:
        genre = get_field(row, "genre", where)
        used.add("genre")
    fields, from_keys = _text_fields(row, genre, where)
    used |= from_keys
    meta = {k: v for k, v in row.items() if k not in used}
    return Document(_row_id(row, fallback_id), genre, fields, meta, str(path), line)


def iter_file(path: str | Path, genre: str, genre_from_row: bool = False) -> Iterator[Document]:
    """Documents of one data file of the given genre, whatever its format."""
    for line, row in iter_rows(path):
        yield row_to_document(row, genre, path, line, genre_from_row)


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
    """Any JSON-lines file (optionally .zst) of {"text": ...} rows. A row's "genre" field, if any, is its
    genre (and says which fields hold its text: a math row is read as math); otherwise it is "text"."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file not found: {path} (expected JSON lines of {{\"text\": ...}} rows, each "
                        f"optionally with a \"genre\")")
    for lineno, row in iter_json_lines(path):
        yield row_to_document(row, "text", path, lineno, genre_from_row=True)


def load_texts(path_or_folder: str | Path, corpus: str = "leaner", split: str = "test",
               genres: Iterable[str] | None = None, scale: str = DEFAULT_SCALE) -> list[Document]:
    """Documents for evaluation: a folder is read as the TinyHelen layout, a file as {"text": ...} rows
    (genre "text", or each row's own "genre"). genres keeps only those genres, in either case."""
    path = Path(path_or_folder)
    if path.is_file():
        docs = list(iter_jsonl_texts(path))
        if genres is None:
            return docs
        present = list(dict.fromkeys(d.genre for d in docs))
        for g in genres:
            if g not in present:
                raise DataError(f"genre {g!r} has no rows in {path} (genres there: {', '.join(present)})")
        return [d for d in docs if d.genre in set(genres)]
    if not path.exists():
        if path.name.endswith(SUFFIXES):
            raise DataError(f"text file not found: {path} (expected JSON lines of {{\"text\": ...}} rows)")
        raise DataError(f"{path} not found: give a JSON-lines file of {{\"text\": ...}} rows or a folder laid "
                        f"out like the TinyHelen release (e.g. ../shared/data/tinyhelen)")
    return list(iter_documents(path, corpus, split, genres, scale))
