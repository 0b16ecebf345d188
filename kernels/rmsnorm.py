"""RMSNorm as a custom op: y = x / sqrt(mean(x^2) + eps) * weight over the last dimension.

Shapes: (..., D) in, same out; M = the number of rows (all leading dimensions together).

    y = rms_norm(x, weight, eps, backend="auto")

Triton on CUDA tensors (rmsnorm_triton.py), PyTorch elsewhere; backend="torch"/"triton" forces
one (see backend.py). The PyTorch path is a custom op with a hand-written backward while autograd
records; under torch.compile or without autograd it is the plain formula (rms_norm_reference). Statistics are always fp32; y comes back in x's dtype. The forward op also
returns rstd (M,), which the backward op reuses instead of recomputing it.
"""

from __future__ import annotations

import torch

from kernels import fused_cpu
from kernels.backend import use_triton


def _fused_cpu(x: torch.Tensor, backend: str, out_dtype: torch.dtype | None = None) -> bool:
    """The C kernels of fused_cpu.c run fp32/bf16 CPU tensors on the "auto" backend, where they
    could be built."""
    return backend == "auto" and fused_cpu.applies(x, out_dtype or x.dtype)


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
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float, backend: str,
                 out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    if use_triton(x, backend):
        from kernels import rmsnorm_triton
        y, rstd = rmsnorm_triton.rms_norm_forward(x2, weight.contiguous(), eps)
    elif _fused_cpu(x, backend, out_dtype):
        y, rstd = fused_cpu.rms_norm_forward(x2, weight, eps, out_dtype)
    else:
        y, rstd = _torch_forward(x2, weight, eps)
    return y.to(out_dtype).reshape(x.shape), rstd


@_rms_norm_op.register_fake
def _(x, weight, eps, backend, out_dtype):
    return torch.empty_like(x, dtype=out_dtype), x.new_empty(x.numel() // x.shape[-1], dtype=torch.float32)


@torch.library.custom_op("tinyhelen::rms_norm_backward", mutates_args=())
def _rms_norm_backward_op(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor,
                          backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    gy2 = gy.reshape(x2.shape).contiguous()
    if use_triton(x, backend):
        from kernels import rmsnorm_triton
        gx, gw = rmsnorm_triton.rms_norm_backward(gy2.to(x.dtype), x2, weight.contiguous(), rstd)
    elif _fused_cpu(x, backend, gy.dtype):
        gx, gw = fused_cpu.rms_norm_backward(gy2, x2, weight, rstd)
    else:
        gx, gw = _torch_backward(gy2.to(x.dtype), x2, weight, rstd)
    return gx.reshape(x.shape), gw.to(weight.dtype)


@_rms_norm_backward_op.register_fake
def _(gy, x, weight, rstd, backend):
    return torch.empty_like(x), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, weight, eps, backend, _out_dtype = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.backend = backend


def _backward(ctx, gy, _g_rstd):
    x, weight, rstd = ctx.saved_tensors
    gx, gw = _rms_norm_backward_op(gy, x, weight, rstd, ctx.backend)
    return gx, gw, None, None, None


torch.library.register_autograd("tinyhelen::rms_norm", _backward, setup_context=_setup_context)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5, backend: str = "auto",
             out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """RMSNorm of x (..., D) with weight (D,): see the module docstring. out_dtype (default x's)
    lets a norm whose output feeds a bf16 matmul round once, here, instead of in a separate cast."""
    out_dtype = out_dtype or x.dtype
    if not use_triton(x, backend):
        # Where the custom op buys nothing. Under torch.compile: the plain formula, which Inductor
        # fuses with the ops around it (the op is opaque to Inductor). Without autograd: the C
        # kernel called directly on CPU, else PyTorch's own op, whose steps run in C++ (8 us a call
        # against 21 for the custom op and 11 for the formula in Python); PyTorch's op would promote
        # a bf16 x with an fp32 weight, so mixed dtypes take the formula.
        if torch.compiler.is_compiling():
            return rms_norm_reference(x, weight, eps).to(out_dtype)
        if not torch.is_grad_enabled():
            if _fused_cpu(x, backend, out_dtype):
                return fused_cpu.rms_norm_forward(x.reshape(-1, x.shape[-1]).contiguous(), weight, eps,
                                                  out_dtype)[0].view(x.shape)
            if x.dtype == weight.dtype == out_dtype:
                return torch.nn.functional.rms_norm(x, (x.size(-1),), weight, eps)
            return rms_norm_reference(x, weight, eps).to(out_dtype)
    return _rms_norm_op(x, weight, eps, backend, out_dtype)[0]
