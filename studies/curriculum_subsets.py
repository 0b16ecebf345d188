"""Genre mix of the first 5% / 25% / 50% of the documents in the curriculum's static orders
(sentence_length, reference_loss scored with full_repeated seed 1, random with seed 1), easy and hard
first: the table "What the first subsets are made of" in docs/results.md.

    python studies/curriculum_subsets.py      # after studies/curriculum_strategies.py; writes out/curriculum/subsets.json
"""
import sys, json, numpy as np, torch
from pathlib import Path
torch.set_num_threads(1)
if __package__ in (None, ""):  # run as `python studies/NAME.py`: import from the repo root, not studies/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from data.documents import Documents
from curriculum import sentence_lengths, easy_first, subset_size
from tinyhelen.checkpoint import load_model
from tinyhelen.scoring import score_documents
from tinyhelen import machine as machine_lib
from finetune_glue import load_tokenizer_from
docs = Documents.open("out/data/leaner", "train")
tok = load_tokenizer_from("out/data/leaner")
m = machine_lib.setup("cpu", "auto", 1, distributed=False)
scores = {"sentence_length": sentence_lengths(docs, tok),
          "random": np.random.default_rng([1, 7]).permutation(len(docs)).astype(np.float64)}
model = load_model("out/curriculum/full_repeated/seed1", "cpu")[0]
scores["reference_loss"] = score_documents(model, docs, None, 256, 16384, m)
out = {}
for name, s in scores.items():
    for reverse in (False, True):
        order = easy_first(docs, s, reverse)
        for frac in (0.05, 0.25, 0.5):
            sub = order[:subset_size(docs, order, frac, 4096)]
            g = {}
            for i in sub:
                name_g = docs.genres[docs.genre_ids[i]]
                d = g.setdefault(name_g, [0, 0]); d[0] += 1; d[1] += int(docs.lengths[i])
            tot = sum(v[1] for v in g.values())
            key = f"{name}{'_reverse' if reverse else ''}@{frac}"
            out[key] = {"documents": len(sub), "tokens": tot, "token_share": {k: round(v[1] / tot, 3) for k, v in sorted(g.items())}}
            print(key, out[key], flush=True)
json.dump(out, open("out/curriculum/subsets.json", "w"), indent=1)
