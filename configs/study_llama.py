"""Leaner-Glue study, pre-training: the Llama (pair of configs/study_mamba.py), on 2 CPU cores.

    python glue_study.py --step=pretrain    # this and the Mamba, each on the leaner and the original corpus

or by hand (the data from glue_study.py --step=prepare: one tokenizer, trained on leaner, for both corpora):

    python train.py configs/study_llama.py --data_dir=out/study/data/leaner --out_dir=out/study/leaner_llama
    python train.py configs/study_llama.py --data_dir=out/study/data/ori --out_dir=out/study/ori_llama

The former CPU demo's shape (4 layers, width 256, 2.90M non-embedding parameters; configs/study_mamba.py
has 2.91M), which trains at about 18,500-26,500 tokens/s with bf16 on the 2-core Xeon (README main job,
docs/benchmarks.md); the Mamba at about 0.8x that. Token budget, the same for all four runs: 6,000
steps of 16 x 256 tokens = 24.6M tokens, about 15 passes over the leaner train split's four genres
(1.58M tokens; the paper's own run is about 10 passes over its corpus), fewer over the original
corpus, whose texts are longer. At the demo's rates the four runs take about 1.5 hours on a quiet
machine, more on a shared one: an estimate to check against the study's recorded wall time
(out/study/times.jsonl). Same recipe as the demo (peak 3e-3, cosine to 3e-4 after 100 warmup steps).
Why this size: the fine-tuning sweep that follows (6 models x 5 tasks x 3 seeds x 2 learning rates)
must also fit in about an hour, which a 14M model (five times the compute per token) would not.
"""
from model_llama import LlamaConfig

data_dir = "out/study/data/leaner"
out_dir = "out/study/leaner_llama"
model = LlamaConfig(vocab_size=2000, n_layer=4, n_embd=256, n_head=8, n_kv_head=4, ffn_hidden=688,
                    max_seq_len=256, rope_theta=500000.0, tie_embeddings=False)
seq_len = 256
batch_size = 16
grad_accum = 1
max_steps = 6000
lr = 3e-3
min_lr = 3e-4
warmup_steps = 100
decay = "cosine"
weight_decay = 0.1
grad_clip = 1.0
eval_every = 500
eval_steps = 8
log_every = 50
ckpt_every = 500
dtype = "auto"      # bf16 autocast on CPUs with native bf16, else fp32
compile = False
sample_tokens = 120
