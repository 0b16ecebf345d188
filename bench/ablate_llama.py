"""Where does a Llama training step spend its time? Cost of each component measured in place.

    python bench/ablate_llama.py [--precision=bf16] [--rounds=3] [--steps=3]

Profilers distort this workload badly on CPU (their per-op overhead inflates the many small ops,
and they change the allocation pattern), and timing a component alone misses cache and allocator
effects of the real step. So this script times the whole training step of the paper's 14M model
(forward + loss + backward + fused AdamW, batch 8 x 256) with one component at a time replaced by
a trivial stand-in of the same shapes, and reports full step minus ablated step: what that
component costs inside the real step. Variants alternate across rounds; medians are reported.

The stand-ins still do one cheap pass (x * 1.0 and the like), so a component's own cost is
slightly higher than its row here.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tinyhelen import config  # noqa: E402
import model_common  # noqa: E402
import model_llama  # noqa: E402
from tinykernels import attention_cpu, ops  # noqa: E402
from tinyhelen.machine import keep_freed_memory_mapped  # noqa: E402


@dataclass
class AblateConfig:
    precision: str = "bf16"    # bf16 (autocast) | fp32
    rounds: int = 3
    settle: int = 2            # untimed steps after switching variant
    steps: int = 3             # timed steps per variant per round
    threads: int = 0


def _autocast_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def _heads_of(qkv: torch.Tensor, rope: torch.Tensor, n_head: int, n_kv_head: int) -> torch.Tensor:
    return qkv[..., : qkv.shape[-1] * n_head // (n_head + 2 * n_kv_head)] * 1.0


# name: (object, attribute, stand-in); each stand-in keeps the shapes and dtypes flowing on.
# Training attention on CPU (the fused branch of model_llama.Attention) is
# attention_cpu.causal_attention in both precisions, rotary included: the fp32 C kernel, or bf16
# batched matmuls with fused kernels.
STAND_INS = {
    "RMSNorm (17 per step)": (model_common.RMSNorm, "forward", lambda self, x: x.to(_autocast_dtype(x), copy=True)),
    "attention + rotary": (attention_cpu, "causal_attention", _heads_of),
    "SwiGLU product": (ops.SwiGLUProduct, "apply", lambda gate_up: gate_up.chunk(2, -1)[1] * 1.0),
    # reads one column: the head's backward still gets a full-size gradient, as with any loss
    "cross-entropy": (model_llama, "cross_entropy", lambda logits, targets, **kw: logits[:, 0].float().mean()),
}


def main(cfg: AblateConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    keep_freed_memory_mapped()
    bf16 = cfg.precision == "bf16"
    torch.manual_seed(0)
    model = model_llama.Llama(model_llama.LlamaConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    tokens = torch.randint(0, 2000, (8, 257))
    x, y = tokens[:, :-1], tokens[:, 1:]
    originals = {name: getattr(obj, attr) for name, (obj, attr, _) in STAND_INS.items()}

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, y)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def use(variant: str) -> None:
        for name, (obj, attr, stand_in) in STAND_INS.items():
            setattr(obj, attr, stand_in if name == variant else originals[name])

    variants = ["full step", *STAND_INS]
    times = {v: [] for v in variants}
    try:
        for r in range(cfg.rounds):
            for variant in variants if r % 2 == 0 else variants[::-1]:
                use(variant)
                for _ in range(cfg.settle):
                    step()
                start = time.perf_counter()
                for _ in range(cfg.steps):
                    step()
                times[variant].append((time.perf_counter() - start) / cfg.steps)
    finally:
        use("")
    full = statistics.median(times["full step"])
    print(f"{cfg.precision}, {torch.get_num_threads()} threads: full step {1e3 * full:.0f} ms "
          f"({8 * 256 / full:,.0f} tokens/s); in-place cost = full step minus the step without it:")
    for variant in STAND_INS:
        cost = full - statistics.median(times[variant])
        print(f"  {variant:24s} {1e3 * cost:6.1f} ms  ({100 * cost / full:4.1f}% of the step)")


if __name__ == "__main__":
    config.run_cli(main, AblateConfig())
