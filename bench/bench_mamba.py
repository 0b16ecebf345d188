"""Training throughput on CPU: this Mamba against mambapy, transformers' Mamba, and the Llama.

    python bench/bench_mamba.py [--rounds=3] [--batch=8] [--seq=256] [--threads=0] [--skip=hf,...]

One training step = forward, fp32 cross-entropy, backward, AdamW update, on random tokens
(vocabulary 2,000). All models are built first; then every round times one step of each model in
turn, so that load from other processes on a shared machine hits them alike. Reported: median
tokens/s over the rounds (after one untimed warm-up step each) and the ratios that the issue asks
for. Models (all untied, vocabulary 2,000):

  mamba1      this repo, Mamba-1 mixers, width 336, 8 layers, state 16 (7.3M parameters)
  mambapy     mambapy's Mamba (its parallel scan, pscan=True) with the same sizes, as mambapy.lm.LM
  hf          transformers' MambaForCausalLM, same sizes, its PyTorch path (no CUDA kernels here)
  mamba2      this repo at the paper's size: Mamba-2, width 768, 2 layers, gated MLP 1,536
  llama       model_llama.Llama with its default (the paper's 14M) config
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VOCAB, WIDTH, LAYERS = 2000, 336, 8


class MambapyLM(torch.nn.Module):
    """mambapy's Mamba stack with an embedding, final norm and head around it, like mambapy.lm.LM
    (which cannot be imported without einops, for its Mamba-2)."""

    def __init__(self):
        super().__init__()
        from mambapy.mamba import Mamba, MambaConfig, RMSNorm
        cfg = MambaConfig(d_model=WIDTH, n_layers=LAYERS, d_state=16, pscan=True)
        self.embedding = torch.nn.Embedding(VOCAB, WIDTH)
        self.mamba = Mamba(cfg)
        self.norm_f = RMSNorm(WIDTH, cfg.rms_norm_eps)
        self.lm_head = torch.nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, idx):
        return self.lm_head(self.norm_f(self.mamba(self.embedding(idx))))


def build(name: str):
    torch.manual_seed(0)
    if name == "mamba1":
        from model_mamba import Mamba, MambaConfig
        return Mamba(MambaConfig(mixer="mamba1", vocab_size=VOCAB, n_layer=LAYERS, n_embd=WIDTH, d_state=16,
                                 mlp_hidden=0))
    if name == "mamba2":
        from model_mamba import Mamba, MambaConfig
        return Mamba(MambaConfig())
    if name == "llama":
        from model_llama import Llama, LlamaConfig
        return Llama(LlamaConfig())
    if name == "mambapy":
        return MambapyLM()
    if name == "hf":
        import transformers
        cfg = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS,
                                       state_size=16, tie_word_embeddings=False, use_cache=False)
        return transformers.MambaForCausalLM(cfg)
    raise ValueError(name)


def loss_of(name, model, idx, targets):
    if name in ("mamba1", "mamba2", "llama"):
        return model(idx, targets)[1]
    logits = model(idx) if name == "mambapy" else model(idx, use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def train_step(name, model, opt, idx, targets) -> float:
    t0 = time.perf_counter()
    loss_of(name, model, idx, targets).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main(argv):
    opts = dict(rounds="3", batch="8", seq="256", threads="0", skip="")
    for arg in argv:
        key, _, value = arg.lstrip("-").partition("=")
        if key not in opts:
            raise SystemExit(f"unknown option {arg}; options: {', '.join(opts)}")
        opts[key] = value
    if int(opts["threads"]):
        torch.set_num_threads(int(opts["threads"]))
    batch, seq, rounds = int(opts["batch"]), int(opts["seq"]), int(opts["rounds"])
    names = [n for n in ("mamba1", "mambapy", "hf", "mamba2", "llama") if n not in opts["skip"].split(",")]
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, VOCAB, (batch, seq), generator=g)
    targets = torch.randint(0, VOCAB, (batch, seq), generator=g)
    models = {}
    print(f"batch {batch} x {seq} tokens, fp32, {torch.get_num_threads()} threads", flush=True)
    for name in names:
        model = build(name).train()
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        first = train_step(name, model, opt, idx, targets)
        models[name] = (model, opt, [])
        print(f"{name:8} {params / 1e6:5.2f}M parameters, first step {first:.1f} s", flush=True)
    for r in range(rounds):
        for name, (model, opt, times) in models.items():
            times.append(train_step(name, model, opt, idx, targets))
        print(f"round {r + 1}: " + ", ".join(f"{n} {m[2][-1]:.2f} s" for n, m in models.items()), flush=True)
    tok_s = {n: batch * seq / statistics.median(m[2]) for n, m in models.items()}
    print("\ntokens/s (median of rounds): " + ", ".join(f"{n} {v:.0f}" for n, v in tok_s.items()))
    for a, b, target in (("mamba1", "mambapy", "target >= 5x"), ("mamba1", "hf", ""),
                         ("mamba2", "llama", "target >= 0.70x")):
        if a in tok_s and b in tok_s:
            print(f"{a} / {b}: {tok_s[a] / tok_s[b]:.2f}x {target}")
    return tok_s


if __name__ == "__main__":
    main(sys.argv[1:])
