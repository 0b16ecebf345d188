"""A Llama language model written out by hand: RMSNorm, rotary positions, grouped-query attention,
SwiGLU MLP, optional tied head; KV-cached generation; export to and import from `transformers`.

Shapes (used in the comments below):
    B  batch                 T  time (sequence length)     D  model width (n_embd)
    H  query heads           K  key/value heads (K divides H; K < H is grouped-query attention)
    Dh head dim (D // H)     F  FFN hidden width           V  vocabulary
    L  layers

Weight layout. Query, key and value are one D x (H + 2K)·Dh matrix, and SwiGLU's gate and up are
one D x 2F matrix, so each block does two wide matmuls instead of five narrow ones (fewer kernel
launches, better-shaped GEMMs, one weight read per decoding step). Block matrices are stored
(in, out) so that y = x @ W (see Linear for why). Export transposes them and splits them back into
q/k/v_proj and gate/up_proj.
Rotary embeddings pair neighbouring dimensions (2j, 2j+1) of each query/key head, as Meta's
original checkpoints do, and rotate each pair as one complex multiplication. On CPU that is one
vectorised op, about 3x faster than the "rotate half" form (pairs j and j + Dh/2) that
`transformers` uses. The two conventions differ only in the order of the dimensions inside a head,
which attention scores do not depend on, so export and import permute the q/k rows
(pair order (Dh/2, 2) <-> (2, Dh/2)) and the logits stay the same.

CPU kernels. On CPU, RMSNorm, SwiGLU, cross-entropy, rotary and (in training) attention run as
fused C kernels (kernels/fused_cpu.c, built on first use; PyTorch ops where no C compiler is
found): each does in one pass what PyTorch does in several. Under bf16 autocast every norm returns
bf16 for the matmul it feeds, and attention is batched bf16 matmuls plus a fused causal softmax
(kernels/attention_cpu.py), about half the time of PyTorch's CPU flash attention at these sizes; in
fp32 it is one C kernel per direction (kernels/attention_cpu.c), about a third of flash's time.
Under torch.compile the model is written as plain formulas instead (Inductor cannot see into the C
kernels, and fuses the formulas itself).
Generation's one-token step (decode_step) multiplies its few rows by a copy of the weights packed
for streaming (kernels/matmul_cpu.c), about 3x faster than MKL's few-row products on CPU.

Initialisation: every matrix (embedding, projections, head) ~ N(0, init_std), norms at 1, no
biases anywhere. The two projections that write into the residual stream (attention out and MLP
down) are additionally scaled by 1/sqrt(2L), as in GPT-2, so the residual stream's variance does
not grow with depth at initialisation.

    >>> m = Llama(LlamaConfig())            # the paper's "14M"
    >>> m.num_params(), m.num_params(non_embedding=False)
    (14456400, 15800400)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from atomic import atomic_write_bytes
from sampling import sample_next_token
from kernels import attention_cpu, fused_cpu
from kernels.cross_entropy import cross_entropy
from kernels import rms_norm as rms_norm_kernel


@dataclass
class LlamaConfig:
    vocab_size: int = 2000
    n_layer: int = 8
    n_embd: int = 336
    n_head: int = 8
    n_kv_head: int = 8
    ffn_hidden: int = 1344
    max_seq_len: int = 1024
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"head dim n_embd / n_head = {self.n_embd // self.n_head} must be even "
                             "for rotary embeddings")


def rotary_table(head_dim: int, max_seq_len: int, theta: float) -> torch.Tensor:
    """(max_seq_len, 1, Dh/2, 2) float32: cos and sin of position x frequency, for apply_rotary.

    The angles are computed in fp32 exactly as `transformers` computes them, so an exported model
    sees the same rotations. Stored as real pairs rather than complex numbers so that moving the
    model between devices never touches a complex buffer; the middle 1 broadcasts over heads."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    angles = torch.arange(max_seq_len, dtype=torch.int64).float()[:, None] * inv_freq  # (T, Dh/2)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)[:, None]


def apply_rotary(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """x (B, T, n, Dh) rotated by position, returned in fp32; rope (T, 1, Dh/2, 2) from rotary_table.

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


def pairs_to_halves(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of a q or k projection, (n·Dh, in), from our neighbouring-pairs rotary layout
    (each head's rows ordered (Dh/2, 2)) to the rotate-half layout of `transformers` ((2, Dh/2))."""
    return w.unflatten(0, (n_heads, -1, 2)).transpose(1, 2).flatten(0, 2)


def halves_to_pairs(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of pairs_to_halves: rotate-half rows (2, Dh/2) per head -> neighbouring pairs."""
    return w.unflatten(0, (n_heads, 2, -1)).transpose(1, 2).flatten(0, 2)


def residual_matmul(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, fused: bool) -> torch.Tensor:
    """x + h @ weight, as one addmm when fused (2-D x and h)."""
    return torch.addmm(x, h, weight) if fused else x + h @ weight


class Linear(nn.Module):
    """y = x @ weight, no bias, weight stored (in, out), the transpose of nn.Linear's layout.

    Why: decoding multiplies 1..8 rows by every weight matrix, and CPU BLAS (MKL) runs those skinny
    products 10-25% faster against an (in, out) matrix than against nn.Linear's (out, in); training's
    large products are equally fast either way. Export transposes to the (out, in) of `transformers`."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # kernels/rmsnorm.py: Triton on CUDA, the fused C kernels on CPU. Every norm feeds a matmul,
        # so under CPU autocast it returns the matmul's dtype: one rounding here instead of a cast.
        out_dtype = torch.get_autocast_dtype("cpu") if x.is_cpu and torch.is_autocast_enabled("cpu") else None
        return rms_norm_kernel(x, self.weight, self.eps, out_dtype=out_dtype)


class KVCache:
    """Pre-allocated keys and values for every layer: one (L, B, 2K, T_max, Dh) tensor, keys in the
    first K heads and values in the last K, so that a decoding step stores a position's keys and
    values with one copy (decode_step). Allocated on the first write, in the dtype of the keys."""

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int):
        self.shape = (n_layer, batch, 2 * n_kv_head, max_len, head_dim)
        self.n_kv_head = n_kv_head
        self.kv: list[torch.Tensor] = []  # per layer, (B, 2K, T_max, Dh) views of one allocation
        self.k: list[torch.Tensor] = []   # per layer, (B, K, T_max, Dh) views: its keys...
        self.v: list[torch.Tensor] = []   # ...and values
        self.panels: list | None = None   # the weights packed for decoding (Llama.decode_step)

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, K, T, Dh) at positions start..start+T; return all keys/values so far."""
        if not self.kv:
            K = self.n_kv_head
            self.kv = list(torch.empty(self.shape, dtype=k.dtype, device=k.device).unbind(0))
            self.k, self.v = [kv[:, :K] for kv in self.kv], [kv[:, K:] for kv in self.kv]
        T, end = k.size(2), start + k.size(2)
        if end > self.shape[3]:
            raise ValueError(f"KV cache holds {self.shape[3]} positions, asked to write up to {end}")
        self.k[layer].narrow(2, start, T).copy_(k)
        self.v[layer].narrow(2, start, T).copy_(v)
        return self.k[layer].narrow(2, 0, end), self.v[layer].narrow(2, 0, end)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_head, self.n_kv_head = cfg.n_head, cfg.n_kv_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.qkv = Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.n_kv_head) * self.head_dim)
        self.out = Linear(cfg.n_head * self.head_dim, cfg.n_embd)

    def forward(self, x, rope, layer: int = 0, kv_cache: KVCache | None = None, start_pos: int = 0):
        B, T, _ = x.shape
        H, K = self.n_head, self.n_kv_head
        if kv_cache is None and attention_cpu.usable(x, T):
            # CPU training: rotary, attention and their backwards in fused kernels
            # (kernels/attention_cpu.py), about 2x (bf16) and 3x (fp32) faster than sdpa here
            return self.out(attention_cpu.causal_attention(self.qkv(x), rope[:, 0], H, K))
        # split, not slicing: its backward concatenates the gradients instead of zero-filling
        # a full-size buffer per slice
        qk, v = self.qkv(x).view(B, T, H + 2 * K, self.head_dim).split([H + K, K], dim=2)
        # Without the fused path (prefill, compile, no C compiler) CPU attention runs in fp32, also
        # under autocast: PyTorch's CPU flash kernel is faster in fp32 than in bf16 at these head
        # sizes (fwd+bwd 12.4 against 15.4 ms per layer, 14M model). Elsewhere the compute dtype.
        attn_dtype = torch.float32 if x.device.type == "cpu" else v.dtype
        q, k = apply_rotary(qk, rope).to(attn_dtype).split([H, K], dim=2)  # q and k in one pass
        # (B, T, n, Dh) -> (B, n, T, Dh) views; sdpa takes strided inputs, so no copies here.
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.to(attn_dtype).transpose(1, 2)
        mask, causal = None, True
        if kv_cache is not None:
            k, v = kv_cache.update(layer, start_pos, k, v)
            if T == 1:
                causal = False  # one new query may see every cached position
            elif start_pos > 0:
                # sdpa's is_causal aligns the mask top-left; a chunk after a prefix needs bottom-right.
                causal = False
                mask = torch.ones(T, start_pos + T, dtype=torch.bool, device=x.device).tril(start_pos)
        # autocast would cast fp32 q, k, v back to bf16 for sdpa: keep the dtype chosen above
        with torch.autocast(x.device.type, enabled=False):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=K != H)
        # sdpa returns (B, H, T, Dh) laid out as (B, T, H, Dh), so this reshape is a view on CPU.
        return self.out(y.transpose(1, 2).reshape(B, T, H * self.head_dim))


class SwiGLUProduct(torch.autograd.Function):
    """silu(gate) * up for gate_up = [gate | up] (..., 2F), with a backward written out.

    On CPU both directions are single fused passes (kernels/fused_cpu.c; the backward recomputes
    the sigmoid rather than saving it). Elsewhere, PyTorch ops: autograd's own version would save
    silu(gate) and both halves, run two multiplications and silu's backward, then concatenate the
    two half gradients into a new (..., 2F) tensor; here both halves are written straight into one
    buffer, three passes over F-wide tensors instead of five."""

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
    if torch.compiler.is_compiling():  # plain ops, which Inductor fuses with their neighbours
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up
    if torch.is_grad_enabled():
        return SwiGLUProduct.apply(gate_up)
    if fused_cpu.applies(gate_up):  # no autograd: skip the Function's overhead
        return fused_cpu.swiglu_forward(gate_up.contiguous())
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)


class SwiGLU(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_up = Linear(cfg.n_embd, 2 * cfg.ffn_hidden)
        self.down = Linear(cfg.ffn_hidden, cfg.n_embd)

    def forward(self, x):
        return self.down(swiglu(self.gate_up(x)))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, rope, layer: int = 0, kv_cache: KVCache | None = None, start_pos: int = 0):
        x = x + self.attn(self.attn_norm(x), rope, layer, kv_cache, start_pos)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        # nn.Linear's (V, D) layout, the embedding's, so that tying shares one matrix.
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        # Buffers, not parameters, and not saved: they are a pure function of the config.
        self.register_buffer("rope_table", rotary_table(cfg.n_embd // cfg.n_head, cfg.max_seq_len,
                                                          cfg.rope_theta), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        std = self.config.init_std
        for p in self.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
            else:
                p.fill_(1.0)  # RMSNorm gains
        for block in self.blocks:
            block.attn.out.weight.normal_(0.0, std / math.sqrt(2 * self.config.n_layer))
            block.mlp.down.weight.normal_(0.0, std / math.sqrt(2 * self.config.n_layer))

    # ---------------------------------------------------------------- forward
    def hidden_states(self, idx: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0):
        """idx (B, T) -> final-normed hidden states (B, T, D); positions start at start_pos."""
        T = idx.size(1)
        if start_pos + T > self.config.max_seq_len:
            raise ValueError(f"positions {start_pos}..{start_pos + T - 1} exceed max_seq_len "
                             f"{self.config.max_seq_len}")
        rope = self.rope_table[start_pos:start_pos + T]
        x = self.tok_emb(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, i, kv_cache, start_pos)
        return self.norm(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, start_pos: int = 0):
        """idx (B, T) -> (logits (B, T, V), loss). loss is the mean fp32 cross-entropy over the
        positions whose target is not -1, or None without targets. With kv_cache, idx holds the
        tokens at positions start_pos.. and their keys/values are appended to the cache."""
        logits = self.lm_head(self.hidden_states(idx, kv_cache, start_pos))
        loss = None
        if targets is not None:
            loss = cross_entropy(logits.flatten(0, 1), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    # ---------------------------------------------------------------- accounting
    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters; non_embedding leaves out the token embedding and (when untied) the LM head."""
        n = sum(p.numel() for p in self.parameters())  # a tied head is counted once
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward), PaLM convention: 6 per
        matmul weight (the LM head included, tied or not) plus 12·L·H·Dh·T for the attention scores
        and weighted sum, counted as if unmasked (the causal kernel skips about half of it)."""
        c = self.config
        head_dim = c.n_embd // c.n_head
        per_layer = (c.n_embd * (c.n_head + 2 * c.n_kv_head) * head_dim  # qkv
                     + c.n_head * head_dim * c.n_embd                    # out
                     + 3 * c.n_embd * c.ffn_hidden)                      # gate, up, down
        matmul_weights = c.n_layer * per_layer + c.n_embd * c.vocab_size
        return 6.0 * matmul_weights + 12.0 * c.n_layer * c.n_head * head_dim * seq_len

    # ---------------------------------------------------------------- generation
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, eot_id: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """idx (B, T) prompt -> (B, T + n) with n <= max_new_tokens new tokens.

        The prompt is run once (prefill) into a pre-allocated KV cache, then one token per step.
        With eot_id, a row that has produced it is padded with eot_id, and generation stops early
        once every row has. Raises ValueError if T + max_new_tokens exceeds max_seq_len: rotary
        positions are absolute, so cropping the context would mean recomputing the whole cache."""
        B, T = idx.shape
        if T == 0:
            raise ValueError("generate needs a prompt of at least one token")
        if T + max_new_tokens > self.config.max_seq_len:
            raise ValueError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len "
                             f"({self.config.max_seq_len})")
        c = self.config
        # inference_mode rather than no_grad: it skips autograd's view and version bookkeeping,
        # about 8% of a batch-1 decoding step on CPU, where each step is a few hundred small ops.
        with torch.inference_mode():
            cache = KVCache(c.n_layer, B, c.n_kv_head, T + max_new_tokens, c.n_embd // c.n_head)
            out = [idx]
            done = torch.zeros(B, 1, dtype=torch.bool, device=idx.device)
            # Only the last position's logits are needed: the head runs on one row per sequence.
            logits = self.lm_head(self.hidden_states(idx, cache, 0)[:, -1])  # prefill
            for step in range(max_new_tokens):
                nxt = sample_next_token(logits, temperature, top_k, top_p, generator)
                if eot_id is not None:
                    nxt = nxt.masked_fill(done, eot_id)
                    done |= nxt == eot_id
                out.append(nxt)
                if step == max_new_tokens - 1 or (eot_id is not None and bool(done.all())):
                    break
                logits = self.decode_step(nxt[:, 0], cache, T + step)
            tokens = torch.cat(out, dim=1)
        return tokens.clone()  # a normal tensor again, usable later as a training input

    def decode_step(self, tokens: torch.Tensor, cache: KVCache, pos: int) -> torch.Tensor:
        """tokens (B,) at position pos -> next-token logits (B, V); appends their keys and values to
        cache, which must already hold positions 0..pos-1 (written by a forward pass, the prefill).

        The computation of forward() on a (B, 1) input, written out for speed: a one-token step is
        about a hundred small ops, and nn.Module calls and the T axis were a fifth of its time
        (2.7 against 3.4 ms per step for the 14M model at batch 1). Call it without autograd
        (generate runs it under inference_mode); tests/test_llama.py checks it against forward()."""
        c = self.config
        B, H, K, Dh = tokens.size(0), c.n_head, c.n_kv_head, c.n_embd // c.n_head
        x = F.embedding(tokens, self.tok_emb.weight)  # (B, D), fp32 like forward()'s residual stream
        # fp32 residual adds fused into the matmuls; under autocast addmm would round x to bf16
        fuse_residual = not torch.is_autocast_enabled(x.device.type)
        # On CPU with fp32 weights, norms, rotary + attention and SwiGLU are one C call each
        # (kernels/fused_cpu.c); otherwise PyTorch ops (rms_norm directly, not kernels.rms_norm: the
        # same op without autograd, minus 2.5 us of dispatch per call).
        fused = x.dtype == cache.kv[0].dtype == torch.float32 and fused_cpu.applies(x)
        D, eps = c.n_embd, c.norm_eps
        if fused:
            def norm(x, weight):
                return fused_cpu.rms_norm_inference(x, weight, eps)
        else:
            def norm(x, weight):
                return F.rms_norm(x, (D,), weight, eps)
        # Without autocast (fp32 throughout) the matmuls read a copy of the weights packed for
        # streaming (kernels/matmul_cpu.c), about 3x faster than MKL's few-row products, and
        # x + h @ W is one call that adds in place.
        if fused and fuse_residual:
            # packed on the first step of a generation and kept with its cache: the weights cannot
            # change in the middle of one
            if cache.panels is None:
                cache.panels = self._decoding_panels()
            panels = cache.panels

            def matmul(h, layer, name, residual=None):
                packed, width = panels[layer][name]
                return fused_cpu.few_row_matmul(h, packed, width, residual)
        else:
            def matmul(h, layer, name, residual=None):
                weight = self.lm_head.weight.t() if name == "head" else self._block_weight(layer, name)
                return h @ weight if residual is None else residual_matmul(residual, h, weight, fuse_residual)
        rope = self.rope_table[pos, 0]  # (Dh/2, 2)
        for i, block in enumerate(self.blocks):
            qkv = matmul(norm(x, block.attn_norm.weight), i, "qkv").view(B, H + 2 * K, Dh)
            if fused:
                y = fused_cpu.decode_attention(qkv.float(), cache.kv[i], rope, pos, K)
            else:
                y = self._decode_attention(qkv.float(), cache, i, pos, rope)
            x = matmul(y, i, "out", residual=x)
            gate_up = matmul(norm(x, block.mlp_norm.weight), i, "gate_up")
            x = matmul(swiglu(gate_up), i, "down", residual=x)
        return matmul(norm(x, self.norm.weight), -1, "head")

    def _block_weight(self, layer: int, name: str) -> torch.Tensor:
        block = self.blocks[layer]
        return {"qkv": block.attn.qkv, "out": block.attn.out, "gate_up": block.mlp.gate_up,
                "down": block.mlp.down}[name].weight

    @torch.no_grad()
    def _decoding_panels(self) -> list[dict[str, tuple[torch.Tensor, int]]]:
        """Every weight decode_step multiplies by, as (fused_cpu.pack_for_decoding's panels, output
        columns): per layer a dict by name, the head last. A second copy of the weights, as large as
        the model; 13-28 ms for the 14M model, the time of a few decoding steps."""
        def pack(weight):
            return fused_cpu.pack_for_decoding(weight), weight.shape[1]
        panels = [{name: pack(self._block_weight(i, name)) for name in ("qkv", "out", "gate_up", "down")}
                  for i in range(self.config.n_layer)]
        return panels + [{"head": pack(self.lm_head.weight.t())}]

    def _decode_attention(self, qkv: torch.Tensor, cache: KVCache, layer: int, pos: int,
                          rope: torch.Tensor) -> torch.Tensor:
        """decode_step's attention in PyTorch ops: qkv (B, H + 2K, Dh) fp32 -> (B, H·Dh)."""
        B, n, Dh = qkv.shape
        K = self.config.n_kv_head
        H = n - 2 * K
        # Rotate q and k in place: the rotated keys then sit next to the values, and one copy
        # stores both in the cache's (B, 2K, T_max, Dh) layer.
        torch.view_as_complex(qkv[:, :H + K].unflatten(-1, (-1, 2))).mul_(torch.view_as_complex(rope))
        cache.kv[layer][:, :, pos].copy_(qkv[:, H:])
        keys, values = cache.k[layer], cache.v[layer]  # (B, K, T_max, Dh)
        with torch.autocast(qkv.device.type, enabled=False):  # attention in the cache's dtype
            y = F.scaled_dot_product_attention(qkv[:, :H, None].to(keys.dtype), keys[:, :, :pos + 1],
                                               values[:, :, :pos + 1], enable_gqa=K != H)
        return y.view(B, H * Dh)

    # ---------------------------------------------------------------- transformers interop
    def _hf_state_dict(self) -> dict[str, torch.Tensor]:
        c = self.config
        hd = c.n_embd // c.n_head
        sd = {"model.embed_tokens.weight": self.tok_emb.weight, "model.norm.weight": self.norm.weight}
        if not c.tie_embeddings:
            sd["lm_head.weight"] = self.lm_head.weight
        for i, b in enumerate(self.blocks):
            p = f"model.layers.{i}."
            # our matrices are (in, out), theirs (out, in)
            q, k, v = b.attn.qkv.weight.t().split([c.n_head * hd, c.n_kv_head * hd, c.n_kv_head * hd])
            gate, up = b.mlp.gate_up.weight.t().chunk(2)
            sd.update({p + "input_layernorm.weight": b.attn_norm.weight,
                       p + "self_attn.q_proj.weight": pairs_to_halves(q, c.n_head),
                       p + "self_attn.k_proj.weight": pairs_to_halves(k, c.n_kv_head),
                       p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": b.attn.out.weight.t(),
                       p + "post_attention_layernorm.weight": b.mlp_norm.weight,
                       p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
                       p + "mlp.down_proj.weight": b.mlp.down.weight.t()})
        # safetensors wants separate, contiguous storage per tensor
        return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}

    def hf_config(self, eos_token_id: int | None = None) -> dict:
        c = self.config
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": c.vocab_size, "hidden_size": c.n_embd, "intermediate_size": c.ffn_hidden,
            "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
            "num_key_value_heads": c.n_kv_head, "head_dim": c.n_embd // c.n_head,
            "max_position_embeddings": c.max_seq_len, "rms_norm_eps": c.norm_eps,
            # rope_theta for transformers 4.x, rope_parameters for 5.x
            "rope_theta": c.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
            "tie_word_embeddings": c.tie_embeddings, "initializer_range": c.init_std,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
            "bos_token_id": None, "eos_token_id": eos_token_id, "pad_token_id": None,
            "torch_dtype": "float32", "use_cache": True,
        }

    def save_hf(self, folder: str | os.PathLike, eos_token_id: int | None = None) -> None:
        """Write config.json + model.safetensors that `LlamaForCausalLM.from_pretrained(folder)`
        loads. Each file is written to a temporary name and then renamed, so a crash never leaves
        a half-written file. eos_token_id (e.g. the tokenizer's end-of-text) lets HF generate stop."""
        from safetensors.torch import save
        folder = Path(folder)
        atomic_write_bytes(folder / "model.safetensors", save(self._hf_state_dict(), metadata={"format": "pt"}))
        config_text = json.dumps(self.hf_config(eos_token_id), indent=2) + "\n"
        atomic_write_bytes(folder / "config.json", config_text.encode())

    @classmethod
    def from_hf(cls, folder: str | os.PathLike) -> "Llama":
        """Load a `transformers` Llama folder (config.json + model.safetensors, or a sharded
        model.safetensors.index.json). Raises ValueError for features this model does not have."""
        from safetensors.torch import load_file
        folder = Path(folder)
        hc = json.loads((folder / "config.json").read_text())
        rope = hc.get("rope_parameters") or hc.get("rope_scaling") or {}
        problems = []
        if hc.get("model_type") != "llama":
            problems.append(f"model_type {hc.get('model_type')!r}")
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            problems.append(f"rope scaling {rope}")
        if hc.get("hidden_act", "silu") != "silu":
            problems.append(f"hidden_act {hc['hidden_act']!r}")
        if hc.get("attention_bias") or hc.get("mlp_bias"):
            problems.append("biases")
        n_head = hc["num_attention_heads"]
        if hc.get("head_dim") not in (None, hc["hidden_size"] // n_head):
            problems.append(f"head_dim {hc['head_dim']} != hidden_size / heads")
        if problems:
            raise ValueError(f"{folder}: unsupported Llama variant: {', '.join(problems)}")
        cfg = LlamaConfig(
            vocab_size=hc["vocab_size"], n_layer=hc["num_hidden_layers"], n_embd=hc["hidden_size"],
            n_head=n_head, n_kv_head=hc.get("num_key_value_heads") or n_head,
            ffn_hidden=hc["intermediate_size"], max_seq_len=hc.get("max_position_embeddings", 2048),
            rope_theta=float(rope.get("rope_theta", hc.get("rope_theta", 10000.0))),
            norm_eps=float(hc.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hc.get("tie_word_embeddings", False)),
            init_std=float(hc.get("initializer_range", 0.02)))
        index = folder / "model.safetensors.index.json"
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
            else ["model.safetensors"]
        sd = {}
        for name in files:
            sd.update(load_file(str(folder / name)))

        model = cls(cfg)
        ours = {"tok_emb.weight": sd.pop("model.embed_tokens.weight"),
                "norm.weight": sd.pop("model.norm.weight")}
        head = sd.pop("lm_head.weight", None)
        if cfg.tie_embeddings:
            ours["lm_head.weight"] = ours["tok_emb.weight"]  # the same Parameter; a saved copy is ignored
        elif head is None:
            raise ValueError(f"{folder}: untied model without lm_head.weight")
        else:
            ours["lm_head.weight"] = head
        for i in range(cfg.n_layer):
            p = f"model.layers.{i}."
            take = lambda name: sd.pop(p + name)  # noqa: E731
            ours.update({  # theirs (out, in) -> ours (in, out)
                f"blocks.{i}.attn_norm.weight": take("input_layernorm.weight"),
                f"blocks.{i}.attn.qkv.weight": torch.cat([
                    halves_to_pairs(take("self_attn.q_proj.weight"), cfg.n_head),
                    halves_to_pairs(take("self_attn.k_proj.weight"), cfg.n_kv_head),
                    take("self_attn.v_proj.weight")]).t(),
                f"blocks.{i}.attn.out.weight": take("self_attn.o_proj.weight").t(),
                f"blocks.{i}.mlp_norm.weight": take("post_attention_layernorm.weight"),
                f"blocks.{i}.mlp.gate_up.weight": torch.cat([take("mlp.gate_proj.weight"),
                                                             take("mlp.up_proj.weight")]).t(),
                f"blocks.{i}.mlp.down.weight": take("mlp.down_proj.weight").t(),
            })
        leftover = [k for k in sd if "rotary_emb" not in k]
        if leftover:
            raise ValueError(f"{folder}: unexpected tensors {leftover[:5]}")
        dtype = model.tok_emb.weight.dtype
        model.load_state_dict({k: v.to(dtype) for k, v in ours.items()}, strict=True)
        return model
