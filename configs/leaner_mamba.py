"""The paper's Mamba pre-training on Leaner-Pretrain 10M (for a GPU user), beside configs/leaner_llama.py.

    python data/prepare.py --corpus=leaner --out_dir=out/data/leaner
    python train.py configs/leaner_mamba.py                                   # one GPU
    torchrun --standalone --nproc_per_node=8 train.py configs/leaner_mamba.py --grad_accum=2

Model: the paper's Mamba, a Mamba-2: 2 layers, width 768, each mixer followed by a SiLU-gated MLP of
width 1,536, vocabulary 2,000, RMSNorm, untied embeddings. State size 128, head dim 64 (24 heads over
the 1,536-wide inner stream), one group, conv width 4, expand 2: Mamba-2's usual settings, which the
paper does not restate. 17.7M parameters, 14.6M of them outside the two embedding matrices.

Everything else is the Llama's recipe, so that the two models see the same data in the same order
with the same optimiser: 512 x 1,024-token sequences per step, 1e-3 peak with cosine decay to 1e-4
after a 10% warmup, 200 steps (about ten passes over the train split). On a GPU the RMSNorm and the
selective scan run as Triton kernels (scan_backend "auto"); Mamba-2's scan is matmuls either way.
"""
from model_mamba import MambaConfig

data_dir = "out/data/leaner"
out_dir = "out/leaner_mamba"
model = MambaConfig(mixer="mamba2", vocab_size=2000, n_layer=2, n_embd=768, d_state=128, d_conv=4, expand=2,
                    headdim=64, n_groups=1, chunk_size=64, mlp_hidden=1536, tie_embeddings=False,
                    scan_backend="auto")
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
