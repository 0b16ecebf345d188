"""Mamba-2's scan by state-space duality: chunked, and almost all of it matmuls (fast on CPU).

Shapes: B batch, L time, H heads, P head dim, G groups (heads share B and C within a group),
N state size, Q chunk length, NC = ceil(L / Q) chunks.

Mamba-2's decay is one scalar per head and step, a_t = exp(dt_t * A), so inside a chunk the output
is a masked "attention" y_i = sum_{j<=i} (C_i . B_j) * exp(a_{j+1} + ... + a_i) * dt_j x_j: a (Q, Q)
matrix per head, built from a cumulative sum and applied with matmuls. Across chunks only the
state (H, P, N) at each chunk boundary is carried, by a recurrence over NC steps. Cost is linear in
L (Q^2 per chunk), and every exp is of a sum of non-positive terms, so nothing overflows.

Autograd differentiates through it (the saved tensors are per chunk, (Q, Q) per head: small).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _segment_sums(a: torch.Tensor) -> torch.Tensor:
    """a (..., Q) -> S (..., Q, Q) with S[i, j] = a[j+1] + ... + a[i] for j <= i and -inf above the
    diagonal, so exp(S) is the causal decay matrix. Summing the masked terms directly, rather than
    subtracting two long cumulative sums, keeps small differences exact."""
    q = a.shape[-1]
    strictly_below = torch.ones(q, q, dtype=torch.bool, device=a.device).tril(-1)
    terms = a[..., :, None].expand(*a.shape, q).masked_fill(~strictly_below, 0.0)  # [k, j] = a_k if k > j
    sums = terms.cumsum(dim=-2)
    return sums.masked_fill(~strictly_below.logical_or(torch.eye(q, dtype=torch.bool, device=a.device)),
                            float("-inf"))


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, L, H, P); dt (B, L, H) > 0; A (H,) < 0; B, C (B, L, G, N).
    Returns y (B, L, H, P) without the D skip, and the final state (B, H, P, N). fp32 math."""
    dtype = x.dtype
    x, dt, A, B, C = (t.float() for t in (x, dt, A, B, C))
    batch, length, heads, p = x.shape
    groups, n = B.shape[-2:]
    pad = (-length) % chunk
    if pad:  # padded steps have dt = 0: decay 1, input 0, so they change nothing
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    nc = x.shape[1] // chunk
    xs = (x * dt[..., None]).reshape(batch, nc, chunk, heads, p)
    Bh = B.repeat_interleave(heads // groups, dim=2).reshape(batch, nc, chunk, heads, n)
    Ch = C.repeat_interleave(heads // groups, dim=2).reshape(batch, nc, chunk, heads, n)
    a = (dt * A).reshape(batch, nc, chunk, heads).permute(0, 3, 1, 2)  # (B, H, NC, Q) log-decays
    a_cum = a.cumsum(dim=-1)

    # 1. Inside each chunk: the masked, decayed (Q, Q) mixing.
    mixing = torch.einsum("bclhn,bcshn->bhcls", Ch, Bh) * torch.exp(_segment_sums(a))
    y = torch.einsum("bhcls,bcshp->bclhp", mixing, xs)

    # 2. What each chunk adds to the state at its own end.
    to_end = torch.exp(a_cum[..., -1:] - a_cum)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bh, to_end, xs)

    # 3. The state entering each chunk: a recurrence over chunks, NC steps.
    chunk_decay = torch.exp(a_cum[..., -1])  # (B, H, NC)
    state = x.new_zeros(batch, heads, p, n)
    entering = []
    for c in range(nc):
        entering.append(state)
        state = chunk_decay[:, :, c, None, None] * state + chunk_states[:, c]
    entering = torch.stack(entering, dim=1)  # (B, NC, H, P, N)

    # 4. The entering state, decayed to each step and read out by C.
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Ch, entering, torch.exp(a_cum))
    return y.reshape(batch, nc * chunk, heads, p)[:, :length].to(dtype), state
