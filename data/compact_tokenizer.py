"""A compact tokenizer cut from a large byte-level BPE: the most used tokens of a corpus, nothing else.

    python data/compact_tokenizer.py --size=4000 --out=out/tokenizers/compact-4K.json
    python data/compact_tokenizer.py --report_sizes=2000,4000,8000,16000 --report=out/tokenizers/report.json
    python data/prepare.py --tokenizer=compact:4000 --out_dir=out/data/leaner_compact4k
    python data/compact_tokenizer.py --base=smollm2-135m --size=4000    # SmolLM2's 49,152 ids cut to 4,000
    python data/prepare.py --tokenizer=compact-smollm2:4000 --out_dir=out/data/leaner_smollm2_4k

The "Rethinking Optimization and Architecture for Tiny Language Models" recipe prunes a large
vocabulary to the tokens a corpus actually uses, so that a tiny model spends its parameters on
layers rather than on embedding rows for strings it never sees. The reference prunes SentencePiece
pieces and keeps every byte piece; a byte-level BPE (here cl100k_base) needs one more rule.

Why closure under merges. tiktoken encodes a pre-tokenized piece by repeatedly merging the adjacent
pair whose concatenation has the lowest rank, until no concatenation is a token. A kept token is
therefore reachable inside a longer piece only if every intermediate token on its way up is kept
too. So a token is kept together with its merge tree (the tokens BPE builds on the way from its
bytes to it), and the 256 single bytes are always kept (every text stays encodable, losslessly).

What that buys, and the tests prove: keeping the base ranks' order, compact BPE makes the same
choice as the large one at every step on any text whose large encoding uses only kept tokens (its
candidate pairs are a subset of the large one's, and the pair the large one merges is among them),
so such texts encode to the same tokens, only renumbered. Other texts fall back to shorter kept
tokens. Each kept token's base id is stored in the file, so that inherit.py can give a compact
model the large model's embedding and head rows.

A pretrained LLM's tokenizer (--base=smollm2-135m) is cut by the same rule, but as a `tokenizers`
BPE, because tiktoken cannot hold it (data/tokenizer.py PretrainedTokenizer says why). There a
merge's priority is its place in the merge list, and each token is made by exactly one merge, so a
token's merge tree is that merge's two parts and, recursively, theirs. The cut keeps every special
token (end-of-text, the chat markers), every single-byte token the model has (SmolLM2 lacks 21
bytes; texts lose them under both), and the most used tokens with their trees; it renumbers the kept
ids in base order (the specials, first in SmolLM2, keep their ids, so the chat template still works),
keeps the merges whose result is kept (their parts are, by closure) in base order, and the base's
pre-tokenizer and decoder. The same argument as above then gives the same tokens on texts made of
kept tokens (tests/test_compact_smollm2.py checks it on leaner text).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

REPO_ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == REPO_ROOT / "data":  # `python data/compact_tokenizer.py`
    sys.path[0] = str(REPO_ROOT)
elif str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import json  # noqa: E402

import numpy as np  # noqa: E402
import tiktoken  # noqa: E402

from tinyhelen import config  # noqa: E402
from tinyhelen.atomic import atomic_write_json  # noqa: E402
from tinyhelen.checkpoint import CheckpointError  # noqa: E402  (a pretrained model missing, say)
from tinyhelen.config import setting  # noqa: E402
from data.corpus import CORPORA, DEFAULT_SCALE, SPLITS, DataError, available_genres, check_genres, \
    iter_documents  # noqa: E402
from data.tokenizer import PretrainedTokenizer, Tokenizer, load_tokenizer  # noqa: E402

SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "tinyhelen"


def bpe(piece: bytes, ranks: dict[bytes, int]) -> tuple[list[bytes], list[bytes]]:
    """tiktoken's byte-pair merge of one piece, without its whole-piece shortcut -> (final parts,
    the tokens made along the way in merge order). At each step the adjacent pair whose concatenation
    has the lowest rank merges, the leftmost on a tie, as tiktoken's _byte_pair_merge does."""
    parts, made = [bytes([b]) for b in piece], []
    while len(parts) > 1:
        best, best_rank = -1, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best, best_rank = i, rank
        if best < 0:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
        made.append(parts[best])
    return parts, made


def merge_tree(token: bytes, ranks: dict[bytes, int]) -> list[bytes]:
    """The tokens that must be kept for `token` to be produced wherever the large tokenizer produces
    it: the token and every intermediate token of its BPE. A token that BPE cannot build from its
    own bytes (tiktoken produces it only when a whole piece equals it) needs only itself."""
    parts, made = bpe(token, ranks)
    return made if parts == [token] else [token]


def count_tokens(base: Tokenizer, texts: Iterable[str], batch_chars: int = 4 << 20) -> np.ndarray:
    """How often each base id is used when the texts are encoded (a vectorised bincount per batch)."""
    counts = np.zeros(base.vocab_size, dtype=np.int64)
    batch, size = [], 0
    for text in list(texts) + [None]:
        if text is not None:
            batch.append(text)
            size += len(text)
        if batch and (text is None or size >= batch_chars):
            ids = np.fromiter((i for row in base.encode_batch(batch) for i in row), dtype=np.int64)
            counts += np.bincount(ids, minlength=base.vocab_size)
            batch, size = [], 0
    return counts


def size_name(size: int) -> str:
    return f"{size // 1000}K" if size % 1000 == 0 else str(size)


def build_compact(base, counts: np.ndarray, size: int, name: str = ""):
    """Keep the base's special tokens, its 256 single bytes and then the most used tokens (each with
    its merge tree) until `size` ids are taken; ids follow the base ranks, specials come last.
    A pretrained model's tokenizer is cut by build_compact_pretrained."""
    if isinstance(base, PretrainedTokenizer):
        return build_compact_pretrained(base, counts, size, name)
    ranks = base._enc._mergeable_ranks  # bytes -> base id (= merge priority)
    specials = dict(sorted(base._enc._special_tokens.items(), key=lambda kv: kv[1]))
    budget = size - len(specials)
    if budget < 256:
        raise ValueError(f"a compact tokenizer needs room for the 256 single bytes and "
                         f"{len(specials)} special tokens: size must be at least {256 + len(specials)}, "
                         f"got {size}")
    kept = {bytes([b]) for b in range(256)}
    by_id = {i: t for t, i in ranks.items()}
    # most used first; ties (and the long tail of unused tokens) in base-rank order
    order = np.lexsort((np.arange(len(counts)), -counts))
    for base_id in order:
        if len(kept) >= budget or counts[base_id] == 0:
            break
        token = by_id.get(int(base_id))
        if token is None or token in kept:
            continue  # a special token's id, or already kept through another token's tree
        missing = [t for t in dict.fromkeys(merge_tree(token, ranks)) if t not in kept]
        if len(kept) + len(missing) <= budget:
            kept.update(missing)
    tokens = sorted(kept, key=ranks.__getitem__)
    n = len(tokens)
    special_ids = {s: n + j for j, s in enumerate(specials)}
    encoding = tiktoken.Encoding(name=name or f"compact-{size_name(size)}", pat_str=base._enc._pat_str,
                                 mergeable_ranks={t: i for i, t in enumerate(tokens)},
                                 special_tokens=special_ids, explicit_n_vocab=n + len(specials))
    eot = next(s for s, i in specials.items() if i == base.eot_id)
    return Tokenizer(encoding, encoding.name, special_ids[eot],
                     compact={"base": base.name, "pattern": base._enc._pat_str,
                              "base_ids": [ranks[t] for t in tokens] + list(specials.values())})


def build_compact_pretrained(base: PretrainedTokenizer, counts: np.ndarray, size: int,
                             name: str = "") -> PretrainedTokenizer:
    """A pretrained model's byte-level BPE cut to `size` ids (the module docstring's rule), as a
    PretrainedTokenizer whose compact["base_ids"] holds each id's id in the model."""
    from tokenizers import Tokenizer as HFTokenizer
    spec = json.loads(base.backend.to_str())
    vocab = spec["model"]["vocab"]  # printable token -> base id
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    made_by = {a + b: (a, b) for a, b in merges}
    if len(made_by) != len(merges):
        raise ValueError(f"{base.name}: two merges make the same token; the cut needs one merge per token")
    specials = set(base.special_tokens.values())
    by_id = {i: t for t, i in vocab.items()}
    # byte-level BPE writes each byte as one printable character, so the byte tokens are the 1-char ones
    kept = {t for t, i in vocab.items() if len(t) == 1 and i not in specials}
    budget = size - len(specials)
    if budget < len(kept):
        raise ValueError(f"a compact {base.name} tokenizer needs room for its {len(kept)} byte tokens and "
                         f"{len(specials)} special tokens: size must be at least {len(kept) + len(specials)}, "
                         f"got {size}")

    def tree(token: str) -> list[str]:  # the token, then the parts its merge is made of, recursively
        out, todo = [], [token]
        while todo:
            t = todo.pop()
            out.append(t)
            todo.extend(made_by.get(t, ()))
        return out

    order = np.lexsort((np.arange(len(counts)), -counts))  # most used first; ties in base order
    for base_id in order:
        if len(kept) >= budget or counts[base_id] == 0:
            break
        token = by_id[int(base_id)]
        if int(base_id) in specials or token in kept:
            continue
        missing = [t for t in dict.fromkeys(tree(token)) if t not in kept]
        if len(kept) + len(missing) <= budget:
            kept.update(missing)
    base_ids = sorted(specials | {vocab[t] for t in kept})
    new_id = {b: i for i, b in enumerate(base_ids)}
    spec["model"]["vocab"] = {by_id[b]: i for i, b in enumerate(base_ids)}
    spec["model"]["merges"] = [[a, b] for a, b in merges if a + b in kept]  # a and b are kept: closure
    spec["added_tokens"] = [{**t, "id": new_id[t["id"]]} for t in spec["added_tokens"] if t["id"] in new_id]
    return PretrainedTokenizer(HFTokenizer.from_str(json.dumps(spec)),
                               name or f"{base.name}-compact-{size_name(size)}", new_id[base.eot_id],
                               [new_id[i] for i in base.stop_ids], base.chat_template, base.template_tokens,
                               compact={"base": base.name, "base_ids": base_ids})


def base_tokenizer(spec: str):
    """The tokenizer to cut: cl100k_base, a shipped pretrained model's short name (its own tokenizer,
    read without the weights: tinyhelen/pretrained.py), or a saved tokenizer file."""
    from tinyhelen.pretrained import SHIPPED, shipped_tokenizer
    return shipped_tokenizer(spec) if spec in SHIPPED else load_tokenizer(spec)


def build_from_texts(texts: Iterable[str], size: int, base: str = "cl100k_base"):
    """Count the base tokenizer's tokens on texts and cut a compact tokenizer of `size` ids."""
    big = base_tokenizer(base)
    return build_compact(big, count_tokens(big, texts), size)


# ------------------------------------------------------------------------------------------ the report

def embedding_share(vocab_size: int) -> float:
    """Embedding + (untied) head share of all parameters of the paper's 14M Llama shape at this
    vocabulary: 2·V·D over everything (the non-embedding count does not depend on V)."""
    from model_llama import Llama, LlamaConfig
    cfg = LlamaConfig(vocab_size=vocab_size)
    non_embedding = Llama(LlamaConfig(vocab_size=2)).num_params()
    rows = (1 if cfg.tie_embeddings else 2) * vocab_size * cfg.n_embd
    return rows / (rows + non_embedding)


def tokens_per_byte(tok: Tokenizer, texts: list[str]) -> float:
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return sum(len(ids) for ids in tok.encode_batch(texts)) / n_bytes


def report(base: Tokenizer, train_texts: list[str], eval_texts: list[str], sizes: list[int],
           gpt2k: Tokenizer | None = None) -> dict:
    """For each size: the share of the base tokens of eval_texts that the kept vocabulary holds
    (coverage), and tokens per byte of the compact, the full base and gpt-2K tokenizers on eval_texts."""
    counts = count_tokens(base, train_texts)
    eval_counts = count_tokens(base, eval_texts)
    specials = set((base.special_tokens if isinstance(base, PretrainedTokenizer)
                    else base._enc._special_tokens).values())
    rows = []
    for size in sizes:
        tok = build_compact(base, counts, size)
        kept = np.zeros(base.vocab_size, dtype=bool)
        kept[tok.compact["base_ids"]] = True
        rows.append({"size": size, "name": tok.name,
                     "coverage": float(eval_counts[kept].sum() / eval_counts.sum()),
                     "train_coverage": float(counts[kept].sum() / counts.sum()),
                     # kept only to reach longer tokens: never produced on the counted text
                     "unused_multibyte": int(sum(counts[i] == 0 and len(base.token_bytes(i)) > 1
                                                 for i in tok.compact["base_ids"] if i not in specials)),
                     "tokens_per_byte": tokens_per_byte(tok, eval_texts),
                     "embedding_share_14M": embedding_share(size)})
    out = {"base": base.name, "base_vocab_size": base.vocab_size, "base_tokens_per_byte": tokens_per_byte(base, eval_texts),
           "base_embedding_share_14M": embedding_share(base.vocab_size),
           "base_distinct_tokens_train": int((counts > 0).sum()), "sizes": rows}
    if gpt2k is not None:
        out["gpt2k_tokens_per_byte"] = tokens_per_byte(gpt2k, eval_texts)
        out["gpt2k_embedding_share_14M"] = embedding_share(gpt2k.vocab_size)
    return out


def report_table(r: dict) -> str:
    lines = ["| tokenizer | ids | coverage (validation) | tokens/byte | vs full | vs gpt-2K "
             "| emb+head share, 14M |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    g = r.get("gpt2k_tokens_per_byte")
    for row in r["sizes"]:
        lines.append(f"| {row['name']} | {row['size']:,} | {100 * row['coverage']:.2f}% | "
                     f"{row['tokens_per_byte']:.4f} | "
                     f"{row['tokens_per_byte'] / r['base_tokens_per_byte']:.3f}x | "
                     + (f"{row['tokens_per_byte'] / g:.3f}x" if g else "-")
                     + f" | {100 * row['embedding_share_14M']:.1f}% |")
    lines.append(f"| {r['base']} | {r['base_vocab_size']:,} | 100% | {r['base_tokens_per_byte']:.4f} | 1x | "
                 + (f"{r['base_tokens_per_byte'] / g:.3f}x" if g else "-")
                 + f" | {100 * r['base_embedding_share_14M']:.1f}% |")
    if g:
        lines.append(f"| gpt-2K | 2,000 | - | {g:.4f} | {g / r['base_tokens_per_byte']:.3f}x | 1x | "
                     f"{100 * r['gpt2k_embedding_share_14M']:.1f}% |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the command

@dataclass
class CompactConfig:
    data_root: str = ""                 # "": ../shared/data/tinyhelen
    corpus: str = setting("leaner", choices=CORPORA)
    scale: str = DEFAULT_SCALE
    genres: str = "all"                 # all, or a comma list: the documents whose tokens are counted
    split: str = setting("train", choices=SPLITS)  # where tokens are counted
    base: str = "cl100k_base"           # the large tokenizer: cl100k_base, smollm2-135m or a saved file
    size: int = setting(4000, min=262)  # ids in the compact tokenizer, specials included
    out: str = ""                       # "": out/tokenizers/NAME.json (compact-4K, smollm2-135m-compact-4K)
    report_sizes: str = ""              # e.g. 2000,4000,8000,16000: measure these instead of writing one
    eval_split: str = setting("validation", choices=SPLITS)  # the report's coverage and tokens/byte
    gpt2k: str = ""                     # gpt-2K file for the report; "": train one on the counted split
    report: str = ""                    # where the report's JSON goes ("": out/tokenizers/report.json)


def read_texts(cfg: CompactConfig, split: str) -> list[str]:
    root = Path(cfg.data_root) if cfg.data_root else SHARED_DATA
    genres = None if cfg.genres == "all" else check_genres(cfg.genres.split(","))
    if genres is None:
        genres = available_genres(root, cfg.corpus, split, cfg.scale)
        if not genres:
            raise DataError(f"no {cfg.corpus}/{cfg.scale}/{split} data under {root}: pass --data_root=PATH")
    return [d.text for d in iter_documents(root, cfg.corpus, split, genres, cfg.scale)]


def main(cfg: CompactConfig) -> None:
    try:
        base = base_tokenizer(cfg.base)
        texts = read_texts(cfg, cfg.split)
        if cfg.report_sizes:
            sizes = [int(s) for s in cfg.report_sizes.split(",") if s.strip()]
            gpt2k = load_tokenizer(cfg.gpt2k) if cfg.gpt2k else Tokenizer.train(texts, 2000)
            r = report(base, texts, read_texts(cfg, cfg.eval_split), sizes, gpt2k)
            r.update(corpus=cfg.corpus, counted_on=cfg.split, measured_on=cfg.eval_split)
            path = Path(cfg.report or "out/tokenizers/report.json")
            atomic_write_json(path, r)
            print(report_table(r))
            print(f"wrote {path}")
            return
        tok = build_compact(base, count_tokens(base, texts), cfg.size)
        path = Path(cfg.out or f"out/tokenizers/{tok.name}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(path)
        print(f"wrote {path}: {tok.vocab_size:,} ids ({tok.name}, from {base.name}, counted on "
              f"{cfg.corpus} {cfg.split}), eot id {tok.eot_id}")
    except (DataError, OSError, ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    config.run_cli(main, CompactConfig())
