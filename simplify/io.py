"""Finding the documents to simplify: any file, or any folder of files, of any genre.

The rows themselves are read by data/corpus.py, the one reader of the TinyHelen formats (JSON lines,
plain or zstandard; the original conversations as ONE JSON array of strings; original wiki rows shaped
`{"<idx>": text}`; code, math, instruction and Leaner-Glue rows whose text lives in named fields). A
`Document` holds the text fields to simplify, in order, plus the rest of the row carried through
untouched, so a label or an idx survives the rewrite. What this module adds is leniency about where
the files are: a single file or a whole tree, its genre taken from the file name (book0000.jsonl ->
book, cola_train.jsonl -> glue) or from a row's own "genre" field. Outputs are written through
tinyhelen/atomic.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator

from data.corpus import (GLUE_TASKS, SUFFIXES, DataError, Document, iter_file, iter_rows,  # noqa: F401
                         render_text)
from simplify import GENRES

__all__ = ["DataError", "Document", "iter_rows", "render_text", "genre_of_path", "list_files",
           "iter_documents"]


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
    """Every document under root. genre forces one genre for every file; otherwise it comes from each
    file name (book0000.jsonl -> book), plain text ("web") being the fallback. Either way a row's own
    "genre" field wins."""
    for path in list_files(root, split, genres):
        yield from iter_file(path, genre or genre_of_path(path) or "web", genre_from_row=True)
