"""Run the Triton kernels on CPU in Triton's interpreter and compare them with the PyTorch oracles.

    TRITON_INTERPRET=1 python tests/triton_interp_check.py

A script, not a test module: TRITON_INTERPRET must be set before triton is first imported, and in
a pytest process something else may already have imported it. tests/test_kernels.py runs this in a
fresh process. Prints one "ok ..." line per check and exits 1 on the first mismatch. Shapes are
small but awkward: non-powers of two everywhere, a last time chunk that is only partly filled, a
last channel block that is only partly filled.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") != "1":
    sys.exit("set TRITON_INTERPRET=1 before running this script")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import tinykernels  # noqa: E402
from tinykernels import scan_triton  # noqa: E402  (imports triton, now in interpreter mode)


def close(name, got, want, tol=2e-5):
    err = ((got - want).abs().max() / want.abs().max().clamp(min=1e-6)).item()
    if not err < tol:
        print(f"FAIL {name}: relative error {err:.2e}")
        sys.exit(1)
    print(f"ok {name} (relative error {err:.1e})")


def check_scan():
    torch.manual_seed(0)
    batch, length, channels, n = 1, scan_triton.CHUNK + 3, scan_triton.BLOCK_D + 2, 5
    x = torch.randn(batch, length, channels, requires_grad=True)
    dt = (torch.rand(batch, length, channels) * 0.5 + 0.01).requires_grad_()
    A = (-torch.rand(channels, n) * 4 - 0.5).requires_grad_()
    B = torch.randn(batch, length, n, requires_grad=True)
    C = torch.randn(batch, length, n, requires_grad=True)
    gy, g_last = torch.randn(batch, length, channels), torch.randn(batch, channels, n)
    inputs = (x, dt, A, B, C)

    y_ref, h_ref = tinykernels.selective_scan_reference(*inputs)
    want = torch.autograd.grad((y_ref * gy).sum() + (h_ref * g_last).sum(), inputs)
    y, h = tinykernels.selective_scan(*inputs, backend="triton")  # the custom op, Triton inside
    got = torch.autograd.grad((y * gy).sum() + (h * g_last).sum(), inputs)
    close("scan y", y, y_ref)
    close("scan last state", h, h_ref)
    for name, g, w in zip(("x", "dt", "A", "B", "C"), got, want):
        close(f"scan grad {name}", g, w)


def check_rms_norm():
    torch.manual_seed(1)
    x = torch.randn(3, 5, 37, requires_grad=True)  # 15 rows of 37 features
    w = (torch.rand(37) + 0.5).requires_grad_()
    gy = torch.randn_like(x)
    want_y = tinykernels.rms_norm_reference(x, w, 1e-5)
    want = torch.autograd.grad((want_y * gy).sum(), (x, w))
    y = tinykernels.rms_norm(x, w, 1e-5, backend="triton")
    got = torch.autograd.grad((y * gy).sum(), (x, w))
    close("rmsnorm y", y, want_y)
    close("rmsnorm grad x", got[0], want[0])
    close("rmsnorm grad weight", got[1], want[1])
    again = torch.autograd.grad((tinykernels.rms_norm(x, w, 1e-5, backend="triton") * gy).sum(), (x, w))
    if not torch.equal(again[1], got[1]):
        print("FAIL rmsnorm weight gradient differs between two identical runs")
        sys.exit(1)
    print("ok rmsnorm weight gradient is bitwise repeatable")


if __name__ == "__main__":
    check_rms_norm()
    check_scan()
    print("all triton checks passed")
