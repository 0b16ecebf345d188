"""Three of the ops the models call. Each one chooses its implementation here, in one place.

    rms_norm(x, weight, eps=1e-5, backend="auto", out_dtype=None)    -> y, x's shape
    swiglu(gate_up)                                                  -> silu(gate) * up
    cross_entropy(logits, targets, ignore_index=-1)                  -> mean loss, fp32

Which implementation runs:

    op             torch.compile     CPU (C kernels built)             CUDA       elsewhere
    rms_norm       formula           fused_cpu (C)                      Triton     PyTorch custom op
    swiglu         formula           fused_cpu (C)                      PyTorch    PyTorch
    cross_entropy  F.cross_entropy   fused_cpu (C), with autograd       PyTorch    PyTorch

The Llama's attention is written out in model_llama.py (Attention.forward): rotary + sdpa (fp32 on
CPU), and for CPU training, behind one branch there, the fused kernels of attention_cpu.py.

Under torch.compile every op is the plain formula: Dynamo cannot trace the ctypes calls into the C
kernels, and Inductor fuses the formulas with their neighbours itself. rms_norm's backend ("auto",
"triton" or "torch", see backend.py) forces Triton or PyTorch; the C kernels run only on "auto".
Everything here takes and returns ordinary tensors with autograd; the implementations live in
fused_cpu.py (C), rmsnorm.py and rmsnorm_triton.py.

Shapes: F the MLP's hidden width, N rows, V classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinykernels import fused_cpu, rmsnorm
from tinykernels.backend import use_triton

# ---------------------------------------------------------------------------------- RMSNorm


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5, backend: str = "auto",
             out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x / sqrt(mean(x²) + eps) * weight over the last dimension of x (..., D); statistics in fp32.

    The result is in out_dtype; by default x's dtype, except under CPU autocast, where it is the
    autocast dtype: every norm in these models feeds a matmul, which would cast it anyway, and the C
    kernel rounds once on the way out instead of in a separate pass."""
    if out_dtype is None:
        autocast = x.is_cpu and torch.is_autocast_enabled("cpu")
        out_dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype
    if use_triton(x, backend):
        return rmsnorm.rms_norm_op(x, weight, eps, "triton", out_dtype)[0]
    if torch.compiler.is_compiling():
        return rmsnorm.rms_norm_reference(x, weight, eps).to(out_dtype)
    fused = backend == "auto" and fused_cpu.applies(x, out_dtype)
    if not torch.is_grad_enabled():
        # Without autograd the custom op buys nothing: the C kernel directly, else PyTorch's own op,
        # whose steps run in C++ (8 us a call against 21 for the custom op and 11 for the formula in
        # Python); PyTorch's op would promote a bf16 x with an fp32 weight, so mixed dtypes take the formula.
        if fused:
            return fused_cpu.rms_norm_forward(x.reshape(-1, x.shape[-1]).contiguous(), weight, eps,
                                              out_dtype)[0].view(x.shape)
        if x.dtype == weight.dtype == out_dtype:
            return F.rms_norm(x, (x.size(-1),), weight, eps)
        return rmsnorm.rms_norm_reference(x, weight, eps).to(out_dtype)
    return rmsnorm.rms_norm_op(x, weight, eps, "c" if fused else "torch", out_dtype)[0]


# ---------------------------------------------------------------------------------- SwiGLU


class SwiGLUProduct(torch.autograd.Function):
    """silu(gate) * up for gate_up = [gate | up] (..., 2F), with a backward written out.

    On CPU both directions are single fused passes (fused_cpu.c; the backward recomputes the sigmoid
    rather than saving it). Elsewhere, PyTorch ops: autograd's own version would save silu(gate) and
    both halves, run two multiplications and silu's backward, then concatenate the two half
    gradients into a new (..., 2F) tensor; here both halves are written straight into one buffer,
    three passes over F-wide tensors instead of five."""

    @staticmethod
    def forward(ctx, gate_up: torch.Tensor) -> torch.Tensor:
        ctx.fused = fused_cpu.applies(gate_up)
        if ctx.fused:
            ctx.save_for_backward(gate_up)
            return fused_cpu.swiglu_forward(gate_up.contiguous())
        gate, up = gate_up.chunk(2, dim=-1)
        activated = F.silu(gate)
        ctx.save_for_backward(gate_up, activated)
        return activated * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if ctx.fused:
            return fused_cpu.swiglu_backward(grad, ctx.saved_tensors[0].contiguous())
        gate_up, activated = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        grad_gate_up = torch.empty_like(gate_up)
        grad_gate, grad_up = grad_gate_up.chunk(2, dim=-1)
        torch.mul(grad, activated, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return grad_gate_up


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up = [gate | up] (..., 2F) -> (..., F)."""
    if torch.compiler.is_compiling():
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up
    if torch.is_grad_enabled():
        return SwiGLUProduct.apply(gate_up)
    if fused_cpu.applies(gate_up):  # no autograd: skip the Function's overhead
        return fused_cpu.swiglu_forward(gate_up.contiguous())
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)


# ---------------------------------------------------------------------------------- cross-entropy


class FusedCrossEntropy(torch.autograd.Function):
    """On CPU the forward pass also computes the gradient, softmax - onehot, in one fused pass per
    row (fused_cpu.c), and the backward only scales it: autograd through F.cross_entropy would make
    six more passes over the (N, V) logits (fp32 copy, log-softmax, zero-fill, scatter, log-softmax
    backward, cast back). Rows whose target is negative score 0 and get a zero gradient."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses, grad = fused_cpu.cross_entropy_forward(logits.contiguous(), targets)
        count = (targets >= 0).sum()
        ctx.save_for_backward(grad, count)
        return losses.sum() / count  # 0 / 0 = nan when every target is ignored, as in PyTorch

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad, count = ctx.saved_tensors
        # a Python float: scaled in fp32 before the one rounding to a bf16 grad's dtype
        return grad * float(grad_loss / count), None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """Mean cross-entropy over the rows of logits (N, V) whose target (N,) is not ignore_index, in
    fp32 whatever the logits' dtype (fp32 or bf16). The mean is over the scored rows only, so a loss
    mask (targets of -1) changes the denominator as well as the sum; nan if no row is scored."""
    if torch.is_grad_enabled() and fused_cpu.applies(logits):
        # the kernel skips every negative target; F.cross_entropy would refuse all but ignore_index
        stray = (targets < 0) & (targets != ignore_index)
        if bool(stray.any()):
            raise ValueError(f"targets must be class ids or ignore_index={ignore_index}, got "
                             f"{targets[stray][:5].tolist()}")
        if ignore_index >= 0:
            targets = targets.masked_fill(targets == ignore_index, -1)
        return FusedCrossEntropy.apply(logits, targets)
    return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index)
