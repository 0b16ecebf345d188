"""The selective scan as a custom op: one graph node for torch.compile, Triton or PyTorch inside.

Shapes: B batch, L time, D channels, N state size, NC chunks.

    y, last_state = selective_scan(x, dt, A, B, C, backend="auto")

x, dt (B, L, D) with dt > 0 (after softplus); A (D, N), negative; B, C (B, L, N). Returns y (B, L, D)
in x's dtype and the state after the last step (B, D, N, fp32), for generation to carry on from.
The D skip and the gate stay outside, in plain PyTorch, where the compiler can fuse them.

torch.compile sees `tinyhelen::selective_scan` as one opaque node with a known output shape
(register_fake), so its data-dependent loops never break the graph. The op's own backward is a
second op that gets only the inputs and the chunk-start states: everything else is recomputed.
"""

from __future__ import annotations

import math

import torch

from tinykernels import scan_chunked
from tinykernels.backend import use_triton

TORCH_CHUNK_ELEMENTS = 600_000  # CPU path: aim for (Q, B, N, D) chunk buffers of about 2.4 MB, see below
TRITON_CHUNK = 16  # Triton: a (16, BD, N) tile of states fits in registers


def torch_chunk(batch: int, channels: int, n: int) -> int:
    """Steps per chunk on the PyTorch path: the power of two (1 ... 64) that makes one (Q, B, N, D)
    buffer closest to TORCH_CHUNK_ELEMENTS. Longer chunks mean fewer Python-level calls, but the
    chunk's few buffers must stay in cache: measured (one thread, 32 MB L3), Q = 32 is best at
    B=4, D=256, N=16 (bench_scan) and Q = 8 at B=8, D=672, N=16 (bench_mamba's Mamba-1), where
    Q = 32 was 1.6x slower. States kept for backward: (L / Q, B, D, N)."""
    return 2 ** min(6, max(0, round(math.log2(TORCH_CHUNK_ELEMENTS / (batch * channels * n)))))


def _impl(x: torch.Tensor, A: torch.Tensor, backend: str):
    if use_triton(x, backend):
        from tinykernels import scan_triton  # imported here: triton may be missing or interpreted
        return scan_triton, TRITON_CHUNK
    return scan_chunked, torch_chunk(x.shape[0], x.shape[2], A.shape[1])


@torch.library.custom_op("tinyhelen::selective_scan", mutates_args=())
def _scan_op(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    module, chunk = _impl(x, A, backend)
    y, last, states = module.scan_forward(x, dt, A, B, C, chunk)
    return y.to(x.dtype), last, states


@_scan_op.register_fake
def _(x, dt, A, B, C, backend):
    batch, length, channels = x.shape
    n = A.shape[1]
    n_chunks = math.ceil(length / _impl(x, A, backend)[1])
    return (x.new_empty(batch, length, channels), x.new_empty(batch, channels, n, dtype=torch.float32),
            x.new_empty(batch, n_chunks, channels, n, dtype=torch.float32))


@torch.library.custom_op("tinyhelen::selective_scan_backward", mutates_args=())
def _scan_backward_op(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                      C: torch.Tensor, states: torch.Tensor, gy: torch.Tensor, g_last: torch.Tensor,
                      backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                             torch.Tensor]:
    module, chunk = _impl(x, A, backend)
    grads = module.scan_backward(x, dt, A, B, C, states, gy, g_last, chunk)
    return tuple(g.to(like.dtype) for g, like in zip(grads, (x, dt, A, B, C)))


@_scan_backward_op.register_fake
def _(x, dt, A, B, C, states, gy, g_last, backend):
    return tuple(torch.empty_like(t) for t in (x, dt, A, B, C))


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, backend = inputs
    ctx.save_for_backward(x, dt, A, B, C, output[2])
    ctx.mark_non_differentiable(output[2])
    ctx.backend = backend


def _backward(ctx, gy, g_last, _g_states):
    x, dt, A, B, C, states = ctx.saved_tensors
    # Autograd hands None for an output nobody used; the op needs tensors.
    gy = torch.zeros_like(x) if gy is None else gy
    g_last = torch.zeros_like(states[:, 0]) if g_last is None else g_last
    grads = _scan_backward_op(x, dt, A, B, C, states, gy, g_last, ctx.backend)
    return (*grads, None)


torch.library.register_autograd("tinyhelen::selective_scan", _backward, setup_context=_setup_context)


def selective_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """y (B, L, D), last state (B, D, N): see the module docstring."""
    y, last, _ = _scan_op(x, dt, A, B, C, backend)
    return y, last
