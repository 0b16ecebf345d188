"""The CPU demo for Mamba: a small Mamba-2 on the real Leaner-Pretrain data in about 10 minutes on 2 cores.

    python data/prepare.py --corpus=leaner --out_dir=out/data/leaner
    python train.py configs/demo_mamba.py
    python sample.py --out_dir=out/demo_mamba

The same family as the paper's Mamba (Mamba-2 mixers, each followed by a gated MLP, untied
embeddings), scaled down like configs/demo_llama.py (2.4M non-embedding parameters against its 2.9M)
and trained with its recipe: 16 x 256-token batches, the same learning rates. The Mamba-2 scan is
chunked matmuls (tinykernels/ssd.py); measured interleaved with the Llama demo on the shared 2-core
machine it trains at 0.79x the Llama demo's tokens/s, so it takes 320 steps (1.3M tokens, about 70%
of a pass over the local leaner train split) to fit the same ten minutes. For a Mamba-1 demo, add --model.mixer=mamba1 --model.d_state=16 --model.mlp_hidden=0.
"""
from model_mamba import MambaConfig

data_dir = "out/data/leaner"
out_dir = "out/demo_mamba"
model = MambaConfig(mixer="mamba2", vocab_size=2000, n_layer=3, n_embd=256, d_state=32, d_conv=4, expand=2,
                    headdim=32, n_groups=1, chunk_size=32, mlp_hidden=512, tie_embeddings=False)
seq_len = 256
batch_size = 16
grad_accum = 1
max_steps = 320
lr = 3e-3
min_lr = 3e-4
warmup_steps = 30
decay = "cosine"
weight_decay = 0.1
grad_clip = 1.0
eval_every = 80
eval_steps = 8
log_every = 10
ckpt_every = 80
dtype = "auto"      # bf16 autocast on CPUs with native bf16, else fp32
compile = False     # compiling costs minutes on 2 cores, longer than it saves in a 10-minute run
sample_prompt = "Once upon a time"
sample_tokens = 120
