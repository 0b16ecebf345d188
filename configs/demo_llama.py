"""The CPU demo: a small Llama on the real Leaner-Pretrain data in about 10 minutes on 2 cores.

    python data/prepare.py --corpus=leaner --out_dir=out/data/leaner
    python train.py configs/demo_llama.py
    python sample.py --out_dir=out/demo_llama

Same architecture family as the paper's 14M model, scaled down (2.9M non-embedding parameters) so
that 2 CPU cores see about 1M tokens, half a pass over the local leaner train split, in ten minutes
(at about 1,700 tokens/s; on a busy machine it takes longer). Validation loss ends far below the
unigram baseline that train.py prints at the start.
"""
from model_llama import LlamaConfig

data_dir = "out/data/leaner"
out_dir = "out/demo_llama"
model = LlamaConfig(vocab_size=2000, n_layer=4, n_embd=256, n_head=8, n_kv_head=4, ffn_hidden=688,
                    max_seq_len=256, rope_theta=500000.0, tie_embeddings=False)
seq_len = 256
batch_size = 16
grad_accum = 1
max_steps = 240
lr = 3e-3
min_lr = 3e-4
warmup_steps = 20
decay = "cosine"
weight_decay = 0.1
grad_clip = 1.0
eval_every = 40
eval_steps = 8
log_every = 10
ckpt_every = 40
dtype = "auto"      # bf16 autocast on CPUs with native bf16, else fp32
compile = False     # measured ~1.0x on 2 CPU cores at this size, and compiling costs a minute
sample_prompt = "Once upon a time"
sample_tokens = 120
