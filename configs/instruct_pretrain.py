"""Pre-training for the instruction-following experiment (studies/instruction_following.py, issue 12): one Llama on
the leaner corpus and one on the original, same shape, tokenizer and budget.

    python studies/instruction_following.py --step=pretrain      # both; or by hand:
    python train.py configs/instruct_pretrain.py --data_dir=out/instruct_study/data/leaner \
        --out_dir=out/instruct_study/leaner_llama

The CPU demo's shape (configs/demo_llama.py: 4 layers, width 128, 0.73M non-embedding parameters),
the one that did best for ten minutes of 2-core training, on 600 steps of 16 x 256 tokens = 2.5M
tokens (about 1.6 passes over the leaner train split's four genres, 1.2 over the original's). Both
corpora use one tokenizer, trained on the leaner text (studies/instruction_following.py's prepare step, as the
Leaner-Glue study's), so instruction data and questions are the same token sequences for both.
"""
from model_llama import LlamaConfig

data_dir = "out/instruct_study/data/leaner"
out_dir = "out/instruct_study/leaner_llama"
model = LlamaConfig(vocab_size=2000, n_layer=4, n_embd=128, n_head=4, n_kv_head=2, ffn_hidden=344,
                    max_seq_len=256, rope_theta=500000.0, tie_embeddings=False)
seq_len = 256
batch_size = 16
grad_accum = 1
max_steps = 600
lr = 3e-3
min_lr = 3e-4
warmup_steps = 20
decay = "cosine"
weight_decay = 0.1
grad_clip = 1.0
eval_every = 50
eval_steps = 8
log_every = 25
ckpt_every = 100
dtype = "auto"
compile = True
threads = 1
sample_tokens = 0
