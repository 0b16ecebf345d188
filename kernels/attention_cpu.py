"""Causal self-attention for CPU training: rotary, attention and their backwards from batched
matmuls plus the fused kernels of fused_cpu.c.

    y = causal_attention(qkv, rope, n_head, n_kv_head)    qkv (B, T, (H + 2K) Dh) -> y (B, T, H Dh)
    q, k, v = rotary_to_heads(qkv, rope, n_head, n_kv_head)   rotated, head-major, with autograd

Why not PyTorch's scaled_dot_product_attention in bf16: on CPU it is a flash-attention kernel whose
inner products are small GEMM calls at Dh = 42, about 13-16 ms forward + backward per layer of the
14M model at batch 8 x 256 (rotary included), against about 8 here. At these lengths the whole (T, T) score matrix fits
in cache, so here the scores come from one batched matmul (in bf16 on AMX under autocast), the
causal softmax and its backward are single fused passes, and the backward runs four more batched
matmuls on the saved probabilities instead of recomputing them. The price is memory: the
probabilities, (B, H, T, T) per layer, are kept for the backward, so this path is used only up to
MAX_T positions (the model falls back to sdpa beyond, and for generation).

Grouped-query attention without repeating keys: with heads ordered (K, G) (query head h uses
key/value head h // G), the G query heads of a group are stacked along time, so queries (B·K, G·T,
Dh) meet keys (B·K, T, Dh) in one matmul, and the backward's products sum over the group by
themselves.

In fp32 the batched matmuls run at fp32 speed and this is no faster than the flash kernel (15 ms
per layer each, equal within noise in a full training step), so fp32 training keeps sdpa and takes
only rotary_to_heads from here.

Shapes: B batch, T time, H query heads, K key/value heads, G = H / K, Dh head dim.
"""

from __future__ import annotations

import torch

from kernels import fused_cpu

MAX_T = 512  # (B, H, T, T) probabilities per layer: 8 x 8 x 512^2 in bf16 = 32 MB


def usable(x: torch.Tensor, T: int) -> bool:
    """Whether this module applies: CPU training (autograd on, not compiling) up to MAX_T.
    Without autograd (validation, generation's prefill) the model keeps PyTorch's fp32 attention,
    the same arithmetic as its one-token decoding step."""
    return T <= MAX_T and torch.is_grad_enabled() and fused_cpu.applies(x)


class CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, rope: torch.Tensor, n_head: int, n_kv_head: int) -> torch.Tensor:
        B, T, _ = qkv.shape
        H, K = n_head, n_kv_head
        q, k, v = fused_cpu.rotary_to_heads(qkv.contiguous(), rope, H, K)
        Dh = q.shape[-1]
        queries = q.view(B * K, H // K * T, Dh)
        keys, values = k.view(B * K, T, Dh), v.view(B * K, T, Dh)
        probs = fused_cpu.causal_softmax_(torch.bmm(queries, keys.transpose(1, 2)), T, Dh ** -0.5)
        y = torch.bmm(probs, values)  # (B·K, G·T, Dh) = (B, H, T, Dh)
        ctx.save_for_backward(queries, keys, values, probs, rope)
        ctx.shape = (B, T, H, K, Dh)
        return y.view(B, H, T, Dh).transpose(1, 2).reshape(B, T, H * Dh)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        queries, keys, values, probs, rope = ctx.saved_tensors
        B, T, H, K, Dh = ctx.shape
        grad_y = grad_y.to(queries.dtype).view(B, T, H, Dh).transpose(1, 2).reshape(queries.shape)
        grad_values = torch.bmm(probs.transpose(1, 2), grad_y)
        grad_scores = fused_cpu.causal_softmax_backward_(probs, torch.bmm(grad_y, values.transpose(1, 2)),
                                                         T, Dh ** -0.5)
        grad_queries = torch.bmm(grad_scores, keys)
        grad_keys = torch.bmm(grad_scores.transpose(1, 2), queries)
        grad_qkv = fused_cpu.rotary_from_heads(grad_queries.view(B, H, T, Dh), grad_keys.view(B, K, T, Dh),
                                               grad_values.view(B, K, T, Dh), rope)
        return grad_qkv, None, None, None


class RotaryToHeads(torch.autograd.Function):
    """qkv (B, T, (H + 2K) Dh) -> q (B, H, T, Dh), k, v (B, K, T, Dh), contiguous, q and k rotated:
    the fp32 path's input to scaled_dot_product_attention, in one pass each way instead of
    rotary, split, casts and (backward) concatenation."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, rope: torch.Tensor, n_head: int, n_kv_head: int):
        ctx.save_for_backward(rope)
        return fused_cpu.rotary_to_heads(qkv.contiguous(), rope, n_head, n_kv_head)

    @staticmethod
    def backward(ctx, grad_q, grad_k, grad_v):
        (rope,) = ctx.saved_tensors
        dtype = grad_q.dtype
        grads = [g.to(dtype).contiguous() for g in (grad_q, grad_k, grad_v)]
        return fused_cpu.rotary_from_heads(*grads, rope), None, None, None


def rotary_to_heads(qkv: torch.Tensor, rope: torch.Tensor, n_head: int, n_kv_head: int):
    """RotaryToHeads with autograd. rope: (T, Dh/2, 2) fp32."""
    return RotaryToHeads.apply(qkv, rope.contiguous(), n_head, n_kv_head)


def causal_attention(qkv: torch.Tensor, rope: torch.Tensor, n_head: int, n_kv_head: int) -> torch.Tensor:
    """qkv (B, T, (H + 2K) Dh) from the projection -> attention output (B, T, H Dh), qkv's dtype.
    rope: (T, Dh/2, 2) fp32 (cos, sin) for positions 0..T-1."""
    return CausalAttention.apply(qkv, rope.contiguous(), n_head, n_kv_head)
