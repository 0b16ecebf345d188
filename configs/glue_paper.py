"""The paper's Leaner-Glue fine-tuning recipe, for a GPU (about 7 x 5 runs per task and model).

    python finetune_glue.py configs/glue_paper.py --task=all --init_from=out/leaner_llama \
        --out_dir=out/glue/leaner_llama

Learning rates 5e-6 ... 5e-3 and seeds 1, 53, 65, 256, 9264, batch 256, the paper's epochs per task
(wnli is not listed there: 50, as rte), linear decay to zero with no warmup and no weight decay, the
dev set scored four times per epoch and the best step kept. On 2 CPU cores this grid takes days;
configs/glue_cpu.py is the CPU version.
"""

lrs = (5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3)
seeds = (1, 53, 65, 256, 9264)
batch_size = 256
seq_len = 256
task_epochs = {"cola": 30, "sst2": 3, "mrpc": 30, "qqp": 3, "stsb": 30, "mnli": 3, "qnli": 3, "rte": 50,
               "wnli": 50}
decay = "linear"
min_lr = 0.0
warmup_steps = 0
weight_decay = 0.0
evals_per_epoch = 4
eval_batch_size = 256
dtype = "auto"      # bf16 autocast where the hardware has it
