"""What the Llama (model_llama.py) and the Mamba (model_mamba.py) share: the (in, out) Linear, RMSNorm,
the gated MLP (SwiGLU), the generation loop and the parameter count.

Shapes: B batch, T time, D width, F the MLP's hidden width, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

import tinykernels
from tinyhelen.sampling import sample_next_token


class Linear(nn.Module):
    """y = x @ weight, no bias, weight stored (in, out), the transpose of nn.Linear's layout.

    Why: decoding multiplies 1..8 rows by every weight matrix, and CPU BLAS (MKL) runs those skinny
    products 10-25% faster against an (in, out) matrix than against nn.Linear's (out, in); training's
    large products are equally fast either way. Export transposes to the (out, in) of `transformers`.
    Initialised as nn.Linear is (uniform, bound 1/sqrt(in)); the Llama re-initialises its own."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_in, d_out))
        nn.init.kaiming_uniform_(self.weight.t(), a=math.sqrt(5))  # the (out, in) view: fan-in = d_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) * weight over the last dimension (tinykernels.rms_norm; under CPU
    autocast it returns the autocast dtype for the matmul it feeds). backend forces Triton or
    PyTorch (tinykernels/backend.py)."""

    def __init__(self, dim: int, eps: float, backend: str = "auto"):
        super().__init__()
        self.eps, self.backend = eps, backend
        self.weight = nn.Parameter(torch.ones(dim))
        self.weight._no_weight_decay = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tinykernels.rms_norm(x, self.weight, self.eps, self.backend)


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)), the SwiGLU MLP. gate and up are one D x 2F matrix [gate | up],
    so the block does one wide matmul instead of two narrow ones (and decoding reads one weight);
    export splits it back into gate_proj and up_proj (split_for_export)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = Linear(dim, 2 * hidden)
        self.down = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(tinykernels.swiglu(self.gate_up(x)))

    def split_for_export(self) -> dict[str, torch.Tensor]:
        """gate_proj, up_proj and down_proj, as transformers names them, in nn.Linear's (out, in) layout."""
        gate, up = self.gate_up.weight.t().chunk(2)
        return {"gate_proj": gate, "up_proj": up, "down_proj": self.down.weight.t()}

    @staticmethod
    def fuse_from_export(gate_proj: torch.Tensor, up_proj: torch.Tensor, down_proj: torch.Tensor) -> dict:
        """The inverse of split_for_export: {"gate_up": ..., "down": ...} (in, out) weights."""
        return {"gate_up": torch.cat([gate_proj, up_proj]).t(), "down": down_proj.t()}


class LanguageModel(nn.Module):
    """A causal LM: token ids (B, T) -> logits (B, T, V). Subclasses hold one nn.Embedding and an
    lm_head, and supply the two halves of generation:

        prefill(idx, max_new_tokens) -> (logits (B, V) after the last prompt token, state)
        decode(tokens (B,), pos, state) -> (logits (B, V) after tokens at position pos, state)

    state is whatever carries the past: the Llama's KV cache, the Mamba's conv windows and SSM states."""

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters, a tied head counted once; non_embedding leaves out the token embedding and the
        LM head (the head is the embedding when tied), as scaling-law papers count model size."""
        params = {id(p): p for p in self.parameters()}
        if non_embedding:
            embedding = next(m for m in self.modules() if isinstance(m, nn.Embedding))
            for p in (embedding.weight, self.lm_head.weight):
                params.pop(id(p), None)
        return sum(p.numel() for p in params.values())

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, eot_id: int | list[int] | None = None,
                 generator: torch.Generator | None = None,
                 left_pad: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) prompt -> (B, T + n) with n <= max_new_tokens new tokens (tinyhelen/sampling.py's
        temperature / top-k / top-p; temperature 0 is greedy).

        The prompt runs once (prefill), then one token per step (decode). With eot_id (one id, or
        several: a chat model also ends a turn with its end-of-turn token), a row that has produced
        one is padded with the first, and generation stops early once every row has.
        Prompts of different lengths share a batch left-padded (pad_left): left_pad (B,) counts each
        row's padding, which no real token sees and which leaves each row's positions (Llama) and
        state (Mamba) as if it were alone, so every row generates what it would one at a time."""
        B, T = idx.shape
        if T == 0:
            raise ValueError("generate needs a prompt of at least one token")
        if left_pad is not None:
            left_pad = left_pad.to(device=idx.device, dtype=torch.long)
            if left_pad.shape != (B,) or bool((left_pad < 0).any()) or bool((left_pad >= T).any()):
                raise ValueError(f"left_pad must be (B,) = ({B},) counts in 0..{T - 1}, "
                                 f"got {left_pad.tolist()}")
            if not bool(left_pad.any()):
                left_pad = None  # equal lengths: the unpadded (fastest) path
        # inference_mode rather than no_grad: it skips autograd's view and version bookkeeping,
        # about 8% of a batch-1 decoding step on CPU, where each step is a few hundred small ops.
        with torch.inference_mode():
            logits, state = self.prefill(idx, max_new_tokens, left_pad)
            out = [idx]
            done = torch.zeros(B, 1, dtype=torch.bool, device=idx.device)
            stops = None if eot_id is None else torch.tensor(
                [eot_id] if isinstance(eot_id, int) else list(eot_id), device=idx.device)
            for step in range(max_new_tokens):
                nxt = sample_next_token(logits, temperature, top_k, top_p, generator)
                if stops is not None:
                    nxt = nxt.masked_fill(done, int(stops[0]))
                    done |= torch.isin(nxt, stops)
                out.append(nxt)
                if step == max_new_tokens - 1 or (stops is not None and bool(done.all())):
                    break
                logits, state = self.decode(nxt[:, 0], T + step, state)
            tokens = torch.cat(out, dim=1)
        return tokens.clone()  # a normal tensor again, usable later as a training input


def pad_left(prompts: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists of any lengths -> (idx (B, T_max) with each prompt at the right end, left_pad (B,)),
    for generate(idx, ..., left_pad=left_pad). pad_id fills the left; no real token attends to it."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("pad_left needs at least one prompt, each of at least one token")
    longest = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    for row, p in enumerate(prompts):
        idx[row, longest - len(p):] = torch.as_tensor(p, dtype=torch.long)
    left_pad = torch.tensor([longest - len(p) for p in prompts], dtype=torch.long)
    return idx.to(device), left_pad.to(device)
