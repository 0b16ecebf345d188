"""Answers per second for instruct.py make: llama.cpp's server (the default) against the engine's batches.

    python bench/bench_instruct_make.py [--rows=64] [--batch_size=32] [--threads=2] [--max_tokens=72]

The same `rows` requests of instruct.py make's plan (seed 0, from row 200: past the first topics),
with make's own prompts and settings (temperature 0.3, max_tokens, seed 0), answered by:

    llama.cpp   the embedded server (tinyhelen/llm/serve.py) with SmolLM2-135M-Instruct's Q4_1 file,
                one request at a time, as make sends them (llama-cpp-python serves one at a time)
    engine      the engine's import of the same file (fp32 weights, bf16 autocast where the CPU has
                it), batch_size prompts at a time, sorted by length as make sorts them

Each side runs alone, after one warm-up request. Printed: seconds per answer on each side, the ratio
llama.cpp / engine (above 1: the engine is faster), and the mean answer length in words on each side
(the sides sample differently, so their answers differ; much shorter answers would flatter a side).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tinyhelen import config  # noqa: E402
from tinyhelen.config import setting  # noqa: E402


@dataclass
class BenchConfig:
    data_root: str = str(REPO_ROOT.parent / "shared" / "data" / "tinyhelen")
    rows: int = setting(64, min=1)
    batch_size: int = setting(32, min=1)
    threads: int = setting(2, min=1)
    max_tokens: int = setting(72, min=8)
    engine_model: str = "smollm2-135m"


def main(cfg: BenchConfig) -> dict:
    from tinyhelen.instruct_make import EngineBackend, HttpBackend, plan, read_topics
    from tinyhelen.llm import MODEL_ALIAS, ChatClient, LocalServer
    requests = plan(read_topics(cfg.data_root))[200:200 + cfg.rows]
    messages = [r.messages() for r in requests]
    settings = {"temperature": 0.3, "max_tokens": cfg.max_tokens, "seed": 0}
    results = {}

    def timed(backend, order):
        got = {}
        start = time.perf_counter()
        for first in range(0, len(order), cfg.batch_size):
            chunk = order[first:first + cfg.batch_size]
            backend.complete_many([messages[i] for i in chunk], settings,
                                  lambda j, a, chunk=chunk: got.__setitem__(chunk[j], a))
        seconds = time.perf_counter() - start
        return seconds / len(order), statistics.fmean(len(a.split()) for a in got.values())

    with LocalServer(n_threads=cfg.threads) as server:
        http = HttpBackend(ChatClient(server.base_url, MODEL_ALIAS), 1)
        http.client.complete(messages[0], max_tokens=4)  # warm-up
        results["llama.cpp"] = timed(http, list(range(len(messages))))
        http.close()
    engine = EngineBackend(cfg.engine_model, cfg.threads)
    engine.complete_many(messages[:2], {**settings, "max_tokens": 4}, lambda j, a: None)  # warm-up
    by_length = sorted(range(len(messages)), key=lambda i: len(json.dumps(messages[i])))
    results["engine"] = timed(engine, by_length)
    for name, (per, words) in results.items():
        print(f"{name:10s} {per:.3f} s per answer, {words:.1f} words per answer")
    ratio = results["llama.cpp"][0] / results["engine"][0]
    print(f"llama.cpp / engine: x{ratio:.2f} ({cfg.rows} requests, batch {cfg.batch_size}, {cfg.threads} threads)")
    return {"ratio": ratio, **{k: {"s_per_answer": v[0], "words": v[1]} for k, v in results.items()}}


if __name__ == "__main__":
    config.run_cli(main, BenchConfig())
