"""Fused RMSNorm as Triton kernels. Shapes: M rows (every position of every sequence), D features.

Forward: one program per row reads it once, writes y = x * rstd * w and caches rstd (M,) for the
backward. Backward: each program takes a contiguous run of rows, reads each row once, writes dx and
adds gy * x_hat into its own weight-gradient partial sum; PyTorch adds the partials up, so dw is
the same from run to run (no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_fwd_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, D, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    tl.store(rstd_ptr + row, rstd)
    tl.store(y_ptr + row * D + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_bwd_kernel(gy_ptr, x_ptr, w_ptr, rstd_ptr, gx_ptr, gw_part_ptr, M, D, rows_per_program,
                    BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    gw = tl.zeros((BLOCK,), dtype=tl.float32)
    first = pid * rows_per_program
    for row in range(first, tl.minimum(first + rows_per_program, M)):
        x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        gy = tl.load(gy_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        x_hat = x * rstd
        wg = gy * w
        # d/dx of x * rstd(x): the direct term minus the part that flows through rstd.
        gx = rstd * (wg - x_hat * (tl.sum(wg * x_hat, axis=0) / D))
        tl.store(gx_ptr + row * D + cols, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        gw += gy * x_hat
    tl.store(gw_part_ptr + pid * D + cols, gw, mask=mask)


def rms_norm_forward(x: torch.Tensor, weight: torch.Tensor, eps: float):
    """x (M, D) contiguous -> y (M, D) in x's dtype, rstd (M,) fp32."""
    M, D = x.shape
    y = torch.empty_like(x)
    rstd = torch.empty(M, device=x.device, dtype=torch.float32)
    _rms_fwd_kernel[(M,)](x, weight, y, rstd, D, eps, BLOCK=triton.next_power_of_2(D))
    return y, rstd


def rms_norm_backward(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor):
    """(gx (M, D), gw (D,) fp32)."""
    M, D = x.shape
    programs = min(M, 4 * torch.cuda.get_device_properties(x.device).multi_processor_count
                   if x.is_cuda else 8)
    rows_per_program = triton.cdiv(M, programs)
    programs = triton.cdiv(M, rows_per_program)
    gx = torch.empty_like(x)
    gw_part = torch.empty(programs, D, device=x.device, dtype=torch.float32)
    _rms_bwd_kernel[(programs,)](gy, x, weight, rstd, gx, gw_part, M, D, rows_per_program,
                                 BLOCK=triton.next_power_of_2(D))
    return gx, gw_part.sum(0)
