"""Tokenizer benchmark: how long gpt-2K takes to train, how fast it encodes, how well it compresses.

    python bench/bench_tokenizer.py [--data_root=../shared/data/tinyhelen] [--repeats=3]

Measures, on the full leaner 10M train split (the text the paper's gpt-2K is trained on):
  * training time of the 2,000-entry byte-level BPE (tokenizers' Rust trainer + conversion to tiktoken);
  * encoding throughput in MB/s of UTF-8 text for our tiktoken encoder with 1 and 2 threads, against the
    baseline: the `tokenizers` object that trained it (encode one by one, and its parallel encode_batch),
    after checking that both produce the same ids;
  * tokens per byte of gpt-2K against cl100k_base, on the train split and on validation (which has the
    web and code genres that train lacks).
Each timing is the best of --repeats runs after one warm-up run: on a shared machine the fastest run is
the one least disturbed by other work.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tinyhelen import config  # noqa: E402
from data.corpus import iter_documents  # noqa: E402
from data.prepare import SHARED_DATA  # noqa: E402
from data.tokenizer import Tokenizer, train_bpe  # noqa: E402


@dataclass
class BenchConfig:
    data_root: str = str(SHARED_DATA)
    corpus: str = "leaner"
    repeats: int = 3


def best_time(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up (caches, thread pools, page cache)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(cfg: BenchConfig) -> None:
    train = [d.text for d in iter_documents(cfg.data_root, cfg.corpus, "train")]
    valid = [d.text for d in iter_documents(cfg.data_root, cfg.corpus, "validation")]
    n_bytes = sum(len(t.encode("utf-8")) for t in train)
    mb = n_bytes / 1e6
    print(f"text: {cfg.corpus} 10M train, {len(train)} documents, {mb:.2f} MB UTF-8; "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")

    seconds, (tok, hf) = best_time(lambda: train_bpe(train, vocab_size=2000), cfg.repeats)
    print(f"train gpt-2K ({tok.vocab_size} entries, {len(tok.merges)} merges): {seconds:.2f} s")

    ours = tok.to_hf()  # same merges, our ids: lets us compare ids with the baseline directly
    rows = []
    t1, ids1 = best_time(lambda: tok.encode_batch(train, num_threads=1), cfg.repeats)
    t2, ids2 = best_time(lambda: tok.encode_batch(train, num_threads=2), cfg.repeats)
    h1, hf_ids = best_time(lambda: [e.ids for e in map(ours.encode, train)], cfg.repeats)
    hb, _ = best_time(lambda: hf.encode_batch(train), cfg.repeats)
    assert ids1 == ids2 == hf_ids, "tiktoken and tokenizers disagree on the ids"
    rows += [("tiktoken, 1 thread", t1), ("tiktoken, 2 threads", t2),
             ("tokenizers encode (baseline, 1 thread)", h1), ("tokenizers encode_batch (baseline, parallel)", hb)]
    print("encode the train split (same ids from all four):")
    for name, secs in rows:
        print(f"  {name:<46} {mb / secs:7.2f} MB/s")
    print(f"  tiktoken 1 thread vs tokenizers 1 thread:  {h1 / t1:.2f}x")
    print(f"  tiktoken 2 threads vs tokenizers parallel: {hb / t2:.2f}x")

    cl = Tokenizer.cl100k()
    print("tokens per byte (lower is better compression):")
    for split, texts in (("train", train), ("validation", valid)):
        size = sum(len(t.encode("utf-8")) for t in texts)
        small = sum(map(len, tok.encode_batch(texts))) / size
        large = sum(map(len, cl.encode_batch(texts))) / size
        print(f"  {split:<11} gpt-2K {small:.3f}   cl100k_base {large:.3f}   (ratio {small / large:.2f})")


if __name__ == "__main__":
    config.run_cli(main, BenchConfig())
