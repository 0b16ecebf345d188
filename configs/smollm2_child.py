"""A 14M Llama cut out of SmolLM2-135M (issue 24): its vocabulary cut to the 4,000 ids leaner train
uses most, its layers, heads, neurons and channels chosen by inherit.py, then trained on leaner text.

    python data/prepare.py --tokenizer=compact-smollm2:4000 --out_dir=out/data/leaner_smollm2_4k
    python inherit.py --from=smollm2-135m --to=configs/smollm2_child.py --out_dir=out/smollm2_child_init \
        --tokenizer=out/data/leaner_smollm2_4k/tokenizer.json --criterion=taylor
    python train.py configs/smollm2_child.py --init_from=out/smollm2_child_init

The paper's 14M shape (width 336, 8 heads of 42) cannot be cut from SmolLM2, whose heads are 64 wide
and kept whole (inherit.py's docstring gives the rule). This is the nearest: 8 layers, width 384 =
6 heads x 64 over 2 kv heads (groups of 3, as SmolLM2's), FFN 1,024; 12.6M non-embedding parameters
and 1.5M in the tied 4,000-row embedding, 14.1M in all. SmolLM2's rotary base, epsilon and tied head.
The schedule is the rethink configs' on this shape, not tuned for an inherited start.
"""
from model_llama import LlamaConfig

data_dir = "out/data/leaner_smollm2_4k"
out_dir = "out/smollm2_child"
model = LlamaConfig(vocab_size=4000, n_layer=8, n_embd=384, n_head=6, n_kv_head=2, ffn_hidden=1024,
                    max_seq_len=256, rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True)
seq_len = 256
batch_size = 16
grad_accum = 1
max_steps = 250
lr = 1e-3
min_lr = 1e-4
warmup_steps = 12
decay = "cosine"
weight_decay = 0.1
grad_clip = 1.0
eval_every = 25
eval_steps = 8
log_every = 25
ckpt_every = 50
dtype = "auto"
compile = True
bpb_genres = "book,conversation,textbook,wiki"
sample_prompt = "Once upon a time"
sample_tokens = 60
