"""Pre-train a tiny language model on prepared tokens.

    python train.py configs/demo_llama.py [--key=value ...]               # one process
    torchrun --standalone --nproc_per_node=2 train.py configs/leaner_llama.py   # DDP

One loop for every model type (the config's `model` dataclass picks Llama or Mamba): AdamW with
decay groups, linear warmup then cosine or linear decay, gradient accumulation and clipping, bf16
autocast where the hardware supports it, torch.compile, periodic validation, atomic checkpoints that
resume bit-for-bit (model, optimizer, step, RNG, data position), a metrics JSONL file and a loss plot.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import config as config_lib
from checkpoint import CheckpointError, atomic_torch_save, build_model, load_checkpoint, rng_state, set_rng_state
from data.tokens import TokenBatches, open_tokens, read_meta
from metrics import MetricsLog, measure_peak_flops, plot_losses
from model_llama import LlamaConfig


VALIDATION_SEED = 20250101  # fixed, so validation losses compare across runs and seeds


@dataclass
class TrainConfig:
    data_dir: str = "out/data/leaner"   # a folder written by data/prepare.py
    out_dir: str = "out/run"            # checkpoints, metrics.jsonl, loss.png
    model: Any = field(default_factory=LlamaConfig)  # LlamaConfig(...) or MambaConfig(...)
    # batch: each optimizer step sees batch_size * grad_accum * world_size sequences of seq_len tokens
    batch_size: int = 8
    seq_len: int = 256
    grad_accum: int = 1
    max_steps: int = 1000
    # AdamW and the learning-rate schedule
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    decay: str = "cosine"               # cosine | linear | constant
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0              # 0 turns clipping off
    # reporting and checkpoints
    eval_every: int = 200
    eval_steps: int = 20
    log_every: int = 10
    ckpt_every: int = 200
    sample_prompt: str = "Once upon a time"
    sample_tokens: int = 80
    wandb_project: str = ""             # empty: no wandb
    tensorboard: bool = False
    peak_flops: float = 0.0             # FLOP/s per process for MFU; 0 measures it at start
    # machine
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    dtype: str = "auto"                 # auto (bf16 where supported) | bf16 | fp32
    compile: bool = True                # torch.compile the model (falls back to eager if it fails)
    threads: int = 0                    # CPU threads per process; 0 = torch's default
    seed: int = 1337
    resume: bool = False                # continue from OUT_DIR/ckpt.pt


# ----------------------------------------------------------------------------- machine setup

def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def keep_freed_memory_mapped() -> None:
    """Ask glibc to keep freed memory in the process instead of returning it to the kernel.

    By default a freed block of more than a few MB goes back to the kernel, and the next step's
    tensor of the same size page-faults all its pages in again: measured here, about 0.7 us per
    4 KiB page, 3 ms to refault one 16 MB tensor, 20-50 ms of a CPU training step that alternates
    training and validation. Process memory then stays at its high-water mark, which training
    reaches in its first steps anyway. A no-op where glibc's mallopt is missing (macOS, musl)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 1 << 30)      # blocks up to 1 GiB come from the heap...
    libc.mallopt(m_trim_threshold, 2**31 - 1)    # ...which is never trimmed (the value is a C int)


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and torch.cuda.is_available():
        name = f"cuda:{local_rank}"
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in ("auto", "bf16", "fp32"):
        raise config_lib.ConfigError(f"dtype must be auto, bf16 or fp32, got {name!r}")
    if name == "auto":
        supported = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_supports_bf16()
        name = "bf16" if supported else "fp32"
    return torch.bfloat16 if name == "bf16" else torch.float32


def setup_distributed(device_name: str):
    """(rank, world_size, local_rank); starts the process group when launched by torchrun."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    use_nccl = torch.cuda.is_available() and device_name != "cpu"
    if use_nccl:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    return rank, world, local


# ----------------------------------------------------------------------------- optimisation

def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW where only matrices decay: embeddings and linear weights shrink towards zero, while
    norms, biases and parameters a model marks with _no_weight_decay (e.g. Mamba's A_log) do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel per parameter instead of about ten passes (CPU: 9 against 29 ms per step
    # for the 14M model); same update, same state dict, so checkpoints move between the two.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=device.type in ("cuda", "cpu"))


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to lr, then cosine or linear decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.decay == "constant" or step >= cfg.max_steps:
        return cfg.lr if cfg.decay == "constant" else cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.decay == "cosine":
        return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
    if cfg.decay == "linear":
        return cfg.lr - progress * (cfg.lr - cfg.min_lr)
    raise config_lib.ConfigError(f"decay must be cosine, linear or constant, got {cfg.decay!r}")


def unigram_loss(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int) -> float:
    """Validation cross-entropy of a unigram model fitted on the training tokens (add-one smoothed):
    the baseline a trained model must beat clearly to have learned anything about context."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1.0
    log_probs = np.log(counts / counts.sum())
    return float(-log_probs[np.asarray(val_tokens)].mean())


# ----------------------------------------------------------------------------- the run

class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rank, self.world, local_rank = setup_distributed(cfg.device)
        self.is_main = self.rank == 0
        self.device = pick_device(cfg.device, local_rank)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        if self.device.type == "cpu":
            keep_freed_memory_mapped()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.out_dir = Path(cfg.out_dir)
        self.meta = read_meta(cfg.data_dir)
        if self.meta["vocab_size"] > cfg.model.vocab_size:
            raise config_lib.ConfigError(
                f"the tokenizer of {cfg.data_dir} has {self.meta['vocab_size']} tokens but "
                f"model.vocab_size is {cfg.model.vocab_size}: set --model.vocab_size={self.meta['vocab_size']}")

        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.model = build_model(cfg.model).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.train_batches = TokenBatches(open_tokens(cfg.data_dir, "train"), cfg.batch_size, cfg.seq_len,
                                          seed=cfg.seed, rank=self.rank, world_size=self.world)
        self.val_tokens = open_tokens(cfg.data_dir, "validation")
        self.step = 0
        if cfg.resume:
            self._resume()
        self.runner = self._wrap(self.model)

    def _wrap(self, model):
        if self.cfg.compile:
            model = torch.compile(model)
        if self.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return model

    def _resume(self) -> None:
        ckpt = load_checkpoint(self.out_dir / "ckpt.pt", map_location=self.device)
        saved, now = ckpt["config"], config_lib.to_dict(self.cfg)
        for key in ("model", "batch_size", "seq_len", "grad_accum", "data_dir", "seed"):
            if saved[key] != now[key]:
                raise config_lib.ConfigError(
                    f"--resume: {key} differs from the checkpoint's ({saved[key]!r} there, {now[key]!r} now); "
                    f"resume with the same settings, or train into a new --out_dir")
        if ckpt.get("world_size", 1) != self.world:
            raise config_lib.ConfigError(f"--resume: the checkpoint was written by {ckpt['world_size']} "
                                         f"processes, this run has {self.world}; use the same number")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.train_batches.load_state_dict(ckpt["data"])
        set_rng_state(ckpt["rng"])
        self.step = ckpt["step"]
        self.log(f"resumed from {self.out_dir / 'ckpt.pt'} at step {self.step}")

    def log(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16)

    def mean_over_ranks(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    def train_step(self) -> float:
        """One optimizer step over grad_accum micro-batches; returns the mean loss."""
        cfg, total = self.cfg, 0.0
        for micro in range(cfg.grad_accum):
            x, y = (t.to(self.device, non_blocking=True) for t in self.train_batches.next_batch())
            last = micro == cfg.grad_accum - 1
            # Under DDP, gradients are averaged across ranks only on the last micro-step.
            sync = contextlib.nullcontext() if last or self.world == 1 else self.runner.no_sync()
            with sync:
                with self.autocast():
                    _, loss = self.runner(x, y)
                (loss / cfg.grad_accum).backward()
            total += loss.item()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, cfg)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total / cfg.grad_accum

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean loss over the first eval_steps optimizer-step-sized batches of the validation split.

        The same windows every time (whatever the run's seed), and the same set for any split of the global batch into
        processes and accumulation steps, so runs with different world sizes report the same number."""
        cfg = self.cfg
        # A fixed shuffle spreads the windows over every genre (the file is sorted by genre).
        batches = TokenBatches(self.val_tokens, cfg.batch_size, cfg.seq_len, seed=VALIDATION_SEED,
                               rank=self.rank, world_size=self.world)
        micro_steps = min(cfg.eval_steps * cfg.grad_accum, batches.num_windows // batches.global_batch)
        self.model.eval()
        total = 0.0
        for _ in range(micro_steps):
            x, y = (t.to(self.device) for t in batches.next_batch())
            with self.autocast():
                total += self.runner(x, y)[1].item()
        self.model.train()
        return self.mean_over_ranks(total / micro_steps)

    def save(self) -> None:
        if not self.is_main:
            return
        atomic_torch_save({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
            "rng": rng_state(), "data": self.train_batches.state_dict(), "world_size": self.world,
            "config": config_lib.to_dict(self.cfg), "data_meta": self.meta,
        }, self.out_dir / "ckpt.pt")

    def copy_tokenizer(self) -> None:
        """Make the run folder self-contained: sample/evaluate/export need only --out_dir."""
        tok = self.meta.get("tokenizer", "")
        source = Path(self.cfg.data_dir) / tok
        if tok and source.is_file():
            shutil.copyfile(source, self.out_dir / "tokenizer.json")

    def run(self) -> None:
        cfg = self.cfg
        tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * self.world
        flops_per_token = self.model.flops_per_token(cfg.seq_len)
        peak = cfg.peak_flops or measure_peak_flops(self.device, self.dtype)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.copy_tokenizer()
            metrics = MetricsLog(self.out_dir, self.step if cfg.resume else None, cfg.wandb_project,
                                 cfg.tensorboard, config_lib.to_dict(cfg))
        baseline = unigram_loss(self.train_batches.tokens, self.val_tokens, cfg.model.vocab_size)
        self.log(f"{type(self.model).__name__}: {self.model.num_params():,} non-embedding parameters, "
                 f"{self.model.num_params(non_embedding=False):,} in all | {self.device} "
                 f"{str(self.dtype).removeprefix('torch.')} | {self.world} process(es) | "
                 f"{tokens_per_step:,} tokens/step | peak {peak / 1e9:.0f} GFLOP/s per process")
        self.log(f"unigram baseline validation loss: {baseline:.4f}")
        self.model.train()
        window_start, window_tokens = time.perf_counter(), 0
        while self.step < cfg.max_steps:
            try:
                loss = self.train_step()
            except Exception as e:  # compiled code can fail on some platforms: finish the run in eager
                if not cfg.compile or self.step > 0 or self.runner is self.model:
                    raise
                self.log(f"warning: torch.compile failed ({type(e).__name__}: {str(e)[:200]}); running eager")
                self.cfg = cfg = dataclasses.replace(cfg, compile=False)
                self.runner = self._wrap(self.model)
                self.optimizer.zero_grad(set_to_none=True)
                self.train_batches.load_state_dict({"epoch": 0, "cursor": 0, "seed": cfg.seed})
                continue
            window_tokens += tokens_per_step
            row = None
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                loss = self.mean_over_ranks(loss)
                elapsed = time.perf_counter() - window_start
                tok_s = window_tokens / elapsed
                row = {"step": self.step, "loss": loss, "lr": learning_rate(self.step - 1, cfg),
                       "tokens_per_s": tok_s, "mfu": tok_s * flops_per_token / (peak * self.world),
                       "tokens": self.step * tokens_per_step}
                self.log(f"step {self.step:5d}/{cfg.max_steps} | loss {loss:.4f} | lr {row['lr']:.2e} | "
                         f"{tok_s:,.0f} tok/s | mfu {100 * row['mfu']:.1f}%")
            if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                val = self.validation_loss()
                self.log(f"step {self.step:5d} | validation loss {val:.4f} (unigram baseline {baseline:.4f})")
                row = {**(row or {"step": self.step}), "val_loss": val}
            if row and self.is_main:
                metrics.write(row)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.max_steps:
                self.save()
            if row:
                window_start, window_tokens = time.perf_counter(), 0
        if self.is_main:
            metrics.close()
            plot_losses(self.out_dir / "metrics.jsonl", self.out_dir / "loss.png",
                        title=f"{Path(cfg.out_dir).name}: {type(self.model).__name__}")
            self.log(f"wrote {self.out_dir / 'ckpt.pt'}, {self.out_dir / 'metrics.jsonl'}, {self.out_dir / 'loss.png'}")
            self.print_sample()
        if self.world > 1:
            dist.destroy_process_group()

    def print_sample(self) -> None:
        if not self.cfg.sample_tokens:
            return
        from sample import load_run_tokenizer
        tokenizer = load_run_tokenizer(self.out_dir, self.meta)
        prompt = [tokenizer.eot_id] + tokenizer.encode(self.cfg.sample_prompt)
        idx = torch.tensor([prompt], device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        self.model.eval()
        out = self.model.generate(idx, self.cfg.sample_tokens, temperature=0.8, top_k=50,
                                  eot_id=tokenizer.eot_id, generator=generator)
        new_tokens = out[0, 1:].tolist()
        if tokenizer.eot_id in new_tokens[len(prompt) - 1:]:  # stop at the end of the first document
            new_tokens = new_tokens[:new_tokens.index(tokenizer.eot_id, len(prompt) - 1)]
        self.log("sample:\n" + tokenizer.decode(new_tokens))


def main(cfg: TrainConfig) -> None:
    try:
        Trainer(cfg).run()
    except (config_lib.ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    config_lib.run_cli(main, TrainConfig())
