"""A Llama language model, written out: RMSNorm, rotary positions, grouped-query attention, a SwiGLU
MLP, an optional tied head, and KV-cached generation.

Shapes (used in the comments below):
    B  batch                 T  time (sequence length)     D  model width (n_embd)
    H  query heads           K  key/value heads (K divides H; K < H is grouped-query attention)
    Dh head dim (D // H)     F  FFN hidden width           V  vocabulary
    L  layers

The whole model, idx (B, T) token ids -> logits (B, T, V):
    x = embedding(idx)                                          (B, T, D), the residual stream
    L blocks, each
        h = rms_norm(x);  q, k, v = split(h @ W_qkv)            H query heads, K key/value heads
        x = x + attention(rotary(q), rotary(k), v) @ W_out      causal; query head h reads k/v head h // (H/K)
        h = rms_norm(x);  x = x + (silu(h @ W_gate) * (h @ W_up)) @ W_down
    logits = rms_norm(x) @ W_head

Weight layout. Query, key and value are one D x (H + 2K)·Dh matrix, and SwiGLU's gate and up are
one D x 2F matrix, so each block does two wide matmuls instead of five narrow ones (fewer kernel
launches, better-shaped GEMMs, one weight read per decoding step). Block matrices are stored
(in, out), so that y = x @ W (model_common.Linear says why).
Rotary embeddings pair neighbouring dimensions (2j, 2j+1) of each query/key head, as Meta's
original checkpoints do, and rotate each pair as one complex multiplication. On CPU that is one
vectorised op, about 3x faster than the "rotate half" form (pairs j and j + Dh/2) that
`transformers` uses. The two conventions differ only in the order of the dimensions inside a head,
which attention scores do not depend on, so export and import permute the q/k rows and the logits
stay the same (tinyhelen/interop.py, which also transposes the matrices and splits q/k/v and gate/up).

Where the speed is. Attention is written out here in PyTorch (Attention.forward), with CPU training
handed to fused C kernels behind one branch (tinykernels/attention_cpu.py). The model calls three ops
from tinykernels/: rms_norm, swiglu and cross_entropy. Each picks fused C kernels on CPU, Triton on
CUDA or PyTorch, and the plain formula under torch.compile (tinykernels/ops.py has the table).
Generation's one-token step is this forward pass written out for one position, with weights packed
for streaming (tinykernels/decode.py).

Initialisation: every matrix (embedding, projections, head) ~ N(0, init_std), norms at 1, no
biases anywhere. The two projections that write into the residual stream (attention out and MLP
down) are additionally scaled by 1/sqrt(2L), as in GPT-2, so the residual stream's variance does
not grow with depth at initialisation.

    >>> m = Llama(LlamaConfig())            # the paper's "14M"
    >>> m.num_params(), m.num_params(non_embedding=False)
    (14456400, 15800400)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinykernels import attention_cpu, cross_entropy
from tinykernels.decode import decode_step
from model_common import GatedMLP, LanguageModel, Linear, RMSNorm

__all__ = ["KVCache", "Llama", "LlamaConfig", "apply_rotary", "rotary_table"]


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

    Frequency j is theta^(-2j/Dh): the first pairs of a head turn fast (local order), the last
    slowly (long range). The angles are computed in fp32 exactly as `transformers` computes them, so
    an exported model sees the same rotations. Stored as real pairs rather than complex numbers so
    that moving the model between devices never touches a complex buffer; the middle 1 broadcasts
    over heads."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    angles = torch.arange(max_seq_len, dtype=torch.int64).float()[:, None] * inv_freq  # (T, Dh/2)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)[:, None]


def apply_rotary(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """x (B, T, n, Dh) rotated by position, returned in fp32; rope (T, 1, Dh/2, 2), or (B, T, 1, Dh/2, 2)
    for rows at different positions, holds the cos and sin of each position x frequency (rotary_table).

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


class KVCache:
    """The keys and values of every position generated so far, for every layer, pre-allocated: one
    (L, B, 2K, T_max, Dh) tensor, keys in the first K heads and values in the last K, so that a
    decoding step stores a position's keys and values with one copy. Allocated on the first write,
    in the dtype of the keys. tinykernels/decode.py reads kv, k, v, panels and left_pad directly."""

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int):
        self.shape = (n_layer, batch, 2 * n_kv_head, max_len, head_dim)
        self.n_kv_head = n_kv_head
        self.kv: list[torch.Tensor] = []  # per layer, (B, 2K, T_max, Dh) views of one allocation
        self.k: list[torch.Tensor] = []   # per layer, (B, K, T_max, Dh) views: its keys...
        self.v: list[torch.Tensor] = []   # ...and values
        self.panels: list | None = None   # the weights packed for decoding (decode.decoding_panels)
        # (B,) padding tokens at the start of each row (left-padded prompts of different lengths),
        # or None: row b's position p sits in slot p + left_pad[b], and slots before it are masked
        self.left_pad: torch.Tensor | None = None

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, K, T, Dh) at positions start..start+T; return all keys/values so far,
        (B, K, start + T, Dh) each."""
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

    def forward(self, x, rope, layer: int = 0, kv_cache: KVCache | None = None, start_pos: int = 0,
                mask: torch.Tensor | None = None):
        """x (B, T, D) -> (B, T, D): softmax(q·kᵀ / sqrt(Dh)) · v per head, each position seeing itself
        and the positions before it, q and k rotated by position first.

        rope (T, 1, Dh/2, 2): the rotary table at positions start_pos..start_pos+T-1. With kv_cache,
        this chunk's keys and values are stored at those positions and the queries attend to every
        position cached so far. mask (B, 1, T, T_keys) bool, True where a query may see a key,
        replaces the causal mask: left-padded batches (Llama.hidden_states), whose rope is per row."""
        B, T, _ = x.shape
        H, K, Dh = self.n_head, self.n_kv_head, self.head_dim
        # (B, T, (H + 2K)·Dh): every query head, then every key head, then every value head
        qkv = self.qkv(x)
        if kv_cache is None and mask is None and attention_cpu.usable(qkv, T):
            # CPU training: the lines below in fused C kernels (rotary, attention and their
            # backwards), about 2x (bf16) and 3x (fp32) faster than sdpa at these sizes
            # (tinykernels/attention_cpu.py says why; tests/test_fused_cpu.py checks it against them).
            return self.out(attention_cpu.causal_attention(qkv, rope[:, 0], H, K))
        # split, not slicing: its backward concatenates the gradients instead of zero-filling
        # a full-size buffer per slice
        qk, v = qkv.view(B, T, H + 2 * K, Dh).split([H + K, K], dim=2)
        # CPU attention runs in fp32, also under autocast: PyTorch's CPU flash kernel is faster in fp32
        # than in bf16 at these head sizes (fwd+bwd 12.4 against 15.4 ms per layer, 14M model).
        # Elsewhere the compute dtype.
        attn_dtype = torch.float32 if x.device.type == "cpu" else v.dtype
        q, k = apply_rotary(qk, rope).to(attn_dtype).split([H, K], dim=2)  # q and k in one pass
        # (B, T, n, Dh) -> (B, n, T, Dh) views; sdpa takes strided inputs, so no copies here.
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.to(attn_dtype).transpose(1, 2)
        # A left-padded batch's mask is already causal, with each row's padding keys hidden
        # (hidden_states builds it): it replaces is_causal.
        causal = mask is None
        if kv_cache is not None:
            k, v = kv_cache.update(layer, start_pos, k, v)  # now (B, K, start_pos + T, Dh)
            if causal and T == 1:
                causal = False  # one new query sees every cached position
            elif causal and start_pos > 0:
                # sdpa's is_causal aligns the mask top-left (query i sees keys 0..i), but these
                # queries sit at positions start_pos.., so query i sees keys 0..start_pos + i:
                # the causal mask aligned bottom-right.
                causal = False
                mask = torch.ones(T, start_pos + T, dtype=torch.bool, device=x.device).tril(start_pos)
        # Grouped-query attention: query head h reads key/value head h // (H/K), as if each key/value
        # head were repeated for its H/K query heads, k.repeat_interleave(H // K, dim=1) and the same
        # for v; enable_gqa does that inside the kernel without the copies.
        # autocast would cast fp32 q, k, v back to bf16 for sdpa: keep the dtype chosen above
        with torch.autocast(x.device.type, enabled=False):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=K != H)
        # sdpa returns (B, H, T, Dh) laid out as (B, T, H, Dh), so this reshape is a view on CPU.
        return self.out(y.transpose(1, 2).reshape(B, T, H * Dh))  # (B, T, H·Dh) -> (B, T, D)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = GatedMLP(cfg.n_embd, cfg.ffn_hidden)

    def forward(self, x, rope, layer: int = 0, kv_cache: KVCache | None = None, start_pos: int = 0,
                mask: torch.Tensor | None = None):
        x = x + self.attn(self.attn_norm(x), rope, layer, kv_cache, start_pos, mask)
        return x + self.mlp(self.mlp_norm(x))


class Llama(LanguageModel):
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
    def hidden_states(self, idx: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0,
                      left_pad: torch.Tensor | None = None):
        """idx (B, T) -> final-normed hidden states (B, T, D); positions start at start_pos. With
        left_pad (B,), row b's first left_pad[b] tokens are padding: its real tokens take positions
        0, 1, ... and never attend to the padding (each pad token sees only itself, so it stays finite).
        A left-padded batch may continue its kv_cache (start_pos > 0): idx then fills slots
        start_pos.. of every row, after the row's padding and real tokens already cached."""
        T = idx.size(1)
        if start_pos + T > self.config.max_seq_len:
            raise ValueError(f"positions {start_pos}..{start_pos + T - 1} exceed max_seq_len "
                             f"{self.config.max_seq_len}")
        rope, mask = self.rope_table[start_pos:start_pos + T], None
        if left_pad is not None:
            t = torch.arange(start_pos, start_pos + T, device=idx.device)  # the slots of these queries
            s = torch.arange(start_pos + T, device=idx.device)             # every key slot so far
            rope = self.rope_table[(t - left_pad[:, None]).clamp(min=0)]  # (B, T, 1, Dh/2, 2)
            real_key = s >= left_pad[:, None]                              # (B, S)
            itself = s == t[:, None]                                       # (T, S)
            mask = ((s <= t[:, None]) & real_key[:, None, :] | itself)[:, None]   # (B, 1, T, S)
        x = self.tok_emb(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, i, kv_cache, start_pos, mask)
        return self.norm(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, start_pos: int = 0):
        """idx (B, T) -> (logits (B, T, V), loss). loss is the mean fp32 cross-entropy over the
        positions whose target is not -1 (a loss mask), or None without targets. With kv_cache, idx
        holds the tokens at positions start_pos.. and their keys/values are appended to the cache."""
        logits = self.lm_head(self.hidden_states(idx, kv_cache, start_pos))
        loss = None
        if targets is not None:
            loss = cross_entropy(logits.flatten(0, 1), targets.reshape(-1), ignore_index=-1)
        return logits, loss

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

    # ---------------------------------------------------------------- generation (model_common)
    def prefill(self, idx: torch.Tensor, max_new_tokens: int, left_pad: torch.Tensor | None = None):
        """Run the prompt idx (B, T) into a KV cache sized for T + max_new_tokens positions -> the
        last position's logits (B, V) and the cache. Raises ValueError past max_seq_len: rotary
        positions are absolute, so cropping the context would mean recomputing the whole cache.
        left_pad (B,): left-padded prompts (hidden_states); the cache keeps it for decode_step."""
        c = self.config
        B, T = idx.shape
        if T + max_new_tokens > c.max_seq_len:
            raise ValueError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len "
                             f"({c.max_seq_len})")
        cache = KVCache(c.n_layer, B, c.n_kv_head, T + max_new_tokens, c.n_embd // c.n_head)
        cache.left_pad = left_pad
        # Only the last position's logits are needed: the head runs on one row per sequence.
        return self.lm_head(self.hidden_states(idx, cache, 0, left_pad)[:, -1]), cache

    def decode(self, tokens: torch.Tensor, pos: int, cache: KVCache):
        return self.decode_step(tokens, cache, pos), cache

    def decode_step(self, tokens: torch.Tensor, cache: KVCache, pos: int) -> torch.Tensor:
        """tokens (B,) at position pos -> next-token logits (B, V), the cache holding positions
        0..pos-1: forward() for one position, written out for speed (tinykernels/decode.py)."""
        return decode_step(self, tokens, cache, pos)
