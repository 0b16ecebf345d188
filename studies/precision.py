"""Does bf16 autocast train as well as fp32? Same model, seed and batches, two precisions.

    python studies/precision.py [configs/demo_llama.py] [--max_steps=200 ...]

Trains the given config (default: the CPU demo) once in fp32 and once under bf16 autocast, in this
process, then prints both validation curves, the largest gap, and writes out/precision/precision.png
(and each run's wall time to out/precision/times.jsonl).
train.py uses bf16 by default only where the hardware runs it natively; this script is the evidence
that doing so does not hurt the loss. On a CPU without native bf16 (no AVX512-BF16 or AMX) bf16 is
emulated and very slow, so keep the run short there (the defaults below are).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path


if __package__ in (None, ""):  # run as `python studies/NAME.py`: import from the repo root, not studies/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from studies import common  # noqa: E402
from tinyhelen import config as config_lib  # noqa: E402
import train  # noqa: E402
from tinyhelen.metrics import read_metrics  # noqa: E402

SHORT = ["--max_steps=120", "--eval_every=20", "--eval_steps=4", "--log_every=10", "--ckpt_every=100000",
         "--sample_tokens=0", "--compile=false"]


def main(argv: list[str]) -> None:
    files = [a for a in argv if not a.startswith("--")] or ["configs/demo_llama.py"]
    flags = [a for a in argv if a.startswith("--")]
    base = config_lib.parse_args(train.TrainConfig(), [*files, *SHORT, *flags])
    out = Path("out/precision")
    runner = common.Runner(out)
    curves = {}
    for dtype in ("fp32", "bf16"):
        cfg = dataclasses.replace(base, dtype=dtype, out_dir=str(out / dtype))
        runner.call("train", dtype, train.pretrain, cfg)
        curves[dtype] = {r["step"]: r["val_loss"] for r in read_metrics(out / dtype / "metrics.jsonl")
                         if "val_loss" in r}
    print("\nstep | fp32 val loss | bf16 val loss | bf16 - fp32")
    for step in sorted(curves["fp32"]):
        a, b = curves["fp32"][step], curves["bf16"][step]
        print(f"{step:4d} | {a:13.4f} | {b:13.4f} | {b - a:+.4f}")
    gaps = [abs(curves["bf16"][s] - curves["fp32"][s]) for s in curves["fp32"]]
    final = max(curves["fp32"])
    print(f"largest |gap| {max(gaps):.4f} nats; final: fp32 {curves['fp32'][final]:.4f}, "
          f"bf16 {curves['bf16'][final]:.4f}")
    plot(curves, out / "precision.png")
    print(f"wrote {out / 'precision.png'}")


def plot(curves: dict, path: Path) -> None:
    with common.figure(path, figsize=(6.5, 4), dpi=110) as (fig, ax):
        for name, curve in curves.items():
            ax.plot(list(curve), list(curve.values()), "o-", markersize=3, label=f"{name} validation loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_title("bf16 autocast vs fp32, same seed and batches")
        ax.grid(alpha=0.3)
        ax.legend()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except config_lib.ConfigError as e:
        raise SystemExit(f"error: {e}")
