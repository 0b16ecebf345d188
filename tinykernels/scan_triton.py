"""The selective scan as Triton kernels (see scan_reference.py for the maths).

Shapes: B batch, L time, D channels, N state size, T steps per chunk, BD channels per program.

One program owns one sequence and BD channels, and walks along time one chunk of T steps at a time
with its (BD, N) state in registers. Within a chunk the recurrence h_t = a_t h_{t-1} + v_t is an
associative scan over the (T, BD, N) tile (composing two steps is again a step), so the chunk is
done in parallel; the state carried from the previous chunk is folded in afterwards. The forward
pass writes the state at the start of every chunk, (B, NC, D, N); the backward pass walks the
chunks in reverse, recomputes each chunk's states from that, and runs the gradient recurrence
G_t = C_t gy_t + a_{t+1} G_{t+1} as a reversed scan.

dB and dC sum over channels, which several programs own, and dA sums over the batch: each program
writes its own partial sums and PyTorch adds them up afterwards, so results do not depend on the
order programs finish in (no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 16
BLOCK_D = 16


@triton.jit
def _compose(a_first, b_first, a_then, b_then):
    # Applying h -> a_first h + b_first, then h -> a_then h + b_then.
    return a_first * a_then, a_then * b_first + b_then


@triton.jit
def _load_chunk(x_ptr, dt_ptr, B_ptr, C_ptr, A, b, c, L, D, N, d, n, t,
                T: tl.constexpr):
    rows = b * L + c * T + t                                   # (T,)
    in_time = (c * T + t) < L
    td = in_time[:, None] & (d < D)[None, :]
    tn = in_time[:, None] & (n < N)[None, :]
    # Steps past the end load dt = 0, so they are identity steps (a = 1, v = 0).
    x = tl.load(x_ptr + rows[:, None] * D + d[None, :], mask=td, other=0.0)
    dt = tl.load(dt_ptr + rows[:, None] * D + d[None, :], mask=td, other=0.0)
    Bc = tl.load(B_ptr + rows[:, None] * N + n[None, :], mask=tn, other=0.0)
    Cc = tl.load(C_ptr + rows[:, None] * N + n[None, :], mask=tn, other=0.0)
    a = tl.exp(dt[:, :, None] * A[None, :, :])                 # (T, BD, N)
    v = (dt * x)[:, :, None] * Bc[:, None, :]
    return rows, td, x, dt, Bc, Cc, a, v


@triton.jit
def _scan_fwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, y_ptr, states_ptr, last_ptr,
                     L, D, N, n_chunks,
                     T: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr):
    b = tl.program_id(0)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    n = tl.arange(0, BN)
    t = tl.arange(0, T)
    dn = (d < D)[:, None] & (n < N)[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn, other=0.0)
    h = tl.zeros((BD, BN), dtype=tl.float32)
    for c in range(n_chunks):
        tl.store(states_ptr + ((b * n_chunks + c) * D + d[:, None]) * N + n[None, :], h, mask=dn)
        rows, td, x, dt, Bc, Cc, a, v = _load_chunk(x_ptr, dt_ptr, B_ptr, C_ptr, A, b, c, L, D, N,
                                                    d, n, t, T)
        a_run, v_run = tl.associative_scan((a, v), 0, _compose)
        hs = a_run * h[None, :, :] + v_run                    # every state of the chunk
        y = tl.sum(hs * Cc[:, None, :], axis=2)
        tl.store(y_ptr + rows[:, None] * D + d[None, :], y, mask=td)
        h = tl.sum(tl.where((t == T - 1)[:, None, None], hs, 0.0), axis=0)
    tl.store(last_ptr + (b * D + d[:, None]) * N + n[None, :], h, mask=dn)


@triton.jit
def _scan_bwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, states_ptr, gy_ptr, glast_ptr,
                     gx_ptr, gdt_ptr, gA_ptr, gB_ptr, gC_ptr,
                     L, D, N, n_chunks, n_dblocks,
                     T: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr):
    b = tl.program_id(0)
    blk = tl.program_id(1)
    d = blk * BD + tl.arange(0, BD)
    n = tl.arange(0, BN)
    t = tl.arange(0, T)
    dn = (d < D)[:, None] & (n < N)[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn, other=0.0)
    g = tl.load(glast_ptr + (b * D + d[:, None]) * N + n[None, :], mask=dn, other=0.0)
    gA = tl.zeros((BD, BN), dtype=tl.float32)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        h0 = tl.load(states_ptr + ((b * n_chunks + c) * D + d[:, None]) * N + n[None, :], mask=dn,
                     other=0.0)
        rows, td, x, dt, Bc, Cc, a, v = _load_chunk(x_ptr, dt_ptr, B_ptr, C_ptr, A, b, c, L, D, N,
                                                    d, n, t, T)
        gy = tl.load(gy_ptr + rows[:, None] * D + d[None, :], mask=td, other=0.0)
        a_run, v_run = tl.associative_scan((a, v), 0, _compose)
        hs = a_run * h0[None, :, :] + v_run
        # The decay of the next step, a_{t+1}: one more load of dt, shifted by a step. The last
        # row of the chunk gets the gradient arriving from the next chunk instead.
        nxt = (c * T + t + 1 < L) & (t + 1 < T)
        dt_next = tl.load(dt_ptr + (rows + 1)[:, None] * D + d[None, :],
                          mask=nxt[:, None] & (d < D)[None, :], other=0.0)
        a_next = tl.exp(dt_next[:, :, None] * A[None, :, :])
        direct = gy[:, :, None] * Cc[:, None, :] + tl.where((t == T - 1)[:, None, None], g[None], 0.0)
        _, G = tl.associative_scan((a_next, direct), 0, _compose, reverse=True)
        decayed = hs - v                                        # a_t * h_{t-1}
        gu = tl.sum(G * Bc[:, None, :], axis=2)
        tl.store(gx_ptr + rows[:, None] * D + d[None, :], gu * dt, mask=td)
        gdt = gu * x + tl.sum(G * A[None, :, :] * decayed, axis=2)
        tl.store(gdt_ptr + rows[:, None] * D + d[None, :], gdt, mask=td)
        gA += tl.sum(G * dt[:, :, None] * decayed, axis=0)
        part = (rows[:, None] * n_dblocks + blk) * N + n[None, :]
        tn = ((c * T + t) < L)[:, None] & (n < N)[None, :]
        tl.store(gB_ptr + part, tl.sum(G * (dt * x)[:, :, None], axis=1), mask=tn)
        tl.store(gC_ptr + part, tl.sum(hs * gy[:, :, None], axis=1), mask=tn)
        g = tl.sum(tl.where((t == 0)[:, None, None], a * G, 0.0), axis=0)   # into h_0 = last chunk's end
    tl.store(gA_ptr + (b * D + d[:, None]) * N + n[None, :], gA, mask=dn)


def _prepare(*tensors):
    return [t.float().contiguous() for t in tensors]


def scan_forward(x, dt, A, B, C, chunk: int = CHUNK):
    """Same contract as scan_chunked.scan_forward: y (B, L, D), last (B, D, N), states (B, NC, D, N)."""
    x, dt, A, B, C = _prepare(x, dt, A, B, C)
    batch, length, channels = x.shape
    n = A.shape[1]
    n_chunks = triton.cdiv(length, chunk)
    y = torch.empty_like(x)
    states = x.new_empty(batch, n_chunks, channels, n)
    last = x.new_empty(batch, channels, n)
    grid = (batch, triton.cdiv(channels, BLOCK_D))
    _scan_fwd_kernel[grid](x, dt, A, B, C, y, states, last, length, channels, n, n_chunks,
                           T=chunk, BD=BLOCK_D, BN=triton.next_power_of_2(n))
    return y, last, states


def scan_backward(x, dt, A, B, C, states, gy, g_last, chunk: int = CHUNK):
    """Same contract as scan_chunked.scan_backward: (gx, gdt, gA, gB, gC)."""
    x, dt, A, B, C, states = _prepare(x, dt, A, B, C, states)
    batch, length, channels = x.shape
    n = A.shape[1]
    gy = torch.zeros_like(x) if gy is None else gy.float().contiguous()
    g_last = x.new_zeros(batch, channels, n) if g_last is None else g_last.float().contiguous()
    n_dblocks = triton.cdiv(channels, BLOCK_D)
    gx, gdt = torch.empty_like(x), torch.empty_like(x)
    gA = x.new_empty(batch, channels, n)
    gB = x.new_empty(batch, length, n_dblocks, n)
    gC = x.new_empty(batch, length, n_dblocks, n)
    _scan_bwd_kernel[(batch, n_dblocks)](
        x, dt, A, B, C, states, gy, g_last, gx, gdt, gA, gB, gC,
        length, channels, n, states.shape[1], n_dblocks,
        T=chunk, BD=BLOCK_D, BN=triton.next_power_of_2(n))
    return gx, gdt, gA.sum(0), gB.sum(2), gC.sum(2)
