"""Leaner-Glue on 2 CPU cores: the paper's recipe (configs/glue_paper.py) with a smaller grid and epoch caps.

    python finetune_glue.py configs/glue_cpu.py --task=cola,mrpc,rte,stsb,wnli --init_from=out/leaner_llama \
        --out_dir=out/glue/leaner_llama

Sized so that a study of 5 tasks (cola, mrpc, rte, stsb, wnli) x 3 seeds x 5 models (four pre-trained
runs and a from-scratch baseline) of a few million parameters fits in about an hour or a little more:

- Batch 32, not 256: with 256, rte (2,197 examples) gets 8 optimizer steps per epoch and wnli 2, so
  few epochs would mean almost no training; 32 gives 68 and 17.
- Two learning rates, 3e-4 and 1e-3, from the upper half of the paper's grid: a few epochs at batch
  32 with linear decay to zero leave a small model little time at a low rate, and from-scratch
  baselines need a high one most (a choice, not a measurement: the table lists the rate selected per
  cell, and a study whose cells all select one edge should widen the grid that way). Three seeds,
  the paper's first three.
- Epochs: 3 for cola, mrpc, rte and stsb (against the paper's 30-50), 5 for wnli (545 examples, seconds
  per epoch), 5 for sst2, 3 for qnli, 1 for qqp and mnli (their train sets are large).
  Cost: one epoch of the five study tasks is about 650k tokens (cola 99k, mrpc 181k, rte 181k, stsb
  165k, wnli 26k, padding included). A ~3M-parameter Llama fine-tunes at roughly 10-20k tokens/s
  with bf16 on 2 cores (12.6k on one core while another process held the other, measured with the
  demo's shape); cola's short batches are bound by per-step overhead instead (about 60 ms a step,
  232 steps an epoch). That is about 2.5 minutes per model, seed and learning rate, so
  2 x 3 x 5 x 2.5 = 75 minutes for the study; --lrs=1e-3 alone halves it.
- The dev set is scored twice per epoch (stsb's 1,500 dev pairs cost a second or two each time).
"""

lrs = (3e-4, 1e-3)
seeds = (1, 53, 65)
batch_size = 32
eval_batch_size = 128
seq_len = 256
task_epochs = {"cola": 3, "sst2": 5, "mrpc": 3, "qqp": 1, "stsb": 3, "mnli": 1, "qnli": 3, "rte": 3,
               "wnli": 5}
decay = "linear"
min_lr = 0.0
warmup_steps = 0
weight_decay = 0.0
evals_per_epoch = 2
dtype = "auto"      # bf16 autocast on CPUs with native bf16 (AVX512-BF16 / AMX), else fp32
compile = False     # batch shapes change every step
