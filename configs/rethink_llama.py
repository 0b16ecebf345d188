"""The training config shared by the three experiments of "Rethinking Optimization and Architecture
for Tiny Language Models" (issue 14): the CPU demo's Llama shape, on a budget that fits 2 cores.

    python studies/tokenizer_choice.py --base=configs/rethink_llama.py ...   # compact tokenizers
    python studies/depth_width.py --base=configs/rethink_llama.py ...             # depth against width
    python studies/inheritance.py --base=configs/rethink_llama.py ...     # parameter inheritance

Model: configs/demo_llama.py's (4 layers, width 128, 4 heads over 2 kv heads, FFN 344; 0.73M
non-embedding parameters), the shape that did best for ten minutes of 2-core training.
Budget: 250 steps of 16 x 256 = 4,096 tokens, 1.02M tokens (about half a pass over the local leaner
train split), the demo's learning rate and schedule with a warmup scaled to the shorter run.
One thread per process, so two runs of an experiment (or two experiments) share the 2 cores; on the
2-core AMD EPYC with AVX512-BF16 of docs/results.md a run took 3-4 minutes in bf16, compiled.
Evaluation every 25 steps on 8 fixed validation batches (32K tokens): the loss curve the
steps-to-target figures are read from.
"""
from model_llama import LlamaConfig

data_dir = "out/data/leaner"
out_dir = "out/rethink/run"
model = LlamaConfig(vocab_size=2000, n_layer=4, n_embd=128, n_head=4, n_kv_head=2, ffn_hidden=344,
                    max_seq_len=256, rope_theta=500000.0, tie_embeddings=False)
seq_len = 256
batch_size = 16
grad_accum = 1
max_steps = 250
lr = 3e-3
min_lr = 3e-4
warmup_steps = 12
decay = "cosine"
weight_decay = 0.1
grad_clip = 1.0
eval_every = 25
eval_steps = 8
log_every = 25
ckpt_every = 50
dtype = "auto"      # bf16 autocast on CPUs with native bf16, else fp32
compile = True
threads = 1
sample_tokens = 0
