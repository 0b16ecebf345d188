"""The paper's Llama pre-training on Leaner-Pretrain 10M (for a GPU user).

    python data/prepare.py --corpus=leaner --out_dir=out/data/leaner
    python train.py configs/leaner_llama.py                                   # one GPU
    torchrun --standalone --nproc_per_node=8 train.py configs/leaner_llama.py --grad_accum=2

Model: the paper's "14M" Llama (8 layers, width 336, 8 heads, FFN 1,344, vocabulary 2,000, untied).
Batch: 512 sequences x 1,024 tokens = 524,288 tokens per optimizer step, as in the paper:
batch_size x grad_accum x processes must stay 512 (32 x 16 x 1 here; 32 x 2 x 8 on eight GPUs).

Learning rate: 1e-3 peak, cosine to 1e-4 after a 10% linear warmup. Not tuned in this project (no
GPU was available to sweep it); chosen because a half-million-token batch gives low-noise gradients
and models of this size train stably at 1e-3 (the Pythia suite used 1e-3 for its smallest models
with an even larger batch), while higher rates gave no benefit in our short CPU runs of small models.
Steps: 200 x 0.52M tokens is about 105M tokens, ten passes over the ~10M-token full-release train split.
"""
from model_llama import LlamaConfig

data_dir = "out/data/leaner"
out_dir = "out/leaner_llama"
model = LlamaConfig(vocab_size=2000, n_layer=8, n_embd=336, n_head=8, n_kv_head=8, ffn_hidden=1344,
                    max_seq_len=1024, rope_theta=500000.0, tie_embeddings=False)
seq_len = 1024
batch_size = 32
grad_accum = 16
max_steps = 200
lr = 1e-3
min_lr = 1e-4
warmup_steps = 20
decay = "cosine"
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
eval_every = 20
eval_steps = 4
log_every = 1
ckpt_every = 20
dtype = "auto"      # bf16 on GPUs that support it
compile = True
