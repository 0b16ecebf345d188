"""Leaner-Glue study, pre-training: the Mamba-2 of the same non-embedding size as configs/study_llama.py.

    python train.py configs/study_mamba.py --data_dir=out/study/data/leaner --out_dir=out/study/leaner_mamba
    python train.py configs/study_mamba.py --data_dir=out/study/data/ori --out_dir=out/study/ori_mamba

The CPU demo Mamba's mixers (Mamba-2, state 32, head dim 32, chunk 32, 3 layers of width 256, each
followed by a gated MLP), the MLP widened from 512 to 720 so that it has 2.91M non-embedding
parameters against the Llama's 2.90M. Everything else is the Llama's (the same data, order, token
budget and optimiser), as the paper pairs its two models; configs/study_llama.py says why this size
and budget.
"""
from model_mamba import MambaConfig

data_dir = "out/study/data/leaner"
out_dir = "out/study/leaner_mamba"
model = MambaConfig(mixer="mamba2", vocab_size=2000, n_layer=3, n_embd=256, d_state=32, d_conv=4, expand=2,
                    headdim=32, n_groups=1, chunk_size=32, mlp_hidden=720, tie_embeddings=False)
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
dtype = "auto"
compile = True      # measured x1.4 for this Mamba in fp32 on the 2-core Xeon (AVX512-BF16, no AMX)
sample_tokens = 120
