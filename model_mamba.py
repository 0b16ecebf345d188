"""A Mamba language model, hand-written: Mamba-1 or Mamba-2 mixers, chosen by config.

Shape glossary
    B  batch                     T  time (sequence length)         V  vocabulary
    D  width (n_embd)            E  inner width = expand * D       F  MLP width (mlp_hidden)
    N  state size (d_state)      K  conv kernel width (d_conv)     R  dt rank (Mamba-1)
    H  heads (Mamba-2)           P  head dim, E = H * P            G  groups sharing B and C (Mamba-2)

A block is x + mixer(norm(x)), then, when mlp_hidden > 0, x + mlp(norm(x)) with a SiLU-gated MLP.
The mixers:
  Mamba-1: in-projection to (x, z); causal depthwise conv over time and SiLU on x; x projects to
    (dt, B, C) so that they depend on the input; the selective scan per channel (state (E, N));
    a D skip; gating by SiLU(z); out-projection.
  Mamba-2: one in-projection to (z, x|B|C, dt); the conv runs over x, B and C together; one decay
    per head; the chunked state-space-duality scan (tinykernels/ssd.py, all matmuls); a D skip; an
    RMSNorm of y * SiLU(z); out-projection.

Generation carries, per layer, the last K-1 conv inputs and the SSM state, so each new token costs
the same whatever the length so far (see generation in the Mamba class). RMSNorm, the gated MLP,
the generation loop and the parameter count are the Llama's (model_common.py). Parameter names
follow `transformers`; tinyhelen/interop.py converts to and from its MambaForCausalLM (Mamba-1),
Mamba2ForCausalLM (Mamba-2) or, for Mamba-2 blocks with an MLP, BambaForCausalLM (the same Mamba-2
mixer followed by the same gated MLP, with no attention layers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import tinykernels
from tinykernels import cross_entropy
from model_common import GatedMLP, LanguageModel, RMSNorm


@dataclass
class MambaConfig:
    mixer: str = "mamba2"        # "mamba1" | "mamba2"
    vocab_size: int = 2000
    n_layer: int = 2
    n_embd: int = 768            # D
    d_state: int = 128           # N (Mamba-1 models usually use 16)
    d_conv: int = 4              # K
    expand: int = 2              # E = expand * D
    dt_rank: int = 0             # R, Mamba-1 only; 0 = ceil(D / 16)
    headdim: int = 64            # P, Mamba-2 only
    n_groups: int = 1            # G, Mamba-2 only
    chunk_size: int = 64         # Mamba-2's SSD chunk
    mlp_hidden: int = 1536       # F; 0 = no MLP after the mixer
    tie_embeddings: bool = False
    norm_eps: float = 1e-5
    conv_bias: bool = True
    proj_bias: bool = False
    dt_min: float = 0.001        # initial dt is log-uniform in [dt_min, dt_max]
    dt_max: float = 0.1
    dt_floor: float = 1e-4
    scan_backend: str = "auto"   # auto | triton | torch, for the RMSNorm and selective-scan ops

    def __post_init__(self):
        if self.mixer not in ("mamba1", "mamba2"):
            raise ValueError(f"mixer must be 'mamba1' or 'mamba2', got {self.mixer!r}")
        if self.scan_backend not in tinykernels.BACKENDS:
            raise ValueError(f"scan_backend must be one of {tinykernels.BACKENDS}, got {self.scan_backend!r}")
        if self.mixer == "mamba2" and (self.d_inner % self.headdim or self.nheads % self.n_groups):
            raise ValueError(f"Mamba-2 needs expand * n_embd ({self.d_inner}) divisible by headdim "
                             f"({self.headdim}) and the heads divisible by n_groups ({self.n_groups})")

    @property
    def d_inner(self) -> int:
        return self.expand * self.n_embd

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def rank(self) -> int:
        return self.dt_rank or math.ceil(self.n_embd / 16)


class CausalConv(nn.Module):
    """Depthwise conv over time that sees only the past: out_t = bias + sum_k w[k] * in_{t-K+1+k}.
    Weight (channels, 1, K) as in nn.Conv1d; computed as K shifted multiply-adds on (B, T, C), so
    no transposes, and the same code serves the one-token step with a (B, K-1, C) window."""

    def __init__(self, channels: int, kernel: int, bias: bool):
        super().__init__()
        self.kernel = kernel
        conv = nn.Conv1d(channels, channels, kernel, groups=channels, bias=bias)  # for its init
        self.weight = nn.Parameter(conv.weight.detach())
        self.bias = nn.Parameter(conv.bias.detach()) if bias else None

    def forward(self, x, window=None):
        """x (B, T, C), window (B, K-1, C) of earlier inputs or None (zeros) -> out (B, T, C), new window."""
        past = x.new_zeros(x.shape[0], self.kernel - 1, x.shape[2]) if window is None else window
        padded = torch.cat([past, x], dim=1)
        w = self.weight[:, 0, :]  # (C, K)
        out = padded[:, :x.shape[1]] * w[:, 0]
        for k in range(1, self.kernel):
            out = out + padded[:, k:k + x.shape[1]] * w[:, k]
        if self.bias is not None:
            out = out + self.bias
        return out, padded[:, padded.shape[1] - (self.kernel - 1):]


def _inverse_softplus_dt(n: int, cfg: MambaConfig) -> torch.Tensor:
    """A bias b with softplus(b) log-uniform in [dt_min, dt_max]: the usual Mamba dt init."""
    dt = torch.exp(torch.rand(n) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
    dt = dt.clamp(min=cfg.dt_floor)
    return dt + torch.log(-torch.expm1(-dt))


def _zero_padding(x: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """x (B, T, ...) with the padding's time steps (real False) set to 0; x itself without a mask."""
    return x if real is None else x * real[:, :, None].to(x.dtype)


def _no_decay(*params):
    for p in params:
        p._no_weight_decay = True


class Mamba1Mixer(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        E, N, R = cfg.d_inner, cfg.d_state, cfg.rank
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.n_embd, 2 * E, bias=cfg.proj_bias)
        self.conv1d = CausalConv(E, cfg.d_conv, cfg.conv_bias)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        with torch.no_grad():
            self.dt_proj.weight.uniform_(-R ** -0.5, R ** -0.5)
            self.dt_proj.bias.copy_(_inverse_softplus_dt(E, cfg))
        # S4D-real init: channel e, state n decays at rate n + 1.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, cfg.n_embd, bias=cfg.proj_bias)
        _no_decay(self.A_log, self.D, self.dt_proj.bias)

    def _ssm_inputs(self, x):
        dt, B, C = self.x_proj(x).split([self.cfg.rank, self.cfg.d_state, self.cfg.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt).float()), B, C

    def forward(self, u, state=None, real=None):
        """u (B, T, D) -> (B, T, D) and the state after the last step (conv window, (B, E, N)).
        real (B, T) bool marks the tokens of left-padded prompts (Mamba.prefill)."""
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x, window = self.conv1d(_zero_padding(x, real))
        x = F.silu(x)
        dt, B, C = self._ssm_inputs(x)
        dt = _zero_padding(dt, real)
        y, h = tinykernels.selective_scan(x, dt, -torch.exp(self.A_log.float()), B, C, self.cfg.scan_backend)
        y = (y + x * self.D) * F.silu(z)
        return self.out_proj(y.to(u.dtype)), (window, h)

    def step(self, u, state):
        """One token: u (B, 1, D), state from forward/step -> (B, 1, D), new state."""
        window, h = state
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x, window = self.conv1d(x, window)
        x = F.silu(x)
        dt, B, C = self._ssm_inputs(x)
        A = -torch.exp(self.A_log.float())
        h = torch.exp(dt[:, 0, :, None] * A) * h + (dt[:, 0] * x[:, 0])[..., None] * B[:, 0, None, :].float()
        y = (h @ C[:, 0, :, None].float()).squeeze(-1)[:, None] + x * self.D
        return self.out_proj((y * F.silu(z)).to(u.dtype)), (window, h)


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        E, N, G, H = cfg.d_inner, cfg.d_state, cfg.n_groups, cfg.nheads
        self.cfg = cfg
        self.conv_dim = E + 2 * G * N
        self.in_proj = nn.Linear(cfg.n_embd, E + self.conv_dim + H, bias=cfg.proj_bias)  # z, xBC, dt
        self.conv1d = CausalConv(self.conv_dim, cfg.d_conv, cfg.conv_bias)
        self.dt_bias = nn.Parameter(_inverse_softplus_dt(H, cfg))
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = RMSNorm(E, cfg.norm_eps, cfg.scan_backend)
        self.out_proj = nn.Linear(E, cfg.n_embd, bias=cfg.proj_bias)
        _no_decay(self.dt_bias, self.A_log, self.D)

    def _split(self, u, window, real=None):
        cfg = self.cfg
        z, xBC, dt = self.in_proj(u).split([cfg.d_inner, self.conv_dim, cfg.nheads], dim=-1)
        xBC, window = self.conv1d(_zero_padding(xBC, real), window)
        x, B, C = F.silu(xBC).split([cfg.d_inner, cfg.n_groups * cfg.d_state, cfg.n_groups * cfg.d_state], -1)
        shape = u.shape[:2]
        dt = _zero_padding(F.softplus(dt.float() + self.dt_bias), real)
        return (z, x.reshape(*shape, cfg.nheads, cfg.headdim), dt,
                B.reshape(*shape, cfg.n_groups, cfg.d_state), C.reshape(*shape, cfg.n_groups, cfg.d_state),
                window)

    def _out(self, y, x, z, u):
        y = (y + x * self.D[:, None]).reshape(*u.shape[:2], -1)
        gated = y * F.silu(z.float())
        if self.cfg.n_groups > 1:  # the norm runs per group of channels
            g = gated.reshape(*gated.shape[:-1], self.cfg.n_groups, -1)
            g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.norm.eps)
            normed = g.reshape(gated.shape) * self.norm.weight
        else:
            normed = self.norm(gated)
        return self.out_proj(normed.to(u.dtype))

    def forward(self, u, state=None, real=None):
        z, x, dt, B, C, window = self._split(u, None, real)
        y, h = tinykernels.ssd_chunked(x, dt, -torch.exp(self.A_log.float()), B, C, self.cfg.chunk_size)
        return self._out(y.float(), x, z, u), (window, h)

    def step(self, u, state):
        window, h = state
        z, x, dt, B, C, window = self._split(u, window)
        per_group = self.cfg.nheads // self.cfg.n_groups
        B = B[:, 0].repeat_interleave(per_group, dim=1).float()  # (B, H, N)
        C = C[:, 0].repeat_interleave(per_group, dim=1).float()
        decay = torch.exp(dt[:, 0] * -torch.exp(self.A_log.float()))  # (B, H)
        h = decay[..., None, None] * h + (dt[:, 0, :, None] * x[:, 0].float())[..., None] * B[:, :, None, :]
        y = (h @ C[..., None]).squeeze(-1)[:, None]  # (B, 1, H, P)
        return self._out(y, x, z, u), (window, h)


class Block(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps, cfg.scan_backend)
        self.mixer = (Mamba1Mixer if cfg.mixer == "mamba1" else Mamba2Mixer)(cfg)
        if cfg.mlp_hidden:
            self.mlp_norm = RMSNorm(cfg.n_embd, cfg.norm_eps, cfg.scan_backend)
            self.mlp = GatedMLP(cfg.n_embd, cfg.mlp_hidden)

    def forward(self, x, state=None, real=None):
        """x (B, T, D) -> (B, T, D), this layer's state after the last step. With a state, T must be 1.
        real (B, T) bool: the real tokens of left-padded prompts (Mamba.prefill)."""
        if state is not None:
            out, state = self.mixer.step(self.norm(x), state)
        else:
            out, state = self.mixer.forward(self.norm(x), None, real)
        x = x + out
        if hasattr(self, "mlp"):
            x = x + self.mlp(self.mlp_norm(x))
        return x, state


class Mamba(LanguageModel):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.n_embd, cfg.norm_eps, cfg.scan_backend)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        nn.init.normal_(self.embeddings.weight, std=0.02)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embeddings.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=0.02)
        # Residual branches start small so the stream's scale does not grow with depth.
        residuals = 2 if cfg.mlp_hidden else 1
        with torch.no_grad():
            for block in self.layers:
                block.mixer.out_proj.weight /= math.sqrt(residuals * cfg.n_layer)
                if cfg.mlp_hidden:
                    block.mlp.down.weight /= math.sqrt(residuals * cfg.n_layer)

    # ------------------------------------------------------------------ training interface
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) -> logits (B, T, V), loss: mean fp32 cross-entropy over the positions whose
        target is not -1 (a loss mask), or None without targets."""
        logits, _ = self._run(idx)
        loss = None
        if targets is not None:
            loss = cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> final-normed hidden states (B, T, D): what a classifier head reads."""
        x = self.embeddings(idx)
        for block in self.layers:
            x, _ = block(x)
        return self.norm_f(x)

    def _run(self, idx, states=None, real=None):
        x = self.embeddings(idx)
        new_states = []
        for i, block in enumerate(self.layers):
            x, s = block(x, None if states is None else states[i], real)
            new_states.append(s)
        return self.lm_head(self.norm_f(x)), new_states

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward): 2 per multiply-add of every
        matmul weight, plus the scan's own arithmetic."""
        cfg = self.config
        matmul = sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2 and "embeddings" not in n)
        if cfg.tie_embeddings:
            matmul += self.lm_head.weight.numel()
        if cfg.mixer == "mamba1":
            # per channel and state: decay exp + multiply, input product, update, read-out
            scan = 9 * cfg.d_inner * cfg.d_state
        else:
            q = min(cfg.chunk_size, seq_len)
            # per head: C.B scores and the mix over a chunk, plus chunk states in and out
            scan = cfg.nheads * (2 * q * cfg.d_state + 2 * q * cfg.headdim + 4 * cfg.d_state * cfg.headdim)
        return 3.0 * (2 * matmul + cfg.n_layer * scan)

    # ------------------------------------------------------------------ generation (model_common)
    def prefill(self, idx: torch.Tensor, max_new_tokens: int, left_pad: torch.Tensor | None = None):
        """The prompt (B, T) once through the parallel scan -> last logits (B, V), per-layer states;
        after that each token is one recurrent step per layer, whatever the length so far.

        Left padding (left_pad (B,) tokens per row) must leave a row's state as if the row started
        at its first real token: padded zeros alone would not, since a pad token's embedding moves
        the conv window and the SSM state. So at the padding the conv input is zeroed (the window a
        prompt starts from is zeros) and dt is zeroed, which makes that scan step the identity
        (decay exp(0·A) = 1, input dt·x·B = 0). The padding's own outputs are never read."""
        real = None
        if left_pad is not None:
            real = torch.arange(idx.shape[1], device=idx.device) >= left_pad[:, None]
        logits, states = self._run(idx, real=real)
        return logits[:, -1], states

    def decode(self, tokens: torch.Tensor, pos: int, states):
        logits, states = self._run(tokens[:, None], states)
        return logits[:, -1], states

    def step_logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) computed one token at a time through the recurrent step: for tests that
        the step path and the parallel path agree."""
        logits, states = self._run(idx[:, :1], self._empty_states(idx.shape[0], idx.device))
        out = [logits]
        for t in range(1, idx.shape[1]):
            logits, states = self._run(idx[:, t:t + 1], states)
            out.append(logits)
        return torch.cat(out, dim=1)

    def _empty_states(self, batch, device):
        cfg = self.config
        states = []
        for block in self.layers:
            window = torch.zeros(batch, cfg.d_conv - 1, block.mixer.conv1d.weight.shape[0], device=device)
            if cfg.mixer == "mamba1":
                h = torch.zeros(batch, cfg.d_inner, cfg.d_state, device=device)
            else:
                h = torch.zeros(batch, cfg.nheads, cfg.headdim, cfg.d_state, device=device)
            states.append((window, h))
        return states
