"""Causal self-attention for CPU training: rotary, attention and their backwards from the fused
kernels of fused_cpu.c / attention_cpu.c, with autograd.

    y = causal_attention(qkv, rope, n_head, n_kv_head)    qkv (B, T, (H + 2K) Dh) -> y (B, T, H Dh)

Why not PyTorch's scaled_dot_product_attention: on CPU it is a flash-attention kernel whose inner
products are small GEMM calls at Dh = 42, about 13-21 ms forward + backward per layer of the 14M
model at batch 8 x 256, in fp32 or bf16. At these lengths the whole (T, T) score matrix of one head
fits in cache, so neither path here tiles like flash attention:
  * fp32: attention_cpu.c, one C kernel per direction that keeps each head's scores in L2 and runs
    every product (causal blocks only) through one register-blocked microkernel, about 3x sdpa
    (7 against 21 ms per layer). It saves the log-sum-exp of each row and recomputes the
    probabilities in the backward.
  * bf16 (under autocast): the scores come from one batched bf16 matmul on AMX, the causal softmax
    and its backward are single fused passes, and the backward runs four more batched matmuls on the
    saved probabilities instead of recomputing them (about 8 against 13-16 ms per layer). The price
    is memory: the probabilities, (B, H, T, T) per layer, are kept for the backward.
Both are used only up to MAX_T positions (the model falls back to sdpa beyond, and for generation).

Grouped-query attention without repeating keys: with heads ordered (K, G) (query head h uses
key/value head h // G), the bf16 path stacks the G query heads of a group along time, so queries
(B·K, G·T, Dh) meet keys (B·K, T, Dh) in one matmul, and the backward's products sum over the group
by themselves; the fp32 kernel gives each thread one key/value head and its G query heads.

Shapes: B batch, T time, H query heads, K key/value heads, G = H / K, Dh head dim.
"""

from __future__ import annotations

import torch

from tinykernels import fused_cpu

MAX_T = 512  # bf16 keeps (B, H, T, T) probabilities per layer: 8 x 8 x 512^2 in bf16 = 32 MB


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


class CausalAttentionFp32(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, rope: torch.Tensor, n_head: int, n_kv_head: int) -> torch.Tensor:
        q, k, v = fused_cpu.rotary_to_heads(qkv.contiguous(), rope, n_head, n_kv_head)
        y, lse = fused_cpu.attention_forward(q, k, v)
        ctx.save_for_backward(q, k, v, y, lse, rope)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        q, k, v, y, lse, rope = ctx.saved_tensors
        dq, dk, dv = fused_cpu.attention_backward(q, k, v, y, lse, grad_y.float().contiguous())
        return fused_cpu.rotary_from_heads(dq, dk, dv, rope), None, None, None


def causal_attention(qkv: torch.Tensor, rope: torch.Tensor, n_head: int, n_kv_head: int) -> torch.Tensor:
    """qkv (B, T, (H + 2K) Dh) from the projection -> attention output (B, T, H Dh), qkv's dtype
    (fp32 or bf16). rope: (T, Dh/2, 2) fp32 (cos, sin) for positions 0..T-1."""
    function = CausalAttentionFp32 if qkv.dtype == torch.float32 else CausalAttention
    return function.apply(qkv, rope.contiguous(), n_head, n_kv_head)
