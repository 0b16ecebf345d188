"""Leaner-Glue study, pre-training: the Llama (pair of configs/study_mamba.py), on 2 CPU cores.

    python studies/glue.py --step=pretrain    # this and the Mamba, each on the leaner and the original corpus

or by hand (the data from studies/glue.py --step=prepare: one tokenizer, trained on leaner, for both corpora):

    python train.py configs/study_llama.py --data_dir=out/study/data/leaner --out_dir=out/study/leaner_llama
    python train.py configs/study_llama.py --data_dir=out/study/data/ori --out_dir=out/study/ori_llama

The former CPU demo's shape (4 layers, width 256, 2.90M non-embedding parameters; configs/study_mamba.py
has 2.91M). Token budget, the same for all four runs: 1,000 steps of 16 x 256 tokens = 4.1M tokens,
about 2.6 passes over the leaner train split's four genres (1.56M tokens) and 2.0 over the original
(2.05M tokens: its texts are longer). Same recipe as the demo (peak 3e-3, cosine to 3e-4 after 100
warmup steps).

Why this size, measured on the 2-core Xeon of 2026-12-02 (AVX512-BF16, no AMX): this Llama trains at
7,600 tokens/s in fp32 with both cores and 4,900 with bf16 autocast (slower there, hence
--pretrain_flags=--dtype=fp32 in the study), and at 4,100-4,600 tokens/s on one core, which is how
the study ran it: pre-training on one core while the other fine-tuned each finished model. The
Mamba is slower (configs/study_mamba.py). The study must fit one session: four pre-trainings (about
16 minutes for each Llama and 20-25 for each Mamba on one core) and the fine-tuning sweep of 6
models x 5 tasks x 3 seeds (about 15 minutes per model on one core with 2 epochs and one learning
rate). On a faster machine raise max_steps first: every pre-training here is a few passes over a
small corpus, far short of the paper's budget.
"""
from model_llama import LlamaConfig

data_dir = "out/study/data/leaner"
out_dir = "out/study/leaner_llama"
model = LlamaConfig(vocab_size=2000, n_layer=4, n_embd=256, n_head=8, n_kv_head=4, ffn_hidden=688,
                    max_seq_len=256, rope_theta=500000.0, tie_embeddings=False)
seq_len = 256
batch_size = 16
grad_accum = 1
max_steps = 1000
lr = 3e-3
min_lr = 3e-4
warmup_steps = 100
decay = "cosine"
weight_decay = 0.1
grad_clip = 1.0
eval_every = 250
eval_steps = 8
log_every = 50
ckpt_every = 250
dtype = "auto"      # bf16 autocast on CPUs with native bf16, else fp32
compile = False
sample_tokens = 120
