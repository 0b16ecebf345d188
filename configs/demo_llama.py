"""The CPU demo: the best small Llama that about ten minutes of training on 2 cores gives.

    python data/prepare.py --corpus=leaner --out_dir=out/data/leaner
    python train.py configs/demo_llama.py
    python sample.py --out_dir=out/demo_llama

Chosen by a sweep (studies/demo_sweep.py, figures in docs/benchmarks.md) on the slowest CPU this project
has seen, a 2-core EPYC with AVX2 only (no native bf16, so fp32): at ten minutes, training is short
of tokens, not of parameters. Widths 256 (2.9M and 4.4M non-embedding parameters) saw 1.1-1.8M tokens
and ended at 1.86-2.05 validation bits per byte; width 192 (1.6M) saw 2.7M tokens, 1.69; width 128
(0.73M) at 9,000 tokens/s saw 5.1M tokens, almost three passes over the whole leaner train split
(1.84M tokens, all five genres present here), and did best. Doubling the learning rate to 6e-3 hurt
(1.86 to 2.00 at width 256). torch.compile is on: on that CPU it trains 2.5x faster than eager
(3,500 against 1,440 tokens/s at width 256), for about 35 s of compiling at the start.

The run ends by scoring the final model in bits per byte on the held-out leaner validation and test
text of the book, conversation, textbook and wiki genres (bits_per_byte.json in the run folder), and
with a sample.
"""
from model_llama import LlamaConfig

data_dir = "out/data/leaner"
out_dir = "out/demo_llama"
model = LlamaConfig(vocab_size=2000, n_layer=4, n_embd=128, n_head=4, n_kv_head=2, ffn_hidden=344,
                    max_seq_len=256, rope_theta=500000.0, tie_embeddings=False)
seq_len = 256
batch_size = 16
grad_accum = 1
max_steps = 1250
lr = 3e-3
min_lr = 3e-4
warmup_steps = 20
decay = "cosine"
weight_decay = 0.1
grad_clip = 1.0
eval_every = 125
eval_steps = 8
log_every = 25
ckpt_every = 125
dtype = "auto"      # bf16 autocast on CPUs with native bf16, else fp32
compile = True
bpb_genres = "book,conversation,textbook,wiki"
sample_prompt = "Once upon a time"
sample_tokens = 120
