"""The kernels against their oracles: the chunked CPU scan, SSD, RMSNorm, the custom ops, Triton."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tinykernels
from tinykernels import scan_chunked

REPO = Path(__file__).resolve().parents[1]


def scan_inputs(batch, length, channels, n, seed=0, dt_scale=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, channels, generator=g)
    dt = torch.rand(batch, length, channels, generator=g) * dt_scale + 1e-3
    A = -torch.rand(channels, n, generator=g) * 8 - 0.1
    B = torch.randn(batch, length, n, generator=g)
    C = torch.randn(batch, length, n, generator=g)
    return [t.requires_grad_() for t in (x, dt, A, B, C)]


def assert_rel_close(got, want, tol=2e-5, name=""):
    err = ((got - want).abs().max() / want.abs().max().clamp(min=1e-6)).item()
    assert err < tol, f"{name}: relative error {err:.2e}"


def reference_grads(inputs, gy, g_last):
    y, h = tinykernels.selective_scan_reference(*inputs)
    return y, h, torch.autograd.grad((y * gy).sum() + (h * g_last).sum(), inputs)


@pytest.mark.parametrize("chunk", [5, 64])
def test_chunked_scan_matches_sequential_reference(chunk):
    inputs = scan_inputs(2, 37, 7, 3)
    gy, g_last = torch.randn(2, 37, 7), torch.randn(2, 7, 3)
    y_ref, h_ref, want = reference_grads(inputs, gy, g_last)
    plain = [t.detach() for t in inputs]
    y, h, states = scan_chunked.scan_forward(*plain, chunk=chunk)
    assert states.shape == (2, -(-37 // chunk), 7, 3)  # one saved state per chunk, not per step
    assert_rel_close(y, y_ref, name="y")
    assert_rel_close(h, h_ref, name="last state")
    got = scan_chunked.scan_backward(*plain, states, gy, g_last, chunk=chunk)
    for name, g, w in zip("x dt A B C".split(), got, want):
        assert_rel_close(g, w, name=name)


def test_chunked_scan_survives_extreme_decays():
    """dt * |A| summed over a chunk far past float32's exp range: the chunk is split into pieces
    (a single step with decay exp(-400) included) and still matches the reference."""
    inputs = scan_inputs(2, 40, 6, 4, seed=3)
    with torch.no_grad():
        inputs[1][0, 7, 2] = 50.0
        inputs[1][1, 20:30] = 4.0
    gy, g_last = torch.randn(2, 40, 6), torch.randn(2, 6, 4)
    y_ref, h_ref, want = reference_grads(inputs, gy, g_last)
    plain = [t.detach() for t in inputs]
    y, h, states = scan_chunked.scan_forward(*plain, chunk=16)
    assert torch.isfinite(y).all()
    assert_rel_close(y, y_ref, name="y")
    got = scan_chunked.scan_backward(*plain, states, gy, g_last, chunk=16)
    for name, g, w in zip("x dt A B C".split(), got, want):
        assert_rel_close(g, w, name=name)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunked_scan_step_recurrence_at_chunk_edges(chunk):
    """The chunk loop hands the state forward and the state gradient back across chunk edges: one-step
    chunks, a chunk longer than the sequence, no gradient for the last state, and decays that underflow
    to exactly 0 (dt * |A| ~ 1e4) in the middle of a chunk must all give the reference's numbers."""
    inputs = scan_inputs(2, 11, 5, 3, seed=4)
    with torch.no_grad():
        inputs[1][1, 4] = 2000.0
    gy = torch.randn(2, 11, 5)
    y_ref, _ = tinykernels.selective_scan_reference(*inputs)
    want = torch.autograd.grad((y_ref * gy).sum(), inputs)
    plain = [t.detach() for t in inputs]
    y, _, states = scan_chunked.scan_forward(*plain, chunk=chunk)
    assert_rel_close(y, y_ref, name="y")
    got = scan_chunked.scan_backward(*plain, states, gy, None, chunk=chunk)
    for name, g, w in zip("x dt A B C".split(), got, want):
        assert torch.isfinite(g).all(), name
        assert_rel_close(g, w, name=name)


def test_selective_scan_op_autograd_and_outputs():
    inputs = scan_inputs(3, 70, 5, 4, seed=1)  # 70 steps: full 32-step chunks and a partial one
    gy, g_last = torch.randn(3, 70, 5), torch.randn(3, 5, 4)
    y_ref, h_ref, want = reference_grads(inputs, gy, g_last)
    y, h = tinykernels.selective_scan(*inputs, backend="torch")
    assert_rel_close(y, y_ref)
    got = torch.autograd.grad((y * gy).sum() + (h * g_last).sum(), inputs)
    for name, g, w in zip("x dt A B C".split(), got, want):
        assert_rel_close(g, w, name=name)
    # Only y used: the op's backward gets no gradient for the state and must cope.
    y, _ = tinykernels.selective_scan(*inputs, backend="torch")
    got = torch.autograd.grad((y * gy).sum(), inputs)
    y_ref, _ = tinykernels.selective_scan_reference(*inputs)
    want = torch.autograd.grad((y_ref * gy).sum(), inputs)
    assert_rel_close(got[1], want[1], name="dt, y only")


def test_ssd_matches_step_by_step_recurrence():
    g = torch.Generator().manual_seed(0)
    batch, length, heads, p, groups, n = 2, 45, 4, 3, 2, 5  # 45 = 2 full chunks of 16 and a partial
    x = torch.randn(batch, length, heads, p, generator=g)
    dt = torch.rand(batch, length, heads, generator=g) + 0.01
    A = -torch.rand(heads, generator=g) * 4
    B = torch.randn(batch, length, groups, n, generator=g)
    C = torch.randn(batch, length, groups, n, generator=g)
    inputs = [t.requires_grad_() for t in (x, dt, A, B, C)]
    gy = torch.randn(batch, length, heads, p)
    y_ref, h_ref = tinykernels.ssd_reference(*inputs)
    want = torch.autograd.grad((y_ref * gy).sum() + h_ref.sum(), inputs)
    y, h = tinykernels.ssd_chunked(*inputs, chunk=16)
    got = torch.autograd.grad((y * gy).sum() + h.sum(), inputs)
    assert_rel_close(y, y_ref, name="y")
    assert_rel_close(h, h_ref, name="state")
    for name, a, b in zip("x dt A B C".split(), got, want):
        assert_rel_close(a, b, name=name)


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_op_matches_reference(dtype, backend):
    """The custom op's forward and hand-written backward, in fp32 and with bf16 inputs: the PyTorch
    path ("torch") and on CPU the fused C kernels ("auto", where a compiler is found)."""
    x = torch.randn(4, 9, 33).to(dtype).requires_grad_()
    w = (torch.rand(33) + 0.5).requires_grad_()
    gy = torch.randn_like(x)
    want_y = tinykernels.rms_norm_reference(x, w, 1e-6)
    want = torch.autograd.grad((want_y.float() * gy.float()).sum(), (x, w))
    y = tinykernels.rms_norm(x, w, 1e-6, backend)
    got = torch.autograd.grad((y.float() * gy.float()).sum(), (x, w))
    assert y.dtype == dtype
    tol = {} if dtype == torch.float32 else {"tol": 2e-2}
    assert_rel_close(y.float(), want_y.float(), **tol)
    for a, b in zip(got, want):
        assert_rel_close(a.float(), b.float(), **tol)


def test_custom_ops_compile_without_graph_breaks():
    torch._dynamo.reset()
    x, dt, A, B, C = (t.detach() for t in scan_inputs(2, 20, 6, 3))
    w = torch.rand(6) + 0.5

    def f(x, dt, A, B, C, w):
        y, h = tinykernels.selective_scan(x, dt, A, B, C)
        return tinykernels.rms_norm(y, w).sum() + h.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")  # fullgraph: a break would raise
    args = [t.clone().requires_grad_() for t in (x, dt, A, B, C, w)]
    got = torch.autograd.grad(compiled(*args), args)
    args2 = [t.clone().requires_grad_() for t in (x, dt, A, B, C, w)]
    want = torch.autograd.grad(f(*args2), args2)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_backend_switch_is_checked():
    x = torch.zeros(1)
    assert tinykernels.use_triton(x, "torch") is False
    with pytest.raises(ValueError, match="backend"):
        tinykernels.use_triton(x, "cuda")
    if not tinykernels.interpreting():
        assert tinykernels.use_triton(x, "auto") is False  # CPU tensors take the PyTorch path
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            tinykernels.use_triton(x, "triton")


def test_kernels_work_without_triton():
    """On a machine without triton the package imports and the PyTorch path runs."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # any `import triton` now fails
        "import importlib.util as u; u.find_spec = (lambda f: (lambda n, *a: None if n == 'triton' else f(n, *a)))(u.find_spec)\n"
        "import torch, tinykernels\n"
        "x = torch.randn(2, 5, 8, requires_grad=True)\n"
        "y = tinykernels.rms_norm(x, torch.ones(8)); y.sum().backward()\n"
        "dt = torch.rand(2, 5, 8); A = -torch.rand(8, 3); B = torch.randn(2, 5, 3)\n"
        "y, h = tinykernels.selective_scan(x, dt, A, B, B); y.sum().backward()\n"
        "try:\n    tinykernels.selective_scan(x, dt, A, B, B, backend='triton')\n"
        "except RuntimeError as e:\n    print('refused:', 'missing' in str(e))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "refused: True" in out.stdout


def test_triton_kernels_in_interpreter():
    """The Triton RMSNorm and scan kernels, run by Triton's CPU interpreter in a fresh process."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "tests/triton_interp_check.py"], cwd=REPO, capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all triton checks passed" in out.stdout
