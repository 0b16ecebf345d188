"""Llama benchmark: our model_llama.Llama against transformers.LlamaForCausalLM, same weights and config.

    python bench/bench_llama.py [--batch=8] [--seq=256] [--rounds=5] [--steps=2] [--precisions=fp32,bf16]
                                [--compile=true]

Measures, in one process, so that every ratio compares figures taken side by side:
  * the machine's matmul peak: GFLOP/s of a large square fp32 and bf16 matmul;
  * training tokens/s, full step = forward + fp32 loss + backward + AdamW step, for each precision:
    fp32, and bf16 = `torch.autocast("cpu", dtype=torch.bfloat16)` around forward and loss with fp32
    weights, as the training loop does. Both models get the training loop's optimizer (fused
    AdamW) and its memory setting (machine.keep_freed_memory_mapped, applied once to this process).
    Timing rounds alternate between the models (and which goes first). In a round each model first
    takes --settle untimed steps, so that it is timed in its own steady state rather than paying
    for page faults of memory the other model's step just released; then --steps timed steps. The
    ratio is the median over rounds of ours/theirs measured in the same round, so load from other
    processes that lasts longer than a round cancels out. Each ratio is given twice: by wall-clock
    time, and by this process's CPU time (time.process_time), which on a shared machine ignores the
    time our threads spent descheduled (with more than one thread it also counts OpenMP
    spin-waiting). MFU = tokens/s (wall) x flops_per_token / measured peak;
  * with --compile, the same for torch.compile of *both* models (train.py compiles by default):
    ours compiled against transformers compiled, and against transformers eager;
  * generation tokens/s, greedy, prompt --gen_prompt, --gen_new new tokens, batch 1 and 8: our
    KV-cached generate() against transformers' generate(do_sample=False) (which also uses a KV
    cache), after checking that both produce the same tokens.

bf16 on a CPU without native bf16 matmul (no AVX512-BF16 / AMX) is emulated, about 100x slower than
fp32; the script then measures bf16 training at --bf16_batch x --bf16_seq so that it finishes, and
says so. Threads: torch's default (torch.get_num_threads()) for both models, or --threads.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402

from tinyhelen import config, interop  # noqa: E402
from model_llama import Llama, LlamaConfig  # noqa: E402
from tinyhelen.machine import cpu_supports_bf16, keep_freed_memory_mapped  # noqa: E402


@dataclass
class BenchConfig:
    batch: int = 8
    seq: int = 256
    warmup: int = 1            # untimed steps per model before the rounds
    rounds: int = 5            # timing rounds, alternating the models
    settle: int = 1            # untimed steps per model at the start of each round
    steps: int = 2             # timed optimizer steps per model per round
    precisions: str = "fp32,bf16"
    bf16_batch: int = 1        # shape and steps per round for bf16 training when bf16 is emulated
    bf16_seq: int = 32
    bf16_steps: int = 1
    compile: bool = False      # also time torch.compile of both models
    generation: bool = True
    gen_prompt: int = 32
    gen_new: int = 256
    gen_rounds: int = 2
    threads: int = 0           # 0: torch's default
    seed: int = 0


def matmul_peak(dtype: torch.dtype, max_n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of the best of `repeats` n x n matmuls; n grows to max_n unless one matmul already
    takes a second (emulated bf16), so the measurement never takes long."""
    n = 256
    while True:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        t = time.perf_counter()
        a @ b
        took = time.perf_counter() - t
        if n >= max_n or took > 1.0:
            break
        n *= 2
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _timed_both(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process)"""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def make_models(seed: int) -> tuple[Llama, transformers.LlamaForCausalLM]:
    """The paper's 14M config, ours initialised, and transformers' twin loaded from our export
    (attention: transformers' default, sdpa, its fastest on CPU)."""
    torch.manual_seed(seed)
    ours = Llama(LlamaConfig())
    with tempfile.TemporaryDirectory() as tmp:
        interop.save_hf(ours, tmp)
        theirs = transformers.LlamaForCausalLM.from_pretrained(tmp)
    return ours, theirs


class Trainer:
    """One model + its own AdamW; step() is the whole training step."""

    def __init__(self, name: str, model, hf: bool, bf16: bool):
        self.name, self.model, self.hf, self.bf16 = name, model.train(), hf, bf16
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            if self.hf:
                # Both models run on the same T tokens; transformers shifts the labels itself
                # (so it scores T - 1 positions, we score T: a 0.4% difference in the loss only).
                loss = self.model(x, labels=x).loss
            else:
                _, loss = self.model(x, y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()


def time_training(trainers: list[Trainer], cfg: BenchConfig, batch: int, seq: int, rounds: int,
                  steps: int, warmup: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) tokens/s of every round for each trainer, the rounds interleaved."""
    g = torch.Generator().manual_seed(cfg.seed)
    tokens = torch.randint(0, 2000, (batch, seq + 1), generator=g)
    x, y = tokens[:, :-1], tokens[:, 1:]
    for t in trainers:
        for _ in range(warmup):
            t.step(x, y)
    rates: dict[str, list[tuple[float, float]]] = {t.name: [] for t in trainers}
    for r in range(rounds):
        order = trainers if r % 2 == 0 else trainers[::-1]
        for t in order:
            for _ in range(cfg.settle):
                t.step(x, y)
            wall, cpu = _timed_both(lambda: [t.step(x, y) for _ in range(steps)])
            rates[t.name].append((steps * batch * seq / wall, steps * batch * seq / cpu))
    return rates


TARGETS = {"fp32": 1.15, "bf16": 1.5}  # the engine issue's targets, ours / transformers at equal precision


def report_training(rates, flops: float, peak: float | None, label: str) -> None:
    def ratio(a: str, b: str, which: int) -> float:
        return statistics.median(x[which] / y[which] for x, y in zip(rates[a], rates[b]))

    for name, r in rates.items():
        wall = [w for w, _ in r]
        med = statistics.median(wall)
        print(f"  {label:5s} {name:24s} {med:8.1f} tok/s (rounds: {', '.join(f'{v:.0f}' for v in wall)})"
              f"  MFU {f'{100 * med * flops / peak / 1e9:.1f}%' if peak else 'n/a'}")
    pairs = [("ours", "transformers")]
    if "ours compiled" in rates:
        pairs += [("ours compiled", "transformers compiled"), ("ours compiled", "transformers")]
    for a, b in pairs:
        print(f"  {label:5s} {a} vs {b}: x{ratio(a, b, 0):.3f} wall, x{ratio(a, b, 1):.3f} CPU time"
              f"  (target x{TARGETS[label]})")


def time_generation(ours: Llama, theirs, cfg: BenchConfig) -> None:
    for batch in (1, 8):
        g = torch.Generator().manual_seed(cfg.seed)
        prompt = torch.randint(0, 2000, (batch, cfg.gen_prompt), generator=g)

        def run_ours():
            return ours.generate(prompt, cfg.gen_new, temperature=0.0)

        def run_theirs():
            return theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                   max_new_tokens=cfg.gen_new, min_new_tokens=cfg.gen_new, pad_token_id=0)

        with torch.no_grad():
            same = torch.equal(run_ours(), run_theirs())  # also the warm-up
            times = {"ours": [], "transformers": []}
            for r in range(cfg.gen_rounds):
                for name, fn in ((("ours", run_ours), ("transformers", run_theirs)) if r % 2 == 0
                                 else (("transformers", run_theirs), ("ours", run_ours))):
                    times[name].append(_timed_both(fn))
        new_tokens = batch * cfg.gen_new
        o, t = min(w for w, _ in times["ours"]), min(w for w, _ in times["transformers"])
        oc, tc = min(c for _, c in times["ours"]), min(c for _, c in times["transformers"])
        print(f"  batch {batch}: ours {new_tokens / o:7.1f} tok/s, transformers {new_tokens / t:7.1f} tok/s: "
              f"x{t / o:.2f} wall, x{tc / oc:.2f} CPU time  (identical tokens: {same})")


def main(cfg: BenchConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    keep_freed_memory_mapped()  # as train.py does; one process, so both models get it
    ours, theirs = make_models(cfg.seed)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other processes compete for them)")
    print(f"model: paper 14M Llama, {ours.num_params():,} non-embedding / {ours.num_params(False):,} params")

    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    bf16_emulated = not cpu_supports_bf16()
    print(f"matmul peak: fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s "
          f"({'emulated' if bf16_emulated else 'native: AVX512-BF16 or AMX'})")

    for precision in [p for p in cfg.precisions.split(",") if p]:  # --precisions= : generation only
        bf16 = precision == "bf16"
        batch, seq, steps = cfg.batch, cfg.seq, cfg.steps
        if bf16 and bf16_emulated:
            batch, seq, steps = cfg.bf16_batch, cfg.bf16_seq, cfg.bf16_steps
            print(f"bf16 matmul is emulated on this CPU ({peaks['bf16']:.1f} GFLOP/s): bf16 training "
                  f"measured at {batch} x {seq} instead")
        print(f"training, {precision}, batch {batch} x {seq}, {steps} steps x {cfg.rounds} rounds:")
        trainers = [Trainer("ours", ours, hf=False, bf16=bf16),
                    Trainer("transformers", theirs, hf=True, bf16=bf16)]
        if cfg.compile:
            trainers += [Trainer("ours compiled", torch.compile(ours), hf=False, bf16=bf16),
                         Trainer("transformers compiled", torch.compile(theirs), hf=True, bf16=bf16)]
        rates = time_training(trainers, cfg, batch, seq, cfg.rounds, steps,
                              cfg.warmup + (1 if cfg.compile else 0))
        # Emulated bf16 has no meaningful peak: its small products run faster than the big square one.
        peak = None if bf16 and bf16_emulated else peaks[precision]
        report_training(rates, ours.flops_per_token(seq), peak, precision)

    if cfg.generation:
        print(f"generation, greedy, prompt {cfg.gen_prompt}, {cfg.gen_new} new tokens, fp32, best of "
              f"{cfg.gen_rounds}:")
        ours, theirs = make_models(cfg.seed)  # untrained twins again: the same weights, the same tokens
        time_generation(ours.eval(), theirs.eval(), cfg)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    config.run_cli(main, BenchConfig())
