"""RMSNorm as a custom op with a hand-written backward: y = x / sqrt(mean(x^2) + eps) * weight over
the last dimension. tinykernels.rms_norm (ops.py) decides when it runs and with which implementation.

Shapes: (..., D) in, same out; M = the number of rows (all leading dimensions together).

    y, rstd = rms_norm_op(x, weight, eps, impl, out_dtype)      impl: "triton" | "c" | "torch"

"triton" runs rmsnorm_triton.py (CUDA, or Triton's interpreter), "c" the fused CPU kernels of
fused_cpu.c, "torch" PyTorch ops. Statistics are always fp32. The forward op also returns rstd (M,),
which the backward op reuses instead of recomputing it. rms_norm_reference is the plain formula:
the oracle for the tests, and what runs under torch.compile.
"""

from __future__ import annotations

import torch

from tinykernels import fused_cpu

IMPLEMENTATIONS = ("triton", "c", "torch")


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Plain PyTorch, autograd through it: the oracle for the tests."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def _torch_forward(x2, weight, eps):
    # mean(x^2) as a row dot product: one read of x, no (M, D) temporary for x^2
    xf = x2.float()
    rstd = torch.rsqrt(torch.linalg.vecdot(xf, xf).div_(xf.size(-1)).add_(eps))
    return (xf * rstd[:, None] * weight.float()).to(x2.dtype), rstd


def _torch_backward(gy2, x2, weight, rstd):
    """gx = rstd * (g - x_hat * mean(g * x_hat)) with g = gy * weight; gw = sum over rows of gy * x_hat.

    Written with row dot products (vecdot) and one addcmul, so that every step is a single pass
    over an (M, D) tensor: about half the time of autograd through the composite formula on CPU."""
    x_hat = x2.float() * rstd[:, None]
    grad_weight = (gy2 * x_hat).sum(0)
    g = gy2 * weight.float()
    mean_g_xhat = torch.linalg.vecdot(g, x_hat).div_(x_hat.size(-1))
    gx = torch.addcmul(g, x_hat, mean_g_xhat[:, None], value=-1).mul_(rstd[:, None])
    return gx.to(x2.dtype), grad_weight


@torch.library.custom_op("tinyhelen::rms_norm", mutates_args=())
def rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float, impl: str,
                out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    if impl == "triton":
        from tinykernels import rmsnorm_triton
        y, rstd = rmsnorm_triton.rms_norm_forward(x2, weight.contiguous(), eps)
    elif impl == "c":
        y, rstd = fused_cpu.rms_norm_forward(x2, weight, eps, out_dtype)
    else:
        y, rstd = _torch_forward(x2, weight, eps)
    return y.to(out_dtype).reshape(x.shape), rstd


@rms_norm_op.register_fake
def _(x, weight, eps, impl, out_dtype):
    return torch.empty_like(x, dtype=out_dtype), x.new_empty(x.numel() // x.shape[-1], dtype=torch.float32)


@torch.library.custom_op("tinyhelen::rms_norm_backward", mutates_args=())
def _rms_norm_backward_op(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor,
                          impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    gy2 = gy.reshape(x2.shape).contiguous()
    if impl == "triton":
        from tinykernels import rmsnorm_triton
        gx, gw = rmsnorm_triton.rms_norm_backward(gy2.to(x.dtype), x2, weight.contiguous(), rstd)
    elif impl == "c" and fused_cpu.dtype_ok(gy.dtype):
        gx, gw = fused_cpu.rms_norm_backward(gy2, x2, weight, rstd)
    else:
        gx, gw = _torch_backward(gy2.to(x.dtype), x2, weight, rstd)
    return gx.reshape(x.shape), gw.to(weight.dtype)


@_rms_norm_backward_op.register_fake
def _(gy, x, weight, rstd, impl):
    return torch.empty_like(x), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, weight, eps, impl, _out_dtype = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.impl = impl


def _backward(ctx, gy, _g_rstd):
    x, weight, rstd = ctx.saved_tensors
    gx, gw = _rms_norm_backward_op(gy, x, weight, rstd, ctx.impl)
    return gx, gw, None, None, None


torch.library.register_autograd("tinyhelen::rms_norm", _backward, setup_context=_setup_context)
