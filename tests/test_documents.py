"""Documents as data (data/documents.py) on the real prepared leaner subset, against plain-Python oracles.

The oracles read the prepared files with numpy only (SPLIT.bin as a list of ints, SPLIT.docs.npy as
rows) and build every expected batch with Python lists and loops: the concatenated stream of chosen
documents, its windows, and each padded row. Resume tests compare a source restored from a state
that went through torch.save / torch.load(weights_only=True) with the uninterrupted source.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter

import numpy as np
import pytest
import torch

from data.corpus import DataError
from data.documents import Documents, PackedDocuments, PaddedDocuments, padded_batches


@pytest.fixture(scope="module")
def real(leaner_small):
    """(Documents, oracle) for the prepared validation split: the oracle holds plain Python lists."""
    meta = json.loads((leaner_small / "meta.json").read_text())
    tokens = np.fromfile(leaner_small / "validation.bin", dtype=np.uint16).tolist()
    rows = np.load(leaner_small / "validation.docs.npy").tolist()
    oracle = {"tokens": tokens, "rows": rows, "genres": meta["genres"], "eot": meta["eot_id"],
              "docs": [tokens[s:e] for s, e, _ in rows]}
    return Documents.open(leaner_small, "validation"), oracle


def roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_table_matches_the_prepared_files(real):
    docs, o = real
    assert len(docs) == len(o["rows"]) > 50 and docs.genres == tuple(o["genres"]) and docs.eot_id == o["eot"]
    assert docs.lengths.tolist() == [len(t) for t in o["docs"]]
    assert docs.genre_ids.tolist() == [g for _, _, g in o["rows"]]
    for i in (0, 1, len(docs) // 2, len(docs) - 1):
        assert docs.tokens_of(i).tolist() == o["docs"][i]


def test_select_against_python(real):
    docs, o = real
    genre = {i: o["genres"][g] for i, (_, _, g) in enumerate(o["rows"])}
    n = len(o["rows"])
    assert docs.select().tolist() == list(range(n))
    assert docs.select(genres=["math", "wiki"]).tolist() == [i for i in range(n) if genre[i] in ("math", "wiki")]
    long = docs.lengths > np.median(docs.lengths)
    assert docs.select(long).tolist() == [i for i in range(n) if len(o["docs"][i]) > np.median(docs.lengths)]
    picked = random.Random(0).sample(range(n), 40)
    got = docs.select(picked, long, genres="conversation")  # order of `picked` kept, then filtered
    assert got.tolist() == [i for i in picked if long[i] and genre[i] == "conversation"]
    assert docs.select([], genres=["math"]).tolist() == []


def test_select_errors(real):
    docs, _ = real
    with pytest.raises(DataError, match="unknown genre 'poetry'.*wiki, conversation, math"):
        docs.select(genres=["poetry"])
    with pytest.raises(ValueError, match=f"index {len(docs)} is out of range"):
        docs.select([0, len(docs)])
    with pytest.raises(ValueError, match="one entry per document"):
        docs.select(np.ones(len(docs) - 1, dtype=bool))
    with pytest.raises(ValueError, match="mask must be a boolean array"):
        docs.select(None, np.ones(len(docs)))


def test_order_against_python(real):
    docs, o = real
    rng = random.Random(1)
    scores = np.array([round(rng.random(), 1) for _ in o["rows"]])  # many ties: stability matters
    subset = docs.select(genres=["wiki", "math"])[::-1]
    for by, keys in [("length", [len(t) for t in o["docs"]]), (scores, scores.tolist()),
                     ("genre", [g for _, _, g in o["rows"]])]:
        for descending in (False, True):
            # Python's sort is stable in both directions: ties keep the order given.
            want = sorted(subset.tolist(), key=lambda i: keys[i], reverse=descending)
            assert docs.order(subset, by, descending=descending).tolist() == want
    shuffled = docs.order(subset, seed=3)
    assert sorted(shuffled.tolist()) == sorted(subset.tolist()) and shuffled.tolist() != subset.tolist()
    assert docs.order(subset, seed=3).tolist() == shuffled.tolist()
    ties_random = docs.order(subset, scores, seed=4)
    assert [scores[i] for i in ties_random] == sorted(scores[subset].tolist())
    assert ties_random.tolist() != docs.order(subset, scores).tolist()  # ties broken differently
    with_nan = scores.copy()
    with_nan[subset[:3]] = np.nan
    for descending in (False, True):
        assert set(docs.order(subset, with_nan, descending=descending)[-3:].tolist()) == set(subset[:3].tolist())
    with pytest.raises(ValueError, match="unknown order key 'size'"):
        docs.order(subset, "size")
    with pytest.raises(ValueError, match="one per document of the split"):
        docs.order(subset, scores[:10])


# ---- packed ---------------------------------------------------------------------------------------------

def python_windows(o, order, seq_len):
    stream = []
    for i in order:
        stream += o["docs"][i] + [o["eot"]]
    return [stream[w * seq_len:w * seq_len + seq_len + 1] for w in range((len(stream) - 1) // seq_len)]


def test_packed_in_order_against_python(real):
    docs, o = real
    order = docs.order(docs.select(genres=["conversation", "math"]), "length", descending=True)
    windows = python_windows(o, order, 32)
    src = PackedDocuments(docs, order, batch_size=3, seq_len=32, shuffle=False)
    assert src.num_windows == len(windows)
    per_pass = len(windows) // 3
    for b in range(per_pass + 2):  # one pass, then into the second (the partial last batch is skipped)
        x, y = src.next_batch()
        want = windows[(b % per_pass) * 3:(b % per_pass) * 3 + 3]
        assert x.dtype == torch.int64 and x.tolist() == [w[:-1] for w in want] and y.tolist() == [w[1:] for w in want]
    assert (src.epoch, src.cursor) == (1, 6)


def test_packed_shuffled_pass_visits_every_window_once_and_ranks_split_it(real):
    docs, o = real
    order = docs.order(docs.select(genres="wiki"), seed=5)
    windows = python_windows(o, order, 16)
    one = PackedDocuments(docs, order, batch_size=4, seq_len=16, seed=9)
    ranks = [PackedDocuments(docs, order, batch_size=2, seq_len=16, seed=9, rank=r, world_size=2) for r in (0, 1)]
    seen = []
    for _ in range(len(windows) // 4):
        x, y = one.next_batch()
        assert torch.equal(x[:, 1:], y[:, :-1])
        parts = [r.next_batch() for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
        seen += [row + [last] for row, last in zip(x.tolist(), y[:, -1].tolist())]
    assert one.epoch == 0 and len(seen) == len(windows) - len(windows) % 4
    assert not Counter(map(tuple, seen)) - Counter(map(tuple, windows))  # each window at most once
    assert seen != windows[:len(seen)]  # in a shuffled order


# ---- padded ---------------------------------------------------------------------------------------------

def python_rows(o, ids, max_len):
    """Plain-Python padded batch: [eot] + document + [eot], cut to max_len + 1, right-padded."""
    seqs = [([o["eot"]] + o["docs"][i] + [o["eot"]])[:max_len + 1] for i in ids]
    width = max(len(s) for s in seqs) - 1
    x = [s[:-1] + [o["eot"]] * (width - len(s) + 1) for s in seqs]
    y = [s[1:] + [-1] * (width - len(s) + 1) for s in seqs]
    return x, y


def test_padded_in_order_against_python(real):
    docs, o = real
    order = docs.order(docs.select(genres=["math", "conversation"]), "length")
    order = np.concatenate([[0, len(docs) - 1], order])  # the split's first and last documents too
    src = PaddedDocuments(docs, order, batch_size=5, max_len=48)
    per_pass = len(order) // 5
    for b in range(per_pass + 1):
        x, y = src.next_batch()
        ids = order[(b % per_pass) * 5:(b % per_pass) * 5 + 5]
        assert src.last_documents.tolist() == ids.tolist()
        want_x, want_y = python_rows(o, ids, 48)
        assert x.tolist() == want_x and y.tolist() == want_y
    assert any(len(o["docs"][i]) + 1 > 48 for i in order)  # truncation was exercised


def test_padded_buckets_shuffle_and_ranks(real):
    docs, o = real
    order = docs.select(genres=["wiki", "math"])
    src = PaddedDocuments(docs, order, batch_size=4, max_len=64, seed=2, shuffle=True, bucket=3)
    ranks = [PaddedDocuments(docs, order, batch_size=2, max_len=64, seed=2, shuffle=True, bucket=3,
                             rank=r, world_size=2) for r in (0, 1)]
    batches = []
    for _ in range(src.num_batches):
        x, y = src.next_batch()
        ids = src.last_documents.tolist()
        assert (x.tolist(), y.tolist()) == python_rows(o, ids, 64)
        for r in ranks:
            r.next_batch()
        assert ranks[0].last_documents.tolist() + ranks[1].last_documents.tolist() == ids
        batches.append(ids)
    visited = [i for b in batches for i in b]
    assert len(set(visited)) == len(visited) == src.num_batches * 4  # a pass: each document once at most
    assert set(visited) <= set(order.tolist())
    # Within each run of 3 batches documents come sorted by length (in the run's visiting order).
    for run in range(0, len(batches) - 2, 3):
        lens = sorted(len(o["docs"][i]) for b in batches[run:run + 3] for i in b)
        per_batch = [sorted(len(o["docs"][i]) for i in b) for b in batches[run:run + 3]]
        assert sorted(per_batch) == [lens[0:4], lens[4:8], lens[8:12]]


def test_padded_batches_score_every_document_once(real):
    docs, o = real
    order = docs.order(docs.select(genres="math"), seed=1)
    seen = []
    for ids, x, y in padded_batches(docs, order, batch_size=7, max_len=4096):
        assert (x.tolist(), y.tolist()) == python_rows(o, ids.tolist(), 4096)
        assert ((y != -1).sum(1) == torch.from_numpy(docs.lengths[ids] + 1)).all()  # every token and its eot
        seen += ids.tolist()
    assert seen == order.tolist() and len(order) % 7  # the last, smaller batch included


# ---- resume -----------------------------------------------------------------------------------------------

def make(kind, docs, order, batch_size=2, rank=0, world_size=1):
    if kind == "packed":
        return PackedDocuments(docs, order, batch_size, seq_len=24, seed=7, rank=rank, world_size=world_size)
    return PaddedDocuments(docs, order, batch_size, max_len=40, seed=7, shuffle=True, bucket=2, rank=rank,
                           world_size=world_size)


def same(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("kind", ["packed", "padded"])
def test_resume_mid_pass_and_after_a_subset_change(real, kind):
    docs, _ = real
    first = docs.order(docs.select(genres="math"), "length")[:10]          # short documents: several passes
    grown = docs.order(docs.order(docs.select(genres=["math", "wiki"]), "length")[:20], seed=1)
    src = make(kind, docs, first)
    for _ in range(5):
        src.next_batch()
    mid_pass = roundtrip(src.state_dict())
    src.set_documents(grown)
    after_mid = [src.next_batch() for _ in range(4)]
    after_change = roundtrip(src.state_dict())
    rest = [src.next_batch() for _ in range(60)]  # long enough to wrap into further passes
    assert src.epoch >= 3

    resumed = make(kind, docs, first)  # built as a restarted run builds it, then restored
    resumed.load_state_dict(after_change)
    assert all(same(resumed.next_batch(), want) for want in rest)

    resumed = make(kind, docs, first)
    resumed.load_state_dict(mid_pass)
    resumed.set_documents(grown)
    assert all(same(resumed.next_batch(), want) for want in after_mid + rest)

    # Two ranks restored from the one-process state share its global batches (rank 0 the first half).
    reference = make(kind, docs, first)
    reference.load_state_dict(after_change)
    ranks = [make(kind, docs, first, batch_size=1, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.load_state_dict(after_change)
    for _ in range(20):
        x, y = reference.next_batch()
        parts = [r.next_batch() for r in ranks]
        if kind == "packed":
            assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
        else:
            assert [int(r.last_documents[0]) for r in ranks] == reference.last_documents.tolist()
            for r, (px, py) in enumerate(parts):
                assert torch.equal(px, x[r:r + 1, :px.shape[1]]) and (y[r, py.shape[1]:] == -1).all()


@pytest.mark.parametrize("kind", ["packed", "padded"])
def test_resume_refuses_a_different_setup(real, kind):
    docs, _ = real
    state = roundtrip(make(kind, docs, docs.select(genres="math")[:30]).state_dict())
    with pytest.raises(ValueError, match="cannot resume .* exactly: the saved state has global_batch=2"):
        make(kind, docs, None, batch_size=3).load_state_dict(state)
