"""The selective scan, one time step after another: the oracle the fast paths are tested against.

Shapes: B batch, L time, D channels, N state size.

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t * B_t        (B, D, N), h_0 = 0
    y_t = sum_n C_t[n] * h_t[:, :, n]                        (B, D)

It is written for clarity, not speed: autograd keeps every (B, D, N) state of every step alive, so
memory grows with L * D * N, and the Python loop runs L times.
"""

from __future__ import annotations

import torch


def selective_scan_reference(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                             C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x, dt (B, L, D); A (D, N); B, C (B, L, N) -> y (B, L, D), last state (B, D, N). fp32 math."""
    x, dt, A, B, C = (t.float() for t in (x, dt, A, B, C))
    batch, length, channels = x.shape
    h = x.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t, :, None] * A)
        h = decay * h + (dt[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1), h


def ssd_reference(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2's scan step by step. x (B, L, H, P); dt (B, L, H); A (H,); B, C (B, L, G, N) ->
    y (B, L, H, P) without the D skip, last state (B, H, P, N). H heads share B, C in G groups."""
    x, dt, A, B, C = (t.float() for t in (x, dt, A, B, C))
    batch, length, heads, p = x.shape
    per_group = heads // B.shape[2]
    B, C = B.repeat_interleave(per_group, dim=2), C.repeat_interleave(per_group, dim=2)
    h = x.new_zeros(batch, heads, p, B.shape[-1])
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append((h * C[:, t, :, None, :]).sum(-1))
    return torch.stack(ys, dim=1), h
