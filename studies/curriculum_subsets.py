"""Genre mix of the first 5% / 25% / 50% of the documents in the curriculum's static orders
(sentence_length, reference_loss scored with full_repeated seed 1, random with seed 1), easy and hard
first: the table "What the first subsets are made of" in docs/results.md.

    python studies/curriculum_subsets.py      # after studies/curriculum_strategies.py; writes out/curriculum/subsets.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python studies/NAME.py`: import from the repo root, not studies/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from studies import common  # noqa: E402
from tinyhelen.atomic import atomic_write_json  # noqa: E402

DATA = "out/data/leaner"
OUT = Path("out/curriculum")
REFERENCE = OUT / "full_repeated" / "seed1"
FRACTIONS = (0.05, 0.25, 0.5)


def document_scores() -> tuple[object, dict[str, np.ndarray]]:
    """The train documents and each static order's score per document (lower: earlier)."""
    from curriculum import sentence_lengths
    from data.documents import Documents
    from tinyhelen.runs import load_tokenizer_from
    from tinyhelen import machine as machine_lib
    from tinyhelen.checkpoint import load_model
    from tinyhelen.scoring import score_documents
    docs = Documents.open(DATA, "train")
    machine = machine_lib.setup("cpu", "auto", 1, distributed=False)
    scores = {"sentence_length": sentence_lengths(docs, load_tokenizer_from(DATA)),
              "random": np.random.default_rng([1, 7]).permutation(len(docs)).astype(np.float64)}
    scores["reference_loss"] = score_documents(load_model(REFERENCE, "cpu")[0], docs, None, 256, 16384, machine)
    return docs, scores


def genre_mix(docs, order, fraction: float) -> dict:
    """Documents, tokens and each genre's share of the tokens in the first `fraction` of an order."""
    from curriculum import subset_size
    subset = order[:subset_size(docs, order, fraction, 4096)]
    tokens: dict[str, int] = {}
    for i in subset:
        genre = docs.genres[docs.genre_ids[i]]
        tokens[genre] = tokens.get(genre, 0) + int(docs.lengths[i])
    total = sum(tokens.values())
    return {"documents": len(subset), "tokens": total,
            "token_share": {genre: round(n / total, 3) for genre, n in sorted(tokens.items())}}


def subsets() -> dict:
    from curriculum import easy_first
    docs, scores = document_scores()
    out = {}
    for name, score in scores.items():
        for reverse in (False, True):
            order = easy_first(docs, score, reverse)
            for fraction in FRACTIONS:
                key = f"{name}{'_reverse' if reverse else ''}@{fraction}"
                out[key] = genre_mix(docs, order, fraction)
                print(key, out[key], flush=True)
    atomic_write_json(OUT / "subsets.json", out, indent=1)
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    common.Runner(OUT).call("subsets", f"the genre mix of the first subsets: {OUT / 'subsets.json'}", subsets)
