"""One run of the curriculum experiment: the paper's proxy model at CPU scale (curriculum.py).

    python curriculum.py configs/curriculum_proxy.py --strategy=self_loss --seed=1 --out_dir=out/curriculum/try

Model: the reference's proxy, a Llama of 4 layers, width 128, 4 heads, FFN 512, vocabulary 2,000.

How the reference's run was scaled (sized for about five minutes a run on 2 busy CPU cores; on the
quiet 2-core EPYC with AVX512-BF16 of the experiment in docs/results.md a run without scoring took
1-4 minutes, self_loss 14, and the 24 runs 88 minutes, with a Leaner-Glue pass running beside them):
  tokens per step  512 x 1,024 = 524,288  ->  16 x 256 = 4,096 (128x fewer: what 2 cores train at
                   a few thousand tokens per second)
  steps            2,500  ->  160, warmup 100 -> 8 (the same 4-5% of the run)
  evaluations      every 20 steps (125 in all)  ->  every 8 (20 in all): enough decisions for the
                   patience rule to grow the subset many times; 4 batches (16K fixed validation tokens)
  learning rate    1e-2  ->  3e-3 peak, cosine to 3e-4: 1e-2 is for a 128x larger batch; 3e-3 is
                   what this project's CPU demo trains stably at with the same 4,096-token batch
  curriculum       unchanged: start on 5% of the documents, grow by 5%, patience 1, threshold 0,
                   best loss kept across growths, one schedule over all steps
  multi_round      2 rounds of 80 steps, the second on half the windows sampled by exp(loss)
The local leaner train split (1.84M tokens, 4,341 documents) is small, so 160 x 4,096 = 655K tokens
is about a third of one pass; scoring the whole split (self_loss does it at every growth) costs the
time of a forward pass over 1.84M tokens, which is why the run is not longer.
"""
from model_llama import LlamaConfig

data_dir = "out/data/leaner"
out_dir = "out/curriculum/run"
model = LlamaConfig(vocab_size=2000, n_layer=4, n_embd=128, n_head=4, n_kv_head=4, ffn_hidden=512,
                    max_seq_len=256, rope_theta=500000.0, tie_embeddings=False)
seq_len = 256
batch_size = 16
grad_accum = 1
max_steps = 160
lr = 3e-3
min_lr = 3e-4
warmup_steps = 8
decay = "cosine"
weight_decay = 0.1
grad_clip = 1.0
eval_every = 8
eval_steps = 4
log_every = 8
ckpt_every = 8
sample_tokens = 0
peak_flops = 1e11   # MFU is not the point here; skips the 1 s matmul measurement per run
dtype = "auto"      # bf16 autocast where the CPU has native bf16
compile = False

init_fraction = 0.05
grow_fraction = 0.05
patience = 1
threshold = 0.0
rounds = 2
keep_fraction = 0.5
