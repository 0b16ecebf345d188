"""The Llama's one-token decoding step, for generation.

    logits = decode_step(model, tokens, cache, pos)     tokens (B,) at position pos -> logits (B, V)

cache is a model_llama.KVCache (read through its attributes kv, k, v, panels and left_pad; this
module does not import model_llama, which imports it).

decode_step is model_llama.Llama.forward on a (B, 1) input written out for speed: a one-token step
is about a hundred small ops, and nn.Module calls and the T axis were a fifth of its time (2.7
against 3.4 ms per step for the 14M model at batch 1). On CPU with fp32 weights every norm, the
rotary + attention of each layer and every SwiGLU are one C call each (fused_cpu.c), and the matmuls
read a copy of the weights packed into 32-column panels for streaming (matmul_cpu.c), about 3x
faster than MKL's few-row products; x + h @ W is then one call that adds in place. Elsewhere (bf16
autocast, CUDA, no C compiler) the same step in PyTorch ops. tests/test_llama.py checks it against
forward().

Shapes: B batch, L layers, H query heads, K key/value heads, Dh head dim, T_max cache length, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinykernels import fused_cpu
from tinykernels.ops import swiglu

BLOCK_WEIGHTS = ("qkv", "out", "gate_up", "down")  # the matrices of a block, in the order they are used


def block_weight(model, layer: int, name: str) -> torch.Tensor:
    """A Llama block's (in, out) matrix by name (BLOCK_WEIGHTS)."""
    block = model.blocks[layer]
    return {"qkv": block.attn.qkv, "out": block.attn.out, "gate_up": block.mlp.gate_up,
            "down": block.mlp.down}[name].weight


def decode_step(model, tokens: torch.Tensor, cache, pos: int) -> torch.Tensor:
    """tokens (B,) at position pos -> next-token logits (B, V); appends their keys and values to
    cache, which must already hold positions 0..pos-1 (written by a forward pass, the prefill).
    Call it without autograd (generate runs it under inference_mode)."""
    c = model.config
    B, H, K, Dh = tokens.size(0), c.n_head, c.n_kv_head, c.n_embd // c.n_head
    x = F.embedding(tokens, model.tok_emb.weight)  # (B, D), fp32 like forward()'s residual stream
    # fp32 residual adds fused into the matmuls; under autocast addmm would round x to bf16
    fuse_residual = not torch.is_autocast_enabled(x.device.type)
    fused = x.dtype == cache.kv[0].dtype == torch.float32 and fused_cpu.applies(x)
    D, eps = c.n_embd, c.norm_eps
    if fused:
        def norm(x, weight):
            return fused_cpu.rms_norm_inference(x, weight, eps)
    else:
        # F.rms_norm, not tinykernels.rms_norm: the same op without autograd, minus 2.5 us of dispatch
        def norm(x, weight):
            return F.rms_norm(x, (D,), weight, eps)
    if fused and fuse_residual:
        # packed on the first step of a generation and kept with its cache: the weights cannot
        # change in the middle of one
        if cache.panels is None:
            cache.panels = decoding_panels(model)
        panels = cache.panels

        def matmul(h, layer, name, residual=None):
            packed, width = panels[layer][name]
            return fused_cpu.few_row_matmul(h, packed, width, residual)
    else:
        def matmul(h, layer, name, residual=None):
            weight = model.lm_head.weight.t() if name == "head" else block_weight(model, layer, name)
            if residual is None:
                return h @ weight
            return torch.addmm(residual, h, weight) if fuse_residual else residual + h @ weight
    left_pad = cache.left_pad
    if fused:
        # the C kernel takes the whole table and each row's padding: it rotates every row at its
        # own position and skips the padding slots
        rope = model.rope_table  # (T_rope, 1, Dh/2, 2)
        if left_pad is not None:
            left_pad = left_pad.to(torch.int64).contiguous()
    elif left_pad is None:
        rope, key_mask = model.rope_table[pos, 0], None  # (Dh/2, 2)
    else:
        # each row at its own position, the padding slots hidden
        rope = model.rope_table[pos - left_pad]  # (B, 1, Dh/2, 2)
        slots = torch.arange(pos + 1, device=tokens.device)
        key_mask = (slots >= left_pad[:, None])[:, None, None]  # (B, 1, 1, pos + 1)
    for i, block in enumerate(model.blocks):
        qkv = matmul(norm(x, block.attn_norm.weight), i, "qkv").view(B, H + 2 * K, Dh)
        if fused:
            y = fused_cpu.decode_attention(qkv.float(), cache.kv[i], rope, pos, K, left_pad)
        else:
            y = _decode_attention(qkv.float(), cache, i, pos, rope, K, key_mask)
        x = matmul(y, i, "out", residual=x)
        gate_up = matmul(norm(x, block.mlp_norm.weight), i, "gate_up")
        x = matmul(swiglu(gate_up), i, "down", residual=x)
    return matmul(norm(x, model.norm.weight), -1, "head")


@torch.no_grad()
def decoding_panels(model) -> list[dict[str, tuple[torch.Tensor, int]]]:
    """Every weight decode_step multiplies by, as (fused_cpu.pack_for_decoding's panels, output
    columns): per layer a dict by name, the head last. A second copy of the weights, as large as
    the model; 13-28 ms for the 14M model, the time of a few decoding steps."""
    def pack(weight):
        return fused_cpu.pack_for_decoding(weight), weight.shape[1]
    panels = [{name: pack(block_weight(model, i, name)) for name in BLOCK_WEIGHTS}
              for i in range(len(model.blocks))]
    return panels + [{"head": pack(model.lm_head.weight.t())}]


def _decode_attention(qkv: torch.Tensor, cache, layer: int, pos: int, rope: torch.Tensor,
                      K: int, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """decode_step's attention in PyTorch ops: qkv (B, H + 2K, Dh) fp32 -> (B, H·Dh). rope (Dh/2, 2),
    or (B, 1, Dh/2, 2) with key_mask (B, 1, 1, pos + 1) for left-padded rows."""
    B, n, Dh = qkv.shape
    H = n - 2 * K
    # Rotate q and k in place: the rotated keys then sit next to the values, and one copy
    # stores both in the cache's (B, 2K, T_max, Dh) layer.
    torch.view_as_complex(qkv[:, :H + K].unflatten(-1, (-1, 2))).mul_(torch.view_as_complex(rope))
    cache.kv[layer][:, :, pos].copy_(qkv[:, H:])
    keys, values = cache.k[layer], cache.v[layer]  # (B, K, T_max, Dh)
    with torch.autocast(qkv.device.type, enabled=False):  # attention in the cache's dtype
        y = F.scaled_dot_product_attention(qkv[:, :H, None].to(keys.dtype), keys[:, :, :pos + 1],
                                           values[:, :, :pos + 1], attn_mask=key_mask, enable_gqa=K != H)
    return y.view(B, H * Dh)
