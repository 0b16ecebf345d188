"""The four ops the models call. Each one chooses its implementation here, in one place.

    attention(qkv, rope, n_head, n_kv_head, kv_cache=None, layer=0, start_pos=0) -> y (B, T, H·Dh)
    rms_norm(x, weight, eps=1e-5, backend="auto", out_dtype=None)                 -> y, x's shape
    swiglu(gate_up)                                                               -> silu(gate) * up
    cross_entropy(logits, targets, ignore_index=-1)                               -> mean loss, fp32

Which implementation runs:

    op             torch.compile     CPU (C kernels built)             CUDA       elsewhere
    attention      formula + sdpa    training: attention_cpu (C/bf16)   sdpa       sdpa (fp32 on CPU)
    rms_norm       formula           fused_cpu (C)                      Triton     PyTorch custom op
    swiglu         formula           fused_cpu (C)                      PyTorch    PyTorch
    cross_entropy  F.cross_entropy   fused_cpu (C), with autograd       PyTorch    PyTorch

Under torch.compile every op is the plain formula: Dynamo cannot trace the ctypes calls into the C
kernels, and Inductor fuses the formulas with their neighbours itself. rms_norm's backend ("auto",
"triton" or "torch", see backend.py) forces Triton or PyTorch; the C kernels run only on "auto".
Everything here takes and returns ordinary tensors with autograd; the implementations live in
fused_cpu.py (C), attention_cpu.py, rmsnorm.py and rmsnorm_triton.py.

Shapes: B batch, T time, H query heads, K key/value heads (K divides H), Dh head dim, F the MLP's
hidden width, N rows, V classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinykernels import attention_cpu, fused_cpu, rmsnorm
from tinykernels.backend import use_triton

# ---------------------------------------------------------------------------------- attention


def apply_rotary(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """x (B, T, n, Dh) rotated by position, returned in fp32; rope (T, 1, Dh/2, 2) holds the cos and
    sin of each position x frequency (model_llama.rotary_table).

    Dimensions (2j, 2j+1) are the real and imaginary parts of one complex number, multiplied by
    e^(i·position·frequency_j)."""
    if torch.compiler.is_compiling():
        # Inductor cannot generate code for complex numbers; the same product in real arithmetic
        # fuses into one kernel with its neighbours.
        re, im = x.float().unflatten(-1, (-1, 2)).unbind(-1)
        cos, sin = rope.float().unbind(-1)
        return torch.stack([re * cos - im * sin, im * cos + re * sin], dim=-1).flatten(-2)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, T, n, Dh/2) complex64
    return torch.view_as_real(pairs * torch.view_as_complex(rope.float())).flatten(-2)


def attention(qkv: torch.Tensor, rope: torch.Tensor, n_head: int, n_kv_head: int, kv_cache=None,
              layer: int = 0, start_pos: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Causal self-attention with rotary positions: softmax(q·kᵀ / sqrt(Dh), causal) · v per head.

    qkv (B, T, (H + 2K)·Dh) holds every query head, then every key head, then every value head;
    query head h reads key/value head h // (H / K). rope (T, 1, Dh/2, 2) is the rotary table at
    positions start_pos..start_pos+T-1. With kv_cache (tinykernels.decode.KVCache), the rotated keys and
    values are stored at those positions and the queries attend to everything cached so far.
    mask (B, 1, T, T_keys) bool, True where a query may see a key, replaces the causal mask: for a
    batch of left-padded prompts, whose rope is then per row, (B, T, 1, Dh/2, 2).
    -> y (B, T, H·Dh), token-major, as the output projection reads it."""
    if kv_cache is None and mask is None and attention_cpu.usable(qkv, qkv.size(1)):
        # CPU training: rotary, attention and their backwards in fused kernels, about 2x (bf16)
        # and 3x (fp32) faster than sdpa at these sizes (attention_cpu.py says why)
        return attention_cpu.causal_attention(qkv, rope[:, 0], n_head, n_kv_head)
    B, T, _ = qkv.shape
    H, K = n_head, n_kv_head
    Dh = qkv.size(-1) // (H + 2 * K)
    # split, not slicing: its backward concatenates the gradients instead of zero-filling
    # a full-size buffer per slice
    qk, v = qkv.view(B, T, H + 2 * K, Dh).split([H + K, K], dim=2)
    # CPU attention runs in fp32, also under autocast: PyTorch's CPU flash kernel is faster in fp32
    # than in bf16 at these head sizes (fwd+bwd 12.4 against 15.4 ms per layer, 14M model).
    # Elsewhere the compute dtype.
    attn_dtype = torch.float32 if qkv.device.type == "cpu" else v.dtype
    q, k = apply_rotary(qk, rope).to(attn_dtype).split([H, K], dim=2)  # q and k in one pass
    # (B, T, n, Dh) -> (B, n, T, Dh) views; sdpa takes strided inputs, so no copies here.
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.to(attn_dtype).transpose(1, 2)
    causal = mask is None
    if kv_cache is not None:
        k, v = kv_cache.update(layer, start_pos, k, v)
        if causal and T == 1:
            causal = False  # one new query may see every cached position
        elif causal and start_pos > 0:
            # sdpa's is_causal aligns the mask top-left; a chunk after a prefix needs bottom-right.
            causal = False
            mask = torch.ones(T, start_pos + T, dtype=torch.bool, device=qkv.device).tril(start_pos)
    # autocast would cast fp32 q, k, v back to bf16 for sdpa: keep the dtype chosen above
    with torch.autocast(qkv.device.type, enabled=False):
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=K != H)
    # sdpa returns (B, H, T, Dh) laid out as (B, T, H, Dh), so this reshape is a view on CPU.
    return y.transpose(1, 2).reshape(B, T, H * Dh)


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
