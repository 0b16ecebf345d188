"""The larger Llama that the parameter-inheritance experiment cuts configs/rethink_llama.py's shape
out of (issue 14):

    python train.py configs/rethink_source.py
    python studies/inheritance.py --from=out/rethink/source --to=configs/rethink_llama.py \
        --base=configs/rethink_llama.py ...

6 layers, width 192, 6 heads over 3 kv heads (head dim 32 and 2 query heads per kv head, as the
target), FFN 512: 2.4M non-embedding parameters, 3.3x the target's. Every size is at least the
target's (4 layers, width 128, 4 over 2 heads, FFN 344), so each can be cut down to it. It trains on
the same leaner data and schedule as the target for 400 steps (1.6M tokens), longer than the
250-step target runs: the paper inherits from a model trained well beyond what the small one gets.
"""
from model_llama import LlamaConfig

data_dir = "out/data/leaner"
out_dir = "out/rethink/source"
model = LlamaConfig(vocab_size=2000, n_layer=6, n_embd=192, n_head=6, n_kv_head=3, ffn_hidden=512,
                    max_seq_len=256, rope_theta=500000.0, tie_embeddings=False)
seq_len = 256
batch_size = 16
grad_accum = 1
max_steps = 400
lr = 3e-3
min_lr = 3e-4
warmup_steps = 20
decay = "cosine"
weight_decay = 0.1
grad_clip = 1.0
eval_every = 50
eval_steps = 8
log_every = 25
ckpt_every = 50
dtype = "auto"
compile = True
threads = 1
sample_tokens = 0
bpb_genres = "book,conversation,textbook,wiki"
