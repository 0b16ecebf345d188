"""Per-document scoring speed: scoring.score_documents against the plain loop, in the same run.

    python bench/bench_scoring.py [--data_dir=out/data/leaner] [--sample=200] [--max_len=256] [--threads=0]

The curriculum's proxy model (Llama: 4 layers, width 128, 4 heads, FFN 512, vocabulary 2,000; random
weights, speed does not depend on them). Contenders, on the same seeded sample of train documents:

    plain        score_documents_plainly: one document at a time (its pieces of max_len targets one
                 forward each), fp32, as a straightforward loop does it
    fast_fp32    score_documents: pieces sorted by length, batched under a token budget, fp32
    fast         score_documents with the machine's precision (bf16 autocast where native)

Printed: each contender's seconds and tokens/s, the ratios plain / fast and plain / fast_fp32 (wall
clock, one timing each: the plain loop is the slow one and runs for many seconds), the largest
difference between the scores, and the time `fast` takes over the whole train split.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tinyhelen import config  # noqa: E402
from tinyhelen import machine as machine_lib  # noqa: E402
from tinyhelen.config import setting  # noqa: E402
from data.documents import Documents  # noqa: E402
from model_llama import Llama, LlamaConfig  # noqa: E402
from tinyhelen.scoring import score_documents, score_documents_plainly  # noqa: E402


@dataclass
class BenchScoringConfig:
    data_dir: str = "out/data/leaner"
    sample: int = setting(200, min=1)
    max_len: int = setting(256, min=2)
    batch_tokens: int = setting(16384, min=1)
    whole_split: bool = True
    dtype: str = setting("auto", choices=machine_lib.DTYPE_CHOICES)
    threads: int = setting(0, min=0)
    seed: int = 0


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(cfg: BenchScoringConfig) -> None:
    m = machine_lib.setup("cpu", cfg.dtype, cfg.threads, distributed=False)
    fp32 = machine_lib.Machine(m.device, torch.float32)
    torch.manual_seed(cfg.seed)
    model = Llama(LlamaConfig(vocab_size=2000, n_layer=4, n_embd=128, n_head=4, n_kv_head=4, ffn_hidden=512,
                              max_seq_len=cfg.max_len)).eval()
    docs = Documents.open(cfg.data_dir, "train")
    sample = np.sort(np.random.default_rng(cfg.seed).choice(len(docs), min(cfg.sample, len(docs)), replace=False))
    tokens = int((docs.lengths[sample] + 1).sum())
    score_documents(model, docs, sample[:8], cfg.max_len, cfg.batch_tokens, m)  # warm up allocations
    plain, t_plain = timed(lambda: score_documents_plainly(model, docs, sample, cfg.max_len))
    fast32, t_fast32 = timed(lambda: score_documents(model, docs, sample, cfg.max_len, cfg.batch_tokens, fp32))
    fast, t_fast = timed(lambda: score_documents(model, docs, sample, cfg.max_len, cfg.batch_tokens, m))
    result = {
        "threads": torch.get_num_threads(), "dtype": str(m.dtype).removeprefix("torch."),
        "sample_documents": len(sample), "sample_tokens": tokens, "max_len": cfg.max_len,
        "plain_s": t_plain, "fast_fp32_s": t_fast32, "fast_s": t_fast,
        "plain_tok_s": tokens / t_plain, "fast_fp32_tok_s": tokens / t_fast32, "fast_tok_s": tokens / t_fast,
        "ratio_fast": t_plain / t_fast, "ratio_fast_fp32": t_plain / t_fast32,
        "max_diff_fp32": float(np.abs(fast32 - plain).max()), "max_diff_fast": float(np.abs(fast - plain).max()),
    }
    if cfg.whole_split:
        _, t_all = timed(lambda: score_documents(model, docs, None, cfg.max_len, cfg.batch_tokens, m))
        result.update(split_documents=len(docs), split_tokens=int((docs.lengths + 1).sum()), split_s=t_all)
    print(f"plain {t_plain:.2f}s | fast fp32 {t_fast32:.2f}s ({result['ratio_fast_fp32']:.1f}x) | "
          f"fast {result['dtype']} {t_fast:.2f}s ({result['ratio_fast']:.1f}x) on {len(sample)} documents, "
          f"{tokens:,} tokens")
    if cfg.whole_split:
        print(f"whole train split: {len(docs)} documents, {result['split_tokens']:,} tokens in {result['split_s']:.1f}s")
    print(json.dumps(result))


if __name__ == "__main__":
    config.run_cli(main, BenchScoringConfig())
