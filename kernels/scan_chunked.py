"""The selective scan in PyTorch (the CPU path): chunked, linear in length, recomputing backwards.

Shapes: B batch, L time, D channels, N state size, Q steps in a chunk, NC = ceil(L / Q) chunks.
Inside this file tensors are time-major, (L, B, ...), so that one time step is one contiguous slab.

The recurrence h_t = a_t * h_{t-1} + v_t with a_t = exp(dt_t * A) and v_t = dt_t * x_t * B_t
unrolls over a stretch of Q steps that starts from h_0 to

    h_t = E_t * (e_0 * h_0 + sum_{s<=t} v_s / E_s),   E_t = exp(A * (Delta_t - Delta_Q)),
    Delta_t = dt_1 + ... + dt_t,   e_0 = exp(A * Delta_Q),

so a whole stretch costs a few elementwise passes over (Q, B, D, N) and one running sum, instead of
Q separate little steps. Measured from the stretch's end, 1/E <= 1 and E >= 1 grows towards its
start: a stretch ("piece") is kept short enough that |A| * sum(dt) stays under SPAN (exp(60) ~ 1e26,
far from float32's 3e38). A single step needs no bound at all (E = 1 there). That is the only reason
a chunk is ever split into several pieces; at the usual dt and A a chunk is one piece.

Memory: the forward pass keeps the state at the start of each chunk, (NC, B, D, N), Q times less
than every state. The backward pass recomputes a chunk's states from it and walks back through it,
so the largest temporary is a few (Q, B, D, N) buffers, whatever L is.

Gradients, with G_t the total gradient of the loss with respect to h_t:
    G_t = C_t gy_t + a_{t+1} G_{t+1}   -> the same running-sum trick, run backwards in time
    gx_t = dt_t sum_n G_t B_t,  gB_t = sum_d G_t dt_t x_t,  gC_t = sum_d gy_t h_t
    gdt_t = x_t sum_n G_t B_t + sum_n A G_t a_t h_{t-1},  gA = sum_{b,t} dt_t G_t a_t h_{t-1}
"""

from __future__ import annotations

import math

import torch

SPAN = 60.0  # largest |A| * sum(dt) inside one piece (see the module docstring)


def _step_bounds(dt: torch.Tensor, A: torch.Tensor) -> list[float]:
    """Per time step, the largest |A| * dt over batch and channels: (L, B, D) -> L floats."""
    return (dt * A.abs().amax(dim=1)).amax(dim=(1, 2)).tolist()


def _pieces(bounds: list[float], start: int, stop: int) -> list[tuple[int, int]]:
    """Split [start, stop) greedily into stretches whose summed bounds stay within SPAN (a single
    step is always a valid piece)."""
    pieces, begin, total = [], start, 0.0
    for t in range(start, stop):
        if t > begin and total + bounds[t] > SPAN:
            pieces.append((begin, t))
            begin, total = t, 0.0
        total += bounds[t]
    pieces.append((begin, stop))
    return pieces


class _Workspace:
    """Big (Q, B, D, N) buffers reused by every piece of one call: allocating them afresh for each
    piece costs more than the arithmetic on CPU (page faults on every large allocation)."""

    def __init__(self, q: int, batch: int, channels: int, n: int, like: torch.Tensor):
        self.shape = (q, batch, channels, n)
        self.E = like.new_empty(self.shape)
        self.H = like.new_empty((q + 1, batch, channels, n))
        self.J = like.new_empty(self.shape)
        self.K = like.new_empty(self.shape)

    def take(self, q: int):
        return self.E[:q], self.H[:q + 1], self.J[:q], self.K[:q]


def _piece_states(ws, h0, x, dt, A, B):
    """E (Q, B, D, N) and H (Q + 1, B, D, N) with H[0] = e_0 * h0 and h_t = E[t-1] * H[t]."""
    E, H, _, _ = ws.take(x.shape[0])
    delta = dt.cumsum(0)
    torch.mul((delta - delta[-1])[..., None], A, out=E).exp_()
    torch.mul(torch.exp(delta[-1][..., None] * A), h0, out=H[0])
    torch.mul((dt * x)[..., None], B[:, :, None, :], out=H[1:])
    H[1:].div_(E)
    for t in range(1, H.shape[0]):  # a running sum over time; torch.cumsum is ~10x slower on CPU here
        H[t] += H[t - 1]
    return E, H


def _piece_forward(ws, h0, x, dt, A, B, C):
    E, H = _piece_states(ws, h0, x, dt, A, B)
    h = H[1:].mul_(E)
    y = torch.matmul(h, C[..., None]).squeeze(-1)
    return y, h[-1].clone()


def _piece_backward(ws, h0, x, dt, A, B, C, gy, g_end):
    """Gradients for one piece, given gy (Q, B, D) and g_end, the gradient reaching its last state
    from later time. Returns the gradient for h0 too, which is the previous piece's g_end."""
    E, H = _piece_states(ws, h0, x, dt, A, B)
    _, _, J, Kbuf = ws.take(x.shape[0])
    torch.mul(E, gy[..., None], out=J)          # E_t gy_t, then E_t C_t gy_t
    gC = torch.mul(J, H[1:], out=Kbuf).sum(dim=2)  # sum_d gy_t h_t, as h_t = E_t H_t
    J.mul_(C[:, :, None, :])
    J[-1] += g_end                              # E = 1 at the piece's end
    for t in range(J.shape[0] - 2, -1, -1):     # J_t = E_t * G_t, built from the end
        J[t] += J[t + 1]
    g_h0 = J[0] * torch.exp(dt.sum(0)[..., None] * A)
    K = torch.mul(J, H[:-1], out=H[:-1])        # = G_t * a_t * h_{t-1}, the decay's share
    gdt = torch.mul(K, A, out=Kbuf).sum(dim=-1)                         # sum_n A K_t
    gA = K.mul_(dt[..., None]).sum(dim=(0, 1))                          # sum_{t,b} dt_t K_t
    G = J.div_(E)
    gu = torch.matmul(G, B[..., None]).squeeze(-1)                      # sum_n G_t B_t
    gB = torch.matmul((dt * x)[:, :, None, :], G).squeeze(-2)           # sum_d G_t dt_t x_t
    return g_h0, gu * dt, gdt + gu * x, gA, gB, gC


def _time_major(*tensors):
    return [t.float().transpose(0, 1).contiguous() for t in tensors]


def scan_forward(x, dt, A, B, C, chunk: int = 64):
    """x, dt (B, L, D); A (D, N); B, C (B, L, N) -> y (B, L, D) fp32, last state (B, D, N),
    chunk-start states (B, NC, D, N) for scan_backward."""
    x, dt, B, C = _time_major(x, dt, B, C)
    A = A.float()
    length, batch, channels = x.shape
    n_chunks = math.ceil(length / chunk)
    bounds = _step_bounds(dt, A)
    y = x.new_empty(length, batch, channels)
    states = x.new_empty(n_chunks, batch, channels, A.shape[1])
    h = x.new_zeros(batch, channels, A.shape[1])
    ws = _Workspace(min(chunk, length), batch, channels, A.shape[1], x)
    for k in range(n_chunks):
        states[k] = h
        for s, e in _pieces(bounds, k * chunk, min(length, (k + 1) * chunk)):
            y[s:e], h = _piece_forward(ws, h, x[s:e], dt[s:e], A, B[s:e], C[s:e])
    return y.transpose(0, 1).contiguous(), h, states.transpose(0, 1).contiguous()


def scan_backward(x, dt, A, B, C, states, gy, g_last, chunk: int = 64):
    """Gradients (gx, gdt, gA, gB, gC) of scan_forward, from its saved chunk-start states, the
    gradient of y and that of the last state (either may be None)."""
    x, dt, B, C = _time_major(x, dt, B, C)
    A = A.float()
    length, batch, channels = x.shape
    gy = x.new_zeros(x.shape) if gy is None else gy.float().transpose(0, 1).contiguous()
    g = x.new_zeros(batch, channels, A.shape[1]) if g_last is None else g_last.float().clone()
    states = states.transpose(0, 1)
    bounds = _step_bounds(dt, A)
    gx, gdt = torch.empty_like(x), torch.empty_like(x)
    gB, gC = torch.empty_like(B), torch.empty_like(C)
    gA = torch.zeros_like(A)
    ws = _Workspace(min(chunk, length), batch, channels, A.shape[1], x)
    for k in reversed(range(states.shape[0])):
        pieces = _pieces(bounds, k * chunk, min(length, (k + 1) * chunk))
        starts = [states[k]]
        for s, e in pieces[:-1]:  # rare: an extreme dt split this chunk; recompute the piece starts
            starts.append(_piece_forward(ws, starts[-1], x[s:e], dt[s:e], A, B[s:e], C[s:e])[1])
        for (s, e), h0 in zip(reversed(pieces), reversed(starts)):
            g, gx[s:e], gdt[s:e], gA_piece, gB[s:e], gC[s:e] = _piece_backward(
                ws, h0, x[s:e], dt[s:e], A, B[s:e], C[s:e], gy[s:e], g)
            gA += gA_piece
    return tuple(t.transpose(0, 1).contiguous() for t in (gx, gdt)) + (gA,) + tuple(
        t.transpose(0, 1).contiguous() for t in (gB, gC))
