"""Turn the TinyHelen text into token files that training reads with a memory map.

    python data/prepare.py [--data_root=../shared/data/tinyhelen] [--corpus=leaner] [--genres=all|book,wiki]
                           [--tokenizer=train|cl100k_base|compact:N|compact-smollm2:N|PATH]
                           [--out_dir=out/data/leaner]

--tokenizer: train (the default) learns gpt-2K on the train split; cl100k_base is tiktoken's; compact:N
cuts cl100k_base to the N ids most used on the train split, compact-smollm2:N cuts SmolLM2-135M's own
49,152-id tokenizer the same way (data/compact_tokenizer.py; inherit.py --from=smollm2-135m then gives
a model on this data SmolLM2's embedding rows of the kept ids); PATH is a saved tokenizer file, such as
a pretrained run's tokenizer.json (the full SmolLM2 tokenizer: out/pretrained/smollm2-135m/tokenizer.json).

For each split (train, validation, test) it writes into out_dir:
    SPLIT.bin       the token stream (uint16, or uint32 for a vocabulary over 65,536 such as cl100k_base):
                    each document's tokens followed by the eot id
    SPLIT.docs.npy  int64 (n_docs, 3): start, end (exclusive, the eot not included), genre index, so that
                    a curriculum can pick documents by genre or position
    meta.json       counts per split and genre, the tokenizer and the dtype; written last
and tokenizer.json when the tokenizer is trained here (the default, gpt-2K on the train split) or given
as a file. Every file is written to a temp name and renamed, and the old meta.json is removed first, so
an interrupted run never leaves a folder that looks complete. Same input, same bytes out.

A genre or split absent from the release (leaner train has no web and no code) is skipped with a note;
a genre asked for by name that has no data in any split is an error.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as `python data/prepare.py`, Python puts data/ first on sys.path; the repo root must be there
# instead, so that tinyhelen/config.py and the data package are found (and data/*.py shadow nothing).
if sys.path and Path(sys.path[0]).resolve() == REPO_ROOT / "data":
    sys.path[0] = str(REPO_ROOT)
elif str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from tinyhelen import config  # noqa: E402
from data.corpus import (CORPORA, DEFAULT_SCALE, GENRES, SPLITS, DataError,  # noqa: E402
                         available_genres, check_genres, iter_documents)
from data.download import DownloadError, download_release  # noqa: E402
from tinyhelen.atomic import atomic_file, atomic_write_bytes  # noqa: E402
from data.tokenizer import Tokenizer, load_tokenizer  # noqa: E402

SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "tinyhelen"
# --tokenizer=SPELLING:N -> the tokenizer that is cut to N ids (data/compact_tokenizer.py)
COMPACT_BASES = {"compact": "cl100k_base", "compact-smollm2": "smollm2-135m"}
BATCH_BYTES = 4 << 20  # text per encode_batch call: enough work for every thread, bounded memory


@dataclass
class PrepareConfig:
    data_root: str | None = None  # None/"": ../shared/data/tinyhelen if present, else download it
    corpus: str = "leaner"  # leaner (simplified) or ori (original)
    scale: str = DEFAULT_SCALE
    genres: str = "all"  # "all" or a comma list such as book,wiki,math
    # train (gpt-2K on the train split), cl100k_base, compact:N (cl100k_base cut to the N ids most used
    # on the train split, data/compact_tokenizer.py), compact-smollm2:N (SmolLM2-135M's tokenizer cut
    # the same way), or a tokenizer.json path
    tokenizer: str = "train"
    vocab_size: int = 2000  # for tokenizer=train
    out_dir: str = ""  # "": out/data/CORPUS
    download_dir: str = "out/download/tinyhelen"  # where a downloaded release goes
    num_threads: int = 2
    progress: bool = True


def out_dir_of(cfg: PrepareConfig) -> Path:
    return Path(cfg.out_dir or f"out/data/{cfg.corpus}")


def resolve_data_root(cfg: PrepareConfig) -> Path:
    """The given folder; else the shared local copy; else a download of the needed files."""
    if cfg.data_root:
        return Path(cfg.data_root)
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    print(f"no local TinyHelen copy found at {SHARED_DATA}; downloading into {cfg.download_dir}")
    genres = GENRES if cfg.genres == "all" else check_genres(cfg.genres.split(","))
    return download_release(cfg.download_dir, cfg.corpus, genres, SPLITS, cfg.scale, progress=cfg.progress)


def plan_genres(root: Path, cfg: PrepareConfig) -> dict[str, list[str]]:
    """{split: genres to read}. Absent combinations are skipped with a note; a genre requested by name
    that is absent from every split is an error."""
    if cfg.corpus not in CORPORA:
        raise DataError(f"unknown corpus {cfg.corpus!r}: choose one of {', '.join(CORPORA)}")
    explicit = cfg.genres.strip() != "all"
    wanted = check_genres([g.strip() for g in cfg.genres.split(",") if g.strip()]) if explicit else GENRES
    if not wanted:
        raise DataError(f"--genres={cfg.genres!r} names no genre; use all or a list such as book,wiki")
    present = {}
    for split in SPLITS:
        try:
            present[split] = available_genres(root, cfg.corpus, split, cfg.scale)
        except DataError as e:
            if not Path(root).is_dir():
                raise DataError(f"{e}. Pass --data_root=PATH to such a copy, or leave data_root empty so "
                                f"that python data/prepare.py downloads it") from None
            print(f"note: {root}/{cfg.corpus}/{cfg.scale}/{split} is missing; "
                  f"the {split} split will be empty")
            present[split] = []
    plan = {split: [g for g in GENRES if g in wanted and g in present[split]] for split in SPLITS}
    for genre in (g for g in GENRES if g in wanted):
        missing = [s for s in SPLITS if genre not in present[s]]
        if len(missing) == len(SPLITS):
            if explicit:
                everywhere = sorted({g for gs in present.values() for g in gs}, key=GENRES.index)
                raise DataError(f"genre {genre!r} has no data in any split of "
                                f"{root}/{cfg.corpus}/{cfg.scale} "
                                f"(genres there: {', '.join(everywhere) or 'none'})")
            print(f"note: no {genre} data in {cfg.corpus}/{cfg.scale}; skipped")
        elif missing:
            print(f"note: no {genre} file in {cfg.corpus}/{cfg.scale}/{{{','.join(missing)}}} "
                  f"(absent from the release); skipped there")
    return plan


def build_tokenizer(cfg: PrepareConfig, root: Path, plan: dict, out_dir: Path) -> tuple[Tokenizer, str]:
    """The tokenizer and how meta.json names it ("tokenizer.json" in out_dir, or "cl100k_base")."""
    if cfg.tokenizer == "cl100k_base":
        (out_dir / "tokenizer.json").unlink(missing_ok=True)  # a stale one would be mistaken for ours
        return Tokenizer.cl100k(), "cl100k_base"
    if cfg.tokenizer == "train":
        if not plan["train"]:
            raise DataError(f"no train split data for genres {cfg.genres!r} in {root}/{cfg.corpus}: "
                            f"cannot train the tokenizer; pass --tokenizer=cl100k_base or a "
                            f"tokenizer.json path")
        print(f"training a {cfg.vocab_size}-entry byte-level BPE on {cfg.corpus} train "
              f"({', '.join(plan['train'])})")
        texts = (d.text for d in iter_documents(root, cfg.corpus, "train", plan["train"], cfg.scale))
        tok = Tokenizer.train(texts, vocab_size=cfg.vocab_size)
    elif cfg.tokenizer.split(":")[0] in COMPACT_BASES:
        from data.compact_tokenizer import build_from_texts
        from tinyhelen.checkpoint import CheckpointError
        spelling, _, size = cfg.tokenizer.partition(":")
        base = COMPACT_BASES[spelling]
        if not size.isdigit() or not plan["train"]:
            raise DataError(f"--tokenizer={cfg.tokenizer}: give {spelling}:N with N the number of ids "
                            f"(e.g. {spelling}:4000), and data with a train split to count tokens on")
        print(f"cutting {base} to the {size} ids most used on {cfg.corpus} train "
              f"({', '.join(plan['train'])})")
        texts = (d.text for d in iter_documents(root, cfg.corpus, "train", plan["train"], cfg.scale))
        try:
            tok = build_from_texts(texts, int(size), base)
        except (ValueError, CheckpointError) as e:  # too small; SmolLM2's package not installed
            raise DataError(f"--tokenizer={cfg.tokenizer}: {e}") from None
    else:
        try:
            tok = load_tokenizer(cfg.tokenizer)
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"--tokenizer={cfg.tokenizer}: {e}") from None
    tok.save(out_dir / "tokenizer.json")  # a copy beside the data keeps the folder self-contained
    return tok, "tokenizer.json"


def _batches(docs, max_bytes: int):
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc.text)
        if size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encode_split(tok: Tokenizer, docs, genres: list[str], out_dir: Path, split: str, dtype: np.dtype,
                 num_threads: int = 2, progress: bool = True) -> dict:
    """Encode a stream of documents into SPLIT.bin and SPLIT.docs.npy; return the split's counts."""
    genre_index = {g: i for i, g in enumerate(genres)}
    stats = {"tokens": 0, "documents": 0, "bytes": 0, "genres": {}}
    rows = []
    bar = tqdm(desc=f"encode {split}", unit="B", unit_scale=True, disable=not progress, leave=False)
    with atomic_file(out_dir / f"{split}.bin") as f, bar:
        for batch in _batches(docs, BATCH_BYTES):
            for doc, ids in zip(batch, tok.encode_batch([d.text for d in batch], num_threads=num_threads)):
                n_bytes = len(doc.text.encode("utf-8"))
                start = stats["tokens"]
                np.asarray(ids + [tok.eot_id], dtype=dtype).tofile(f)
                rows.append((start, start + len(ids), genre_index[doc.genre]))
                g = stats["genres"].setdefault(doc.genre, {"tokens": 0, "documents": 0, "bytes": 0})
                for counts in (stats, g):
                    counts["tokens"] += len(ids) + 1  # + the eot, so genre counts sum to the .bin length
                    counts["documents"] += 1
                    counts["bytes"] += n_bytes
                bar.update(n_bytes)
    with atomic_file(out_dir / f"{split}.docs.npy") as f:
        np.save(f, np.asarray(rows, dtype=np.int64).reshape(-1, 3))
    stats["genres"] = {g: stats["genres"][g] for g in genres if g in stats["genres"]}
    return stats


def prepare(cfg: PrepareConfig) -> dict:
    """Prepare out_dir from the corpus as described in the module docstring; returns meta."""
    root = resolve_data_root(cfg)
    out_dir = out_dir_of(cfg)
    plan = plan_genres(root, cfg)  # bad input fails here, before a prepared out_dir is touched
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # until the new one is written, the folder is unprepared
    genres = [g for g in GENRES if any(g in plan[s] for s in SPLITS)]
    tok, tok_ref = build_tokenizer(cfg, root, plan, out_dir)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
    splits = {}
    for split in SPLITS:
        docs = iter_documents(root, cfg.corpus, split, plan[split], cfg.scale) if plan[split] else iter(())
        splits[split] = encode_split(tok, docs, genres, out_dir, split, dtype, cfg.num_threads, cfg.progress)
    meta = {"corpus": cfg.corpus, "scale": cfg.scale, "data_root": str(root), "tokenizer": tok_ref,
            "tokenizer_name": tok.name, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
            "dtype": dtype.name, "genres": genres, "splits": splits}
    atomic_write_bytes(out_dir / "meta.json", (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
    print(token_table(meta))
    print(f"wrote {out_dir}/{{train,validation,test}}.bin, .docs.npy and meta.json")
    return meta


def token_table(meta: dict) -> str:
    """Tokens per genre and split, totals, and bytes per token (eot tokens not counted)."""
    header = f"{'genre':<13}" + "".join(f"{s:>12}" for s in SPLITS) + f"{'total':>12}{'bytes/token':>13}"
    lines = [f"{meta['corpus']} tokens ({meta['tokenizer_name']}, counts include one eot per document)",
             header, "-" * len(header)]
    for genre in [*meta["genres"], None]:
        counts = [meta["splits"][s] if genre is None else meta["splits"][s]["genres"].get(genre)
                  for s in SPLITS]
        cells = "".join(f"{c['tokens']:>12,}" if c else f"{'-':>12}" for c in counts)
        total = defaultdict(int)
        for c in filter(None, counts):
            for k in ("tokens", "documents", "bytes"):
                total[k] += c[k]
        text_tokens = total["tokens"] - total["documents"]
        ratio = f"{total['bytes'] / text_tokens:.2f}" if text_tokens else "-"
        lines.append(f"{genre or 'total':<13}{cells}{total['tokens']:>12,}{ratio:>13}")
    return "\n".join(lines)


def load_meta(out_dir: str | Path) -> dict:
    """Read and check OUT_DIR/meta.json against the files beside it."""
    out_dir = Path(out_dir)
    path = out_dir / "meta.json"
    fix = f"run python data/prepare.py --out_dir={out_dir} first"
    if not path.is_file():
        raise DataError(f"{path} not found: {out_dir} is not a prepared data folder; {fix}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); {fix}") from None
    missing = [k for k in ("tokenizer", "vocab_size", "eot_id", "dtype", "genres", "splits") if k not in meta]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)} (written by an older version?); {fix}")
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split, counts in meta["splits"].items():
        bin_path = out_dir / f"{split}.bin"
        if not bin_path.is_file() or bin_path.stat().st_size != counts["tokens"] * itemsize:
            raise DataError(f"{bin_path} is missing or does not hold the {counts['tokens']} tokens that "
                            f"meta.json records; {fix}")
        if not (out_dir / f"{split}.docs.npy").is_file():
            raise DataError(f"{out_dir / f'{split}.docs.npy'} is missing; {fix}")
    return meta


def tokenizer_of(out_dir: str | Path, meta: dict | None = None) -> Tokenizer:
    """The tokenizer a prepared folder was made with."""
    meta = meta or load_meta(out_dir)
    ref = meta["tokenizer"]
    return load_tokenizer(ref if ref == "cl100k_base" else Path(out_dir) / ref)


def main(cfg: PrepareConfig) -> None:
    try:
        prepare(cfg)
    except (DataError, DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2 if isinstance(e, DataError) else 1) from None  # 1: the network, not the user


if __name__ == "__main__":
    config.run_cli(main, PrepareConfig())
