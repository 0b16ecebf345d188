"""Selective scan, forward + backward: time and peak memory against sequence length, chunked vs sequential.

    python bench/bench_scan.py [--lengths=128,256,512,1024,2048,4096] [--batch=4] [--channels=256] [--state=16]
                               [--threads=0]   (0 = torch's default)

Shapes: B batch, L length, D channels, N state size. Each measurement runs in a fresh process, so
its peak memory (the growth of the resident set during the call, over the inputs already there)
is its own. "chunked" is the PyTorch path of tinykernels.selective_scan (what CPU training uses);
"sequential" is tinykernels.selective_scan_reference under autograd. Both get the same inputs and
the same upstream gradients. Timing is the best of a few repeats; the sequential one at long
lengths runs once. The machine may be shared: compare the two columns of one run, not runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        import os
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(method: str, batch: int, length: int, channels: int, state: int, repeats: int, threads: int) -> dict:
    """Runs inside the child process."""
    import resource

    import torch
    if threads:
        torch.set_num_threads(threads)
    sys.path.insert(0, str(REPO))
    import tinykernels

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, length, channels, generator=g)
    dt = torch.rand(batch, length, channels, generator=g) * 0.1 + 1e-3
    A = -torch.exp(torch.log(torch.arange(1, state + 1.0)).repeat(channels, 1))
    B = torch.randn(batch, length, state, generator=g)
    C = torch.randn(batch, length, state, generator=g)
    gy = torch.randn(batch, length, channels, generator=g)
    inputs = [t.requires_grad_() for t in (x, dt, A, B, C)]
    fn = (lambda: tinykernels.selective_scan(*inputs, backend="torch")) if method == "chunked" else \
        (lambda: tinykernels.selective_scan_reference(*inputs))
    small = [t.detach()[:1, :8].clone().requires_grad_() if t.dim() == 3 else t for t in inputs]
    torch.autograd.grad(tinykernels.selective_scan(*small, backend="torch")[0].sum(), small[:2])  # one-time setup
    before = _rss_bytes()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        y, _ = fn()
        torch.autograd.grad((y * gy).sum(), inputs)
        times.append(time.perf_counter() - t0)
        del y
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": method, "length": length, "seconds": min(times), "peak_mb": max(0, peak - before) / 2**20}


def main(argv):
    opts = dict(lengths="128,256,512,1024,2048,4096", batch="4", channels="256", state="16", threads="0")
    for arg in argv:
        key, _, value = arg.lstrip("-").partition("=")
        if key not in opts:
            raise SystemExit(f"unknown option {arg}; options: {', '.join(opts)}")
        opts[key] = value
    lengths = [int(v) for v in opts["lengths"].split(",")]
    batch, channels, state = int(opts["batch"]), int(opts["channels"]), int(opts["state"])
    threads = int(opts["threads"]) or __import__("torch").get_num_threads()
    print(f"selective scan fwd+bwd, B={batch} D={channels} N={state}, fp32, {threads} threads")
    print(f"{'L':>6} {'chunked s':>10} {'sequential s':>13} {'speedup':>8} {'chunked MB':>11} {'sequential MB':>14}")
    rows = []
    for length in lengths:
        row = {}
        for method in ("chunked", "sequential"):
            repeats = 3 if method == "chunked" else (2 if length <= 1024 else 1)
            out = subprocess.run([sys.executable, __file__, "--child", method, str(batch), str(length),
                                  str(channels), str(state), str(repeats), str(threads)],
                                 capture_output=True, text=True, check=True)
            row[method] = json.loads(out.stdout.strip().splitlines()[-1])
        c, s = row["chunked"], row["sequential"]
        print(f"{length:>6} {c['seconds']:>10.3f} {s['seconds']:>13.3f} {s['seconds'] / c['seconds']:>7.1f}x "
              f"{c['peak_mb']:>11.0f} {s['peak_mb']:>14.0f}", flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        method, *nums = sys.argv[2:]
        print(json.dumps(measure(method, *map(int, nums))))
    else:
        main(sys.argv[1:])
