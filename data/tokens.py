"""Training batches from the prepared token files (SPLIT.bin written by data/prepare.py).

The stream of tokens is cut into non-overlapping windows of seq_len + 1 tokens (inputs and their
next-token targets). Each epoch visits every window once in an order drawn from (seed, epoch), so
the whole data position is two integers, (epoch, cursor), which a checkpoint stores and a resumed run
restores exactly.

Several processes (DDP) share one global order: each optimizer micro-step takes the next
batch_size * world_size windows and rank r keeps its own slice. One process with grad_accum=2 sees
exactly the windows that two processes with grad_accum=1 see, which is what makes multi-process
training reproducible against a single process.

The object is deliberately small and replaceable: a curriculum can swap in another batch source
with the same next_batch / state_dict / load_state_dict methods mid-run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def read_meta(data_dir: str | Path) -> dict:
    """meta.json of a prepared data folder, with a clear error when the folder is not prepared."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the data folder {data_dir} is not prepared. "
            f"Run `python data/prepare.py --out_dir={data_dir}` first.")
    return json.loads(path.read_text())


def tokens_per_byte(meta: dict, split: str) -> float:
    """Tokens per byte of text of one split (each document's end-of-text counts as one byte); a loss in
    nats per token times this, over ln 2, is bits per byte, which compares across tokenizers and corpora."""
    counts = meta["splits"][split]
    return counts["tokens"] / (counts["bytes"] + counts["documents"])


def open_tokens(data_dir: str | Path, split: str) -> np.ndarray:
    """Memory-mapped token stream of one split (no copy: the OS pages it in as needed)."""
    meta = read_meta(data_dir)
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `python data/prepare.py --out_dir={data_dir}` again.")
    tokens = np.memmap(path, dtype=np.dtype(meta.get("dtype", "uint16")), mode="r")
    expected = meta["splits"][split]["tokens"]
    if len(tokens) != expected:
        raise ValueError(f"{path} holds {len(tokens)} tokens but meta.json says {expected}: the folder is "
                         f"inconsistent (an interrupted prepare?). Re-run data/prepare.py.")
    return tokens


class TokenBatches:
    """Shuffled fixed-length windows over one token stream, split across ranks."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.num_windows = (len(tokens) - 1) // seq_len
        self.global_batch = batch_size * world_size
        if self.num_windows < self.global_batch:
            raise ValueError(f"only {self.num_windows} windows of {seq_len} tokens in the data, fewer than one "
                             f"global batch of {self.global_batch}: use a smaller batch_size or seq_len.")
        self.epoch, self.cursor = 0, 0
        self._order = self._order_for(0)

    def _order_for(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_windows)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 tensors of shape (batch_size, seq_len); y is x shifted by one token."""
        if self.cursor + self.global_batch > self.num_windows:  # the last partial batch is skipped
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._order_for(self.epoch)
        start = self.cursor + self.rank * self.batch_size
        windows = self._order[start:start + self.batch_size]
        self.last_windows = windows  # which windows this rank's batch holds (unique-token counts)
        self.cursor += self.global_batch
        offsets = windows[:, None] * self.seq_len + np.arange(self.seq_len + 1)
        chunk = torch.from_numpy(self.tokens[offsets].astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.cursor = state["seed"], state["epoch"], state["cursor"]
        self._order = self._order_for(self.epoch)
