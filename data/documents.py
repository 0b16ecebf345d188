"""Documents as data: pick documents of a prepared split, put them in an order, and batch them.

A prepared split (data/prepare.py) is one token stream with an eot after every document, plus one
(start, end, genre) row per document. `Documents` gives that table as numpy arrays, so a subset is an
index array and an order is a permutation of it, both computed in a few vectorised numpy calls:

    docs = Documents.open("out/data/leaner", "train")
    subset = docs.select(genres=["book", "wiki"])              # or an index array, or a boolean mask
    subset = docs.select(subset, docs.lengths > 50)            # a mask over all documents
    easy_first = docs.order(subset, by=scores)                 # scores: one number per document

and two batch sources follow the Trainer's protocol (next_batch / state_dict / load_state_dict):

    PackedDocuments   the chosen documents' tokens, each followed by its eot, concatenated in the
                      given order and cut into windows of seq_len + 1 exactly as pre-training cuts
                      the whole split (data/tokens.py's TokenBatches does the windowing)
    PaddedDocuments   one whole document per row, [eot] + its tokens + [eot] cut to max_len + 1
                      (the leading eot is what precedes a document in pre-training), consecutive
                      documents of the order per batch, right-padded with eot, targets -1 there

Both can be given a new subset or order mid-run (`set_documents`, which starts a new pass) and keep
in their state everything needed to continue exactly: the pass, the cursor, the seed and the current
document order itself (an int64 tensor: a few bytes per document). Under DDP every rank builds the
same global batches and keeps its own slice, as TokenBatches does. `padded_batches` walks documents
once, last partial batch included, and says which documents each batch holds: what scoring each
document's loss (a perplexity curriculum) needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from data.corpus import DataError
from data.tokens import TokenBatches, open_tokens, read_meta

ORDER_KEYS = ("length", "genre")


class Documents:
    """The document table of one prepared split, over its memory-mapped token stream."""

    def __init__(self, tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray, genre_ids: np.ndarray,
                 genres: tuple[str, ...], eot_id: int, name: str = ""):
        self.tokens, self.genres, self.eot_id, self.name = tokens, tuple(genres), int(eot_id), name
        self.starts = np.ascontiguousarray(starts, dtype=np.int64)   # first token of each document
        self.ends = np.ascontiguousarray(ends, dtype=np.int64)       # its eot (exclusive end of the text)
        self.genre_ids = np.ascontiguousarray(genre_ids, dtype=np.int64)
        self.lengths = self.ends - self.starts                       # tokens, the eot not counted

    @classmethod
    def open(cls, data_dir: str | Path, split: str) -> "Documents":
        meta = read_meta(data_dir)
        if split not in meta["splits"]:
            raise DataError(f"{data_dir} has no split {split!r} (it has {', '.join(meta['splits'])})")
        tokens = open_tokens(data_dir, split)
        path = Path(data_dir) / f"{split}.docs.npy"
        if not path.is_file():
            raise DataError(f"{path} not found; run `python data/prepare.py --out_dir={data_dir}` again")
        table = np.load(path)
        if table.ndim != 2 or table.shape[1] != 3 or len(table) != meta["splits"][split]["documents"]:
            raise DataError(f"{path} is not the (documents, 3) table meta.json describes; re-run "
                            f"data/prepare.py --out_dir={data_dir}")
        docs = cls(tokens, table[:, 0], table[:, 1], table[:, 2], meta["genres"], meta["eot_id"],
                   f"{data_dir}/{split}")
        if len(docs) and not (tokens[docs.ends] == docs.eot_id).all():
            raise DataError(f"{path}: document ends do not point at eot tokens: the folder is inconsistent; "
                            f"re-run data/prepare.py --out_dir={data_dir}")
        return docs

    def __len__(self) -> int:
        return len(self.starts)

    def __repr__(self) -> str:
        genres = ", ".join(self.genres)
        return f"Documents({self.name or 'in memory'}: {len(self)} documents, genres {genres})"

    def tokens_of(self, i: int) -> np.ndarray:
        """The tokens of document i, without its eot."""
        return np.asarray(self.tokens[self.starts[i]:self.ends[i]])

    # ---- choosing documents ---------------------------------------------------------------------

    def indices(self, which=None) -> np.ndarray:
        """`which` as an int64 index array: None is every document, a boolean mask over all documents is
        the documents it marks, an index array (or list) is checked and kept in its order."""
        if which is None:
            return np.arange(len(self), dtype=np.int64)
        which = np.asarray(which)
        if which.ndim != 1:
            raise ValueError(f"documents are chosen by a 1-D index array or mask, got shape {which.shape}")
        if which.dtype == bool:
            if len(which) != len(self):
                raise ValueError(f"a boolean mask must have one entry per document ({len(self)}), got "
                                 f"{len(which)}")
            return np.flatnonzero(which)
        if len(which) == 0:
            return np.zeros(0, dtype=np.int64)
        if not np.issubdtype(which.dtype, np.integer):
            raise ValueError(f"document indices must be integers, got {which.dtype}")
        bad = (which < 0) | (which >= len(self))
        if bad.any():
            raise ValueError(f"document index {which[bad][0]} is out of range: the split has {len(self)} "
                             f"documents (0..{len(self) - 1})")
        return which.astype(np.int64, copy=False)

    def genre_index(self, genres) -> np.ndarray:
        """Genre ids of genre names, each checked to be in this split's genre list."""
        genres = [genres] if isinstance(genres, str) else list(genres)
        unknown = [g for g in genres if g not in self.genres]
        if unknown:
            raise DataError(f"unknown genre {unknown[0]!r} for {self.name or 'these documents'}: its genres "
                            f"are {', '.join(self.genres)}")
        return np.array([self.genres.index(g) for g in genres], dtype=np.int64)

    def select(self, which=None, mask=None, *, genres=None) -> np.ndarray:
        """Indices of a subset of documents, in the order `which` gives (see `indices`), keeping those
        that `mask` marks (a boolean array over all documents of the split, such as docs.lengths > 50)
        and, with `genres`, those of the genres named."""
        chosen = self.indices(which)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != bool or mask.shape != (len(self),):
                raise ValueError(f"mask must be a boolean array with one entry per document of the split "
                                 f"({len(self)}), got {mask.dtype} of shape {mask.shape}")
            chosen = chosen[mask[chosen]]
        if genres is not None:
            chosen = chosen[np.isin(self.genre_ids[chosen], self.genre_index(genres))]
        return chosen

    def order(self, which=None, by=None, *, descending: bool = False, seed: int | None = None) -> np.ndarray:
        """The chosen documents (see `indices`) put in an order.

        by: None (keep the order, or shuffle it with a seed), "length", "genre", or an array of keys with
        one number per document of the split (e.g. scores; NaN sorts last either way). Sorting is stable:
        ties stay in the order given, or in a seeded random order when a seed is given too."""
        chosen = self.indices(which)
        if seed is not None:
            chosen = chosen[np.random.default_rng(seed).permutation(len(chosen))]
        if by is None:
            return chosen
        if isinstance(by, str):
            if by not in ORDER_KEYS:
                raise ValueError(f"unknown order key {by!r}: use {', '.join(ORDER_KEYS)} or an array of keys")
            keys = self.lengths if by == "length" else self.genre_ids
        else:
            keys = np.asarray(by)
            if keys.shape != (len(self),) or not (np.issubdtype(keys.dtype, np.number) or keys.dtype == bool):
                raise ValueError(f"order keys must be numbers, one per document of the split ({len(self)}); "
                                 f"got {keys.dtype} of shape {keys.shape}")
        keys = keys[chosen].astype(np.float64 if np.issubdtype(keys.dtype, np.floating) else np.int64)
        return chosen[np.argsort(-keys if descending else keys, kind="stable")]


# ---- batching ---------------------------------------------------------------------------------------

def packed_positions(docs: Documents, indices: np.ndarray) -> np.ndarray:
    """Where each token of the packed stream of these documents sits in the split's token stream."""
    with_eot = docs.lengths[indices] + 1
    ends = np.cumsum(with_eot)
    # Position p of the stream, within document k, reads token starts[k] + (p - stream start of k).
    shift = np.repeat(docs.starts[indices] - (ends - with_eot), with_eot)
    return shift + np.arange(len(shift))


def packed_stream(docs: Documents, indices: np.ndarray) -> np.ndarray:
    """The documents' tokens, each followed by its eot, concatenated in the given order (one gather)."""
    return np.asarray(docs.tokens[packed_positions(docs, indices)])


def pad_documents(docs: Documents, indices: np.ndarray, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) int64 (len(indices), W): row i is [eot] + document indices[i] + [eot] cut to max_len + 1
    tokens, as inputs and next-token targets; W is the longest row's length, shorter rows are right-padded
    with eot in x and -1 in y."""
    starts = docs.starts[indices]
    n = np.minimum(docs.lengths[indices] + 2, max_len + 1)         # tokens per row, both eots included
    width = int(n.max()) - 1
    # Row i reads the stream from starts[i] - 1, where the eot before the document is forced (the first
    # document has none); the document's own eot sits at its end in the prepared stream.
    pos = np.clip(starts[:, None] - 1 + np.arange(width + 1), 0, len(docs.tokens) - 1)
    seq = docs.tokens[pos].astype(np.int64)
    seq[:, 0] = docs.eot_id
    real = np.arange(width) < (n - 1)[:, None]                     # an input with a target to predict
    x = np.where(real, seq[:, :-1], docs.eot_id)
    y = np.where(real, seq[:, 1:], -1)
    return torch.from_numpy(x), torch.from_numpy(y)


def padded_batches(docs: Documents, indices, batch_size: int, max_len: int
                   ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """(document indices, x, y) for every document once, in order; the last batch may be smaller.
    For scoring each document (sum y != -1 positions of each row), not for training."""
    indices = docs.indices(indices)
    for i in range(0, len(indices), batch_size):
        ids = indices[i:i + batch_size]
        yield (ids, *pad_documents(docs, ids, max_len))


class _DocumentSource:
    """What both sources share: the current document order, the pass and cursor, DDP slicing, state."""

    def __init__(self, docs: Documents, indices, batch_size: int, seed: int, rank: int, world_size: int,
                 shuffle: bool):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got batch_size={batch_size}, "
                             f"rank={rank}, world_size={world_size}")
        self.docs, self.batch_size, self.seed, self.shuffle = docs, batch_size, seed, shuffle
        self.rank, self.world_size, self.global_batch = rank, world_size, batch_size * world_size
        self.epoch, self.cursor = 0, 0
        self._use(docs.indices(indices))

    def set_documents(self, indices) -> None:
        """Batch these documents, in this order, from now on: a new pass starts with them."""
        chosen = self.docs.indices(indices)
        self.epoch, self.cursor = self.epoch + 1, 0
        self._use(chosen)

    def _use(self, indices: np.ndarray) -> None:
        if len(indices) == 0:
            raise ValueError(f"no documents chosen for {type(self).__name__}: choose at least a batch's worth")
        self.documents = indices  # the current order of documents (int64 indices into the split)
        self._build()

    def _settings(self) -> dict:
        """What must match between a saved state and this source for a resume to be exact."""
        return {"kind": type(self).__name__, "split_documents": len(self.docs),
                "global_batch": self.global_batch, "shuffle": self.shuffle}

    def state_dict(self) -> dict:
        return {**self._settings(), "epoch": self.epoch, "cursor": self.cursor, "seed": self.seed,
                "documents": torch.from_numpy(self.documents.copy())}

    def load_state_dict(self, state: dict) -> None:
        for key, mine in self._settings().items():
            if state.get(key) != mine:
                raise ValueError(f"cannot resume {type(self).__name__} exactly: the saved state has {key}="
                                 f"{state.get(key)!r}, this run {mine!r}")
        documents = state["documents"]
        documents = documents.numpy() if isinstance(documents, torch.Tensor) else np.asarray(documents)
        self.seed, self.epoch, self.cursor = int(state["seed"]), int(state["epoch"]), int(state["cursor"])
        self._use(self.docs.indices(documents.astype(np.int64)))


class PackedDocuments(_DocumentSource):
    """Windows of seq_len + 1 tokens over the chosen documents packed in order (see the module docstring);
    each pass visits every window once, in an order drawn from (seed, pass) unless shuffle=False."""

    def __init__(self, docs: Documents, indices=None, batch_size: int = 8, seq_len: int = 256, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.seq_len = seq_len
        super().__init__(docs, indices, batch_size, seed, rank, world_size, shuffle)

    def _settings(self) -> dict:
        return {**super()._settings(), "seq_len": self.seq_len}

    def _build(self) -> None:
        self._windows = TokenBatches(packed_stream(self.docs, self.documents), self.batch_size, self.seq_len,
                                     self.seed, self.rank, self.world_size, self.shuffle)
        self._windows.load_state_dict({"seed": self.seed, "epoch": self.epoch, "cursor": self.cursor})
        self.num_windows = self._windows.num_windows

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._windows.next_batch()
        self.epoch, self.cursor = self._windows.epoch, self._windows.cursor
        self.last_windows = self._windows.last_windows  # window w: packed-stream tokens w*seq_len ...
        return x, y


class PaddedDocuments(_DocumentSource):
    """Whole documents, batch_size per rank per batch, in the current order (see the module docstring).

    shuffle: each pass visits the documents in an order drawn from (seed, pass) instead of the given one.
    bucket: if > 1, documents are sorted by length within each run of bucket global batches (less
    padding), and with shuffle those batches are visited in a random order. A pass is every full
    global batch; the last few documents that do not fill one wait for the next pass."""

    def __init__(self, docs: Documents, indices=None, batch_size: int = 8, max_len: int = 256, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = False, bucket: int = 0):
        self.max_len, self.bucket = max_len, bucket
        self.last_documents = np.zeros(0, dtype=np.int64)  # this rank's documents in the last batch
        super().__init__(docs, indices, batch_size, seed, rank, world_size, shuffle)

    def _settings(self) -> dict:
        return {**super()._settings(), "max_len": self.max_len, "bucket": self.bucket}

    def _build(self) -> None:
        self.num_batches = len(self.documents) // self.global_batch
        if self.num_batches == 0:
            raise ValueError(f"only {len(self.documents)} documents chosen, fewer than one global batch of "
                             f"{self.global_batch}: choose more documents or a smaller batch_size")
        self._plan = self._plan_for(self.epoch)

    def _plan_for(self, epoch: int) -> np.ndarray:
        """The documents of one pass in visiting order, num_batches * global_batch of them."""
        rng = np.random.default_rng([self.seed, epoch])
        plan = self.documents[rng.permutation(len(self.documents))] if self.shuffle else self.documents
        plan = plan[:self.num_batches * self.global_batch]
        if self.bucket > 1:
            run = np.arange(len(plan)) // (self.bucket * self.global_batch)
            plan = plan[np.lexsort((self.docs.lengths[plan], run))]  # by run, then by length
            if self.shuffle:
                batches = plan.reshape(self.num_batches, self.global_batch)
                batch_run = np.arange(self.num_batches) // self.bucket
                plan = batches[np.lexsort((rng.random(self.num_batches), batch_run))].reshape(-1)
        return plan

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cursor >= self.num_batches:
            self.epoch, self.cursor = self.epoch + 1, 0
            self._plan = self._plan_for(self.epoch)
        start = self.cursor * self.global_batch + self.rank * self.batch_size
        self.last_documents = self._plan[start:start + self.batch_size]
        self.cursor += 1
        return pad_documents(self.docs, self.last_documents, self.max_len)
