"""Scoring a frozen model on many documents or windows at once: the losses a curriculum orders by.

    losses = score_documents(model, docs, indices, max_len=256, machine=m)   # mean loss per document
    losses = score_windows(model, tokens, seq_len=256, machine=m)            # mean loss per window

A document is scored as pre-training sees it after an eot: [eot] + its tokens + [eot], every token
after the leading eot predicted (len + 1 targets, the closing eot included), exactly the positions
`data.documents.pad_documents` scores. A document with more than max_len targets is cut into
consecutive pieces of max_len targets, each read as its own sequence (the model cannot see further
back than max_seq_len anyway), so every token of every document counts, books included.

Fast because the pieces are sorted by length and batched under a token budget, so a batch holds
pieces of nearly the same length and little is padding (padded targets are -1 and not scored); the
forward passes run in bf16 autocast where the machine computes it natively, on every core torch
was given. `score_documents_plainly` is the baseline it is measured against in bench/bench_scoring.py:
one document at a time in fp32, as a straightforward loop would do it.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from data.documents import Documents


def document_pieces(docs: Documents, indices: np.ndarray, max_len: int) -> tuple[np.ndarray, ...]:
    """(document, first target position in the split's token stream, number of targets) per piece.

    Document i has lengths[i] + 1 targets, at stream positions starts[i] .. ends[i] (its eot); piece k
    holds the targets from starts[i] + k * max_len on, and reads the max_len inputs just before them."""
    targets = docs.lengths[indices] + 1
    count = -(-targets // max_len)                            # pieces per document
    doc = np.repeat(indices, count)
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)  # piece number in its doc
    first = docs.starts[doc] + k * max_len
    n = np.minimum(max_len, docs.ends[doc] + 1 - first)
    return doc, first, n, k == 0


def _piece_batch(docs: Documents, first: np.ndarray, n: np.ndarray, opening: np.ndarray):
    """(x, y) for pieces of one batch, right-padded to the longest: inputs are the stream tokens just
    before the targets, with the eot that precedes every document forced on a document's first piece."""
    width = int(n.max())
    pos = first[:, None] - 1 + np.arange(width + 1)
    seq = docs.tokens[np.clip(pos, 0, len(docs.tokens) - 1)].astype(np.int64)
    seq[opening, 0] = docs.eot_id
    real = np.arange(width) < n[:, None]
    x = np.where(real, seq[:, :-1], docs.eot_id)
    y = np.where(real, seq[:, 1:], -1)
    return torch.from_numpy(x), torch.from_numpy(y)


def _precision(machine):
    return machine.autocast() if machine is not None else contextlib.nullcontext()


def _device(model) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _frozen(model):
    """Eval mode and no autograd for the duration, the model's mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _row_loss_sums(model, x: torch.Tensor, y: torch.Tensor, machine) -> torch.Tensor:
    """Sum of the token losses of each row (fp32 cross-entropy over the targets that are not -1)."""
    device = _device(model)
    x, y = x.to(device), y.to(device)
    with _precision(machine):
        logits = model(x)[0]
    losses = F.cross_entropy(logits.float().flatten(0, 1), y.reshape(-1), ignore_index=-1, reduction="none")
    return losses.view(y.shape).sum(1).double().cpu()


def score_documents(model, docs: Documents, indices=None, max_len: int = 256, batch_tokens: int = 16384,
                    machine=None) -> np.ndarray:
    """Mean token loss of each chosen document (float64, in the order of `indices`; None: all).

    Pieces are sorted longest first and taken batch_tokens // (longest piece) at a time; machine (a
    machine.Machine) gives the bf16 autocast, None runs in the model's own precision."""
    indices = docs.indices(indices)
    doc, first, n, opening = document_pieces(docs, indices, max_len)
    order = np.argsort(-n, kind="stable")
    doc, first, n, opening = doc[order], first[order], n[order], opening[order]
    sums = np.zeros(len(docs), dtype=np.float64)
    with _frozen(model):
        i = 0
        while i < len(n):
            rows = max(1, batch_tokens // int(n[i]))
            batch = slice(i, i + rows)
            x, y = _piece_batch(docs, first[batch], n[batch], opening[batch])
            np.add.at(sums, doc[batch], _row_loss_sums(model, x, y, machine).numpy())
            i += rows
    return sums[indices] / (docs.lengths[indices] + 1)


def score_documents_plainly(model, docs: Documents, indices=None, max_len: int = 256) -> np.ndarray:
    """The same scores, one document at a time (its pieces in one batch) in the model's precision:
    the loop the fast path is measured against, and an oracle for it."""
    indices = docs.indices(indices)
    out = np.zeros(len(indices), dtype=np.float64)
    with _frozen(model):
        for j, i in enumerate(indices):
            _, first, n, opening = document_pieces(docs, np.array([i]), max_len)
            total = 0.0
            for p in range(len(n)):
                x, y = _piece_batch(docs, first[p:p + 1], n[p:p + 1], opening[p:p + 1])
                total += float(_row_loss_sums(model, x, y, None)[0])
            out[j] = total / (docs.lengths[i] + 1)
    return out


def window_batch(tokens: np.ndarray, windows: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of the given windows of seq_len + 1 tokens (window w starts at w * seq_len), as
    data/tokens.py's TokenBatches cuts a stream."""
    offsets = np.asarray(windows)[:, None] * seq_len + np.arange(seq_len + 1)
    chunk = torch.from_numpy(np.asarray(tokens[offsets]).astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]


def score_windows(model, tokens: np.ndarray, seq_len: int, batch_tokens: int = 16384, machine=None) -> np.ndarray:
    """Mean token loss of every window of the stream (float64, window order)."""
    count = (len(tokens) - 1) // seq_len
    rows = max(1, batch_tokens // seq_len)
    out = np.zeros(count, dtype=np.float64)
    with _frozen(model):
        for i in range(0, count, rows):
            windows = np.arange(i, min(count, i + rows))
            x, y = window_batch(tokens, windows, seq_len)
            out[windows] = _row_loss_sums(model, x, y, machine).numpy() / seq_len
    return out
