"""Leaner-Glue fine-tuning speed: our classifier against transformers' LlamaForSequenceClassification.

    python bench/bench_glue.py [--task=rte] [--batch=32] [--rounds=3] [--steps=4] [--dtype=auto] [--threads=0]

One process, the paper's 14M Llama (random weights; speed does not depend on them), written once with
interop.save_hf and loaded by transformers as LlamaForSequenceClassification with pad_token_id =
end-of-text (so it finds each row's last real token), its score head copied from ours: the same
weights. The batches are real examples of the task, tokenized with the gpt-2K tokenizer and drawn
by tinyhelen.glue.GlueBatches (right-padded to the batch's longest member, from runs of similar
length); every contender trains on the same batches. A step is forward + loss + backward + fused
AdamW, in a plain PyTorch loop for each, under the same precision (bf16 autocast where the CPU has
native bf16, as the training loop does; fp32 with --dtype=fp32) and threads. Contenders:

    ours          tinyhelen.glue.SequenceClassifier, dynamic padding
    hf_dynamic    transformers, the same dynamically padded batches (with their attention mask)
    hf_pad256     transformers, every batch padded to 256 tokens: the reference fine-tuning setting

Rounds alternate the contenders (and who goes first); each contender takes one untimed step at the
start of its turn, then --steps timed ones. Ratios are medians over rounds of ours / theirs in the
same round, so slow spells of a shared machine that last longer than a round cancel out; each is
given by wall-clock time and by this process's CPU time (which ignores time spent descheduled; with
more than one thread it also counts OpenMP spin-waiting).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tinyhelen import config  # noqa: E402
from tinyhelen import interop  # noqa: E402
from tinyhelen import machine as machine_lib  # noqa: E402
from tinyhelen.config import setting  # noqa: E402
from tinyhelen.glue import GlueBatches, SequenceClassifier, encode  # noqa: E402
from data.tasks import read_glue  # noqa: E402
from model_llama import Llama, LlamaConfig  # noqa: E402


@dataclass
class BenchGlueConfig:
    task: str = "rte"
    glue_dir: str = "../shared/data/tinyhelen/leaner/glue"
    tokenizer: str = "out/data/leaner/tokenizer.json"  # written by data/prepare.py (the README's main job)
    batch: int = setting(32, min=1)
    rounds: int = setting(3, min=1)
    steps: int = setting(4, min=1)
    dtype: str = setting("auto", choices=machine_lib.DTYPE_CHOICES)
    threads: int = setting(0, min=0)
    seed: int = 0


def hf_inputs(x: torch.Tensor, lengths: torch.Tensor, eot: int, width: int | None = None):
    """input_ids and attention mask of right-padded rows, optionally padded further to width."""
    if width is not None and width > x.shape[1]:
        x = F.pad(x, (0, width - x.shape[1]), value=eot)
    mask = (torch.arange(x.shape[1])[None] < lengths[:, None]).long()
    return x, mask


def main(cfg: BenchGlueConfig) -> None:
    import transformers
    from data.tokenizer import load_tokenizer
    machine_lib.keep_freed_memory_mapped()
    m = machine_lib.setup("cpu", cfg.dtype, cfg.threads, distributed=False)
    tokenizer = load_tokenizer(cfg.tokenizer)
    eot = tokenizer.eot_id
    examples = read_glue(cfg.glue_dir, cfg.task, "train")
    data = encode(examples, tokenizer, 256, cfg.task)
    source = GlueBatches(data, cfg.batch, 256, seed=cfg.seed, bucket=16)
    n_batches = cfg.rounds * (cfg.steps + 1) + 2
    batches = [source.next_batch() for _ in range(n_batches)]
    source.close()

    torch.manual_seed(cfg.seed)
    backbone = Llama(LlamaConfig(vocab_size=tokenizer.vocab_size))
    with tempfile.TemporaryDirectory() as hf_dir:
        interop.save_hf(backbone, hf_dir, eos_token_id=eot)
        theirs = transformers.LlamaForSequenceClassification.from_pretrained(
            hf_dir, num_labels=2, pad_token_id=eot, torch_dtype=torch.float32)
    ours = SequenceClassifier(backbone, 2)
    with torch.no_grad():
        theirs.score.weight.copy_(ours.score.weight)
    ours.train(), theirs.train()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5, fused=True)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-5, fused=True)

    def step_ours(batch):
        x, lengths, labels = batch
        with m.autocast():
            loss = ours(x, lengths, labels)[1]
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        return loss.item()

    def step_theirs(batch, width=None):
        x, lengths, labels = batch
        ids, mask = hf_inputs(x, lengths, eot, width)
        with m.autocast():
            logits = theirs(input_ids=ids, attention_mask=mask).logits
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)
        return loss.item()

    # Same weights, same batch: the first losses agree (before either optimizer has stepped).
    first = (step_ours(batches[0]), step_theirs(batches[0]))
    contenders = {"ours": step_ours, "hf_dynamic": step_theirs, "hf_pad256": lambda b: step_theirs(b, 256)}
    tokens = statistics.fmean(b[0].shape[1] for b in batches)
    print(f"{cfg.task}: batch {cfg.batch}, mean padded width {tokens:.1f} tokens (256 for hf_pad256) | "
          f"{str(m.dtype).removeprefix('torch.')} | {torch.get_num_threads()} threads | first-step losses "
          f"ours {first[0]:.5f}, transformers {first[1]:.5f}", flush=True)
    rates = {name: [] for name in contenders}
    cpu_rates = {name: [] for name in contenders}  # by this process's CPU time: ignores descheduling
    names = list(contenders)
    for r in range(cfg.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            chunk = batches[1 + r * (cfg.steps + 1): 1 + (r + 1) * (cfg.steps + 1)]
            contenders[name](chunk[0])  # settle
            start, cpu_start = time.perf_counter(), time.process_time()
            for batch in chunk[1:]:
                contenders[name](batch)
            rates[name].append(cfg.steps * cfg.batch / (time.perf_counter() - start))
            cpu_rates[name].append(cfg.steps * cfg.batch / (time.process_time() - cpu_start))
        print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.1f} ex/s" for n in names), flush=True)
    print("\n| contender | examples/s (median) | ours / it (median of rounds) | by CPU time | target |\n"
          "|---|---|---|---|---|")
    targets = {"hf_dynamic": 1.3, "hf_pad256": 3.0}
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(rates["ours"], rates[name]))
        cpu_ratio = statistics.median(a / b for a, b in zip(cpu_rates["ours"], cpu_rates[name]))
        target = "" if name not in targets else \
            f"{targets[name]}x: {'met' if ratio >= targets[name] else 'not met'}"
        print(f"| {name} | {statistics.median(rates[name]):.1f} | x{ratio:.2f} | x{cpu_ratio:.2f} | {target} |")


if __name__ == "__main__":
    config.run_cli(main, BenchGlueConfig())
