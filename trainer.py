"""The one training loop every stage runs: pre-training, fine-tuning, instruction tuning, curricula.

    trainer = Trainer(cfg, train_source, model=None, loss=lm_loss, evaluate=None, listeners=())
    trainer.run()

What the loop owns: AdamW with decay groups, linear warmup then cosine or linear decay, gradient
accumulation and clipping, bf16 autocast where the hardware supports it, torch.compile, DDP,
periodic evaluation, atomic checkpoints that resume bit-for-bit, a metrics JSONL file and a loss
plot. What a stage brings:

  train_source  a batch source (the protocol below) that yields the training batches
  model         the module to train (default: the model of cfg.model, or of cfg.init_from)
  loss          loss(runner, batch) -> scalar loss tensor (default: the language-model loss)
  evaluate      evaluate(trainer) -> dict of metrics, run every eval_every steps and at the end
  listeners     objects told each evaluation's metrics (on_evaluation), e.g. a curriculum

The batch-source protocol:
    next_batch() -> tuple of tensors         language-model sources give (x, y), y == -1 unscored
    state_dict() -> dict                     plain data, saved in the checkpoint
    load_state_dict(state) -> None           continue exactly where state_dict was taken
    on_evaluation(step, metrics)  optional   hear each evaluation (it may change what it yields)
A source's state, and that of every listener with state_dict/load_state_dict, is part of the
checkpoint, so a run killed in the middle of a curriculum resumes exactly.

Starting points. `resume` continues this run from OUT_DIR/ckpt.pt exactly (model, optimizer, step,
RNG, source and listener states). `init_from` starts a new run from another run's weights (a run
folder, a ckpt.pt, or a `transformers` folder) with a fresh optimizer, step and schedule; the model
may have weights the source lacks (a classifier head: reported as new) and the source weights the
model has no place for (an LM head under a classifier: reported as dropped).

One writer per run folder: the Trainer holds OUT_DIR's lock (tinyhelen/runlock.py) from its
construction, before the checkpoint is read or the model built, to the end of run(); a second
process training into the same folder stops with exit 2 naming the first.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from tinyhelen import config as config_lib
from tinyhelen import machine as machine_lib
from tinyhelen import runlock
from tinyhelen.checkpoint import atomic_torch_save, build_model, load_checkpoint, load_matching_weights, load_source, \
    model_config_from_dict, rng_state, set_rng_state
from tinyhelen.config import setting
from tinyhelen.metrics import MetricsLog, measure_peak_flops, plot_losses
from tinyhelen.pretrained import resolve
from model_llama import LlamaConfig


def _beta(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _genre_list(value: str) -> str | None:
    from data.corpus import GENRES
    names = [g.strip() for g in value.split(",") if g.strip()]
    bad = [g for g in names if g not in GENRES]
    return f"must be empty or a comma list of {', '.join(GENRES)} (unknown: {', '.join(bad)})" if bad else None


@dataclass
class TrainConfig:
    data_dir: str = "out/data/leaner"   # a folder written by data/prepare.py
    out_dir: str = "out/run"            # checkpoints, metrics.jsonl, loss.png
    model: Any = field(default_factory=LlamaConfig)  # LlamaConfig(...) or MambaConfig(...)
    init_from: str = ""                 # a run folder, ckpt.pt or transformers folder to start from
    # batch: each optimizer step sees batch_size * grad_accum * world_size sequences of seq_len tokens
    batch_size: int = setting(8, min=1)
    seq_len: int = setting(256, min=2)
    grad_accum: int = setting(1, min=1)
    max_steps: int = setting(1000, min=1)
    # AdamW and the learning-rate schedule
    lr: float = setting(1e-3, above=0)
    min_lr: float = setting(1e-4, min=0)
    warmup_steps: int = setting(100, min=0)
    decay: str = setting("cosine", choices=("cosine", "linear", "constant"))
    weight_decay: float = setting(0.1, min=0)
    beta1: float = setting(0.9, check=_beta)
    beta2: float = setting(0.95, check=_beta)
    grad_clip: float = setting(1.0, min=0)  # 0 turns clipping off
    # reporting and checkpoints
    eval_every: int = setting(200, min=1)
    eval_steps: int = setting(20, min=1)
    log_every: int = setting(10, min=1)
    ckpt_every: int = setting(200, min=1)
    sample_prompt: str = "Once upon a time"
    sample_tokens: int = setting(80, min=0)
    # pre-training: at the end, bits per byte on the raw validation and test text of these genres of
    # the corpus the data was prepared from (comma list; empty: skip)
    bpb_genres: str = setting("", check=_genre_list)
    wandb_project: str = ""             # empty: no wandb
    tensorboard: bool = False
    peak_flops: float = setting(0.0, min=0)  # FLOP/s per process for MFU; 0 measures it at start
    # machine
    device: str = setting("auto", check=machine_lib.check_device)  # auto | cpu | cuda | cuda:N
    dtype: str = setting("auto", choices=machine_lib.DTYPE_CHOICES)  # auto: bf16 where native
    compile: bool = True                # torch.compile the model (falls back to eager if it fails)
    threads: int = setting(0, min=0)    # CPU threads per process; 0 = torch's default
    seed: int = 1337
    resume: bool = False                # continue from OUT_DIR/ckpt.pt

    def __post_init__(self):
        max_len = getattr(self.model, "max_seq_len", None)
        if max_len is not None and self.seq_len > max_len:
            raise ValueError(f"seq_len {self.seq_len} is longer than model.max_seq_len {max_len}: lower "
                             f"--seq_len or raise --model.max_seq_len")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} is above lr {self.lr}")


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
    if cfg.decay == "constant":
        return cfg.lr
    if step >= cfg.max_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.decay == "cosine":
        return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
    return cfg.lr - progress * (cfg.lr - cfg.min_lr)  # linear


def lm_loss(runner, batch) -> torch.Tensor:
    """The language-model loss of a batch (x, y): mean cross-entropy over targets that are not -1.

    With gradient accumulation each micro-batch's mean counts equally; batches with loss masks
    of different sizes therefore weigh their tokens slightly differently (as in nanoGPT)."""
    x, y = batch
    return runner(x, y)[1]


# ----------------------------------------------------------------------------- the loop

class Trainer:
    def __init__(self, cfg: TrainConfig, train_source, *, model: torch.nn.Module | None = None,
                 loss: Callable = lm_loss, evaluate: Callable[["Trainer"], dict] | None = None,
                 listeners=(), init_prefix: str = "", data_meta: dict | None = None,
                 machine: machine_lib.Machine | None = None):
        self._owns_machine = machine is None
        self.machine = machine or machine_lib.setup(cfg.device, cfg.dtype, cfg.threads)
        self.data_meta = data_meta or {}  # the prepared data's meta.json, kept in the checkpoint
        self.device, self.dtype = self.machine.device, self.machine.dtype
        self.is_main = self.machine.is_main
        self.out_dir = Path(cfg.out_dir)
        self.train_source, self.loss_fn, self.evaluate_fn = train_source, loss, evaluate
        self.listeners = ([train_source] if hasattr(train_source, "on_evaluation") else []) + list(listeners)
        self.init_report: dict[str, list[str]] | None = None
        self.step, self.tokens_seen = 0, 0
        self.train_seconds = 0.0  # time in optimizer steps only (no evaluation, checkpoints or start-up)
        self._run_lock = runlock.acquire(self.out_dir)  # before any compute; rank 0's, under torchrun
        try:
            self._start(cfg, model, init_prefix)
        except BaseException:  # a bad checkpoint or --resume mismatch: the folder is free again
            self._run_lock.release()
            raise

    # ---------------------------------------------------------------- setup
    def _start(self, cfg: TrainConfig, model: torch.nn.Module | None, init_prefix: str) -> None:
        """Read the checkpoint (resume) or the init_from weights, build the model and optimizer."""
        resuming, source, ckpt = cfg.resume, None, None
        if resuming:
            ckpt = load_checkpoint(self.out_dir / "ckpt.pt", map_location=self.device)
            if cfg.init_from and model is None:  # the architecture came with the init_from weights
                cfg = dataclasses.replace(cfg, model=model_config_from_dict(ckpt["config"]["model"]))
        elif cfg.init_from:
            source = load_source(resolve(cfg.init_from))  # a short name or .gguf: its imported run
            if model is None:  # the architecture comes with the weights
                cfg = dataclasses.replace(cfg, model=source.model_config)
        self.cfg = cfg
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.model = (model if model is not None else build_model(cfg.model)).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        if source is not None:
            self.init_report = load_matching_weights(self.model, source.state_dict, init_prefix)
            self.log(f"init_from {cfg.init_from}: " + ", ".join(
                f"{len(names)} {kind}" for kind, names in self.init_report.items()))
            for kind in ("new", "dropped"):
                if self.init_report[kind]:
                    self.log(f"  {kind}: {', '.join(self.init_report[kind][:8])}"
                             f"{' ...' if len(self.init_report[kind]) > 8 else ''}")
        if resuming:
            self._resume(ckpt)
        self.runner = self._wrap(self.model)

    def _wrap(self, model):
        if self.cfg.compile:
            model = torch.compile(model)
        if self.machine.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return model

    def _stateful_listeners(self) -> list:
        return [x for x in self.listeners if x is not self.train_source and hasattr(x, "state_dict")]

    def _resume(self, ckpt: dict) -> None:
        saved, now = ckpt["config"], config_lib.to_dict(self.cfg)
        for key in ("model", "batch_size", "seq_len", "grad_accum", "data_dir", "seed", "init_from"):
            if saved.get(key) != now.get(key):
                raise config_lib.ConfigError(
                    f"--resume: {key} differs from the checkpoint's ({saved.get(key)!r} there, {now.get(key)!r} "
                    f"now); resume with the same settings, or train into a new --out_dir")
        if ckpt.get("world_size", 1) != self.machine.world:
            raise config_lib.ConfigError(f"--resume: the checkpoint was written by {ckpt['world_size']} "
                                         f"processes, this run has {self.machine.world}; use the same number")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.train_source.load_state_dict(ckpt["data"])
        for listener, state in zip(self._stateful_listeners(), ckpt.get("listeners", [])):
            listener.load_state_dict(state)
        set_rng_state(ckpt["rng"])
        self.step, self.tokens_seen = ckpt["step"], ckpt.get("tokens_seen", 0)
        self.train_seconds = ckpt.get("train_seconds", 0.0)
        self.log(f"resumed from {self.out_dir / 'ckpt.pt'} at step {self.step}")

    # ---------------------------------------------------------------- helpers for stages
    def log(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    def autocast(self):
        return self.machine.autocast()

    def learning_rate(self, step: int) -> float:
        """The rate of optimizer step `step`: the config's schedule. A stage may replace it (the
        curriculum can restart the schedule at each growth of its data)."""
        return learning_rate(step, self.cfg)

    def to_device(self, batch):
        return tuple(t.to(self.device, non_blocking=True) if torch.is_tensor(t) else t for t in batch)

    # ---------------------------------------------------------------- one step
    def train_step(self) -> tuple[float, int]:
        """One optimizer step over grad_accum micro-batches; returns (mean loss, input tokens)."""
        cfg, total, tokens = self.cfg, 0.0, 0
        for micro in range(cfg.grad_accum):
            batch = self.to_device(self.train_source.next_batch())
            tokens += batch[0].numel()
            last = micro == cfg.grad_accum - 1
            # Under DDP, gradients are averaged across ranks only on the last micro-step.
            sync = contextlib.nullcontext() if last or self.machine.world == 1 else self.runner.no_sync()
            with sync:
                with self.autocast():
                    loss = self.loss_fn(self.runner, batch)
                (loss / cfg.grad_accum).backward()
            total += loss.item()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total / cfg.grad_accum, tokens * self.machine.world

    def evaluate(self) -> dict:
        """The stage's evaluation with the model in eval mode and autograd off; {} without one."""
        if self.evaluate_fn is None:
            return {}
        self.model.eval()
        try:
            with torch.no_grad():
                metrics = self.evaluate_fn(self)
        finally:
            self.model.train()
        for listener in self.listeners:
            if hasattr(listener, "on_evaluation"):
                listener.on_evaluation(self.step, metrics)
        return metrics

    def save(self) -> None:
        if not self.is_main:
            return
        atomic_torch_save({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
            "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds, "rng": rng_state(),
            "data": self.train_source.state_dict(), "world_size": self.machine.world,
            "listeners": [x.state_dict() for x in self._stateful_listeners()],
            "config": config_lib.to_dict(self.cfg), "data_meta": self.data_meta,
        }, self.out_dir / "ckpt.pt")

    # ---------------------------------------------------------------- the run
    def run(self) -> None:
        """Train to max_steps, then give the run folder's lock back."""
        try:
            self._train()
        finally:
            self._run_lock.release()

    def _train(self) -> None:
        cfg = self.cfg
        flops_per_token = self.model.flops_per_token(cfg.seq_len) if hasattr(self.model, "flops_per_token") else 0
        peak = cfg.peak_flops or measure_peak_flops(self.device, self.dtype)
        metrics = None
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            metrics = MetricsLog(self.out_dir, self.step if cfg.resume else None, cfg.wandb_project,
                                 cfg.tensorboard, config_lib.to_dict(cfg))
        counted = self.model.num_params() if hasattr(self.model, "num_params") else \
            sum(p.numel() for p in self.model.parameters())
        self.log(f"{type(self.model).__name__}: {counted:,} non-embedding parameters | {self.device} "
                 f"{str(self.dtype).removeprefix('torch.')} | {self.machine.world} process(es) | "
                 f"peak {peak / 1e9:.0f} GFLOP/s per process")
        self.model.train()
        start_state = copy.deepcopy(self.train_source.state_dict())  # for the compile fallback
        window_start, window_tokens = time.perf_counter(), 0
        while self.step < cfg.max_steps:
            step_start = time.perf_counter()
            try:
                loss, tokens = self.train_step()
            except Exception as e:  # compiled code can fail on some platforms: finish the run in eager
                if not cfg.compile or self.step > 0 or self.runner is self.model:
                    raise
                self.log(f"warning: torch.compile failed ({type(e).__name__}: {str(e)[:200]}); running eager")
                self.cfg = cfg = dataclasses.replace(cfg, compile=False)
                self.runner = self._wrap(self.model)
                self.optimizer.zero_grad(set_to_none=True)
                self.train_source.load_state_dict(copy.deepcopy(start_state))
                continue
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"the training loss is {loss} at step {self.step}: the model diverged (lower --lr, "
                    f"raise --warmup_steps) or a batch had no scored targets (all -1); the last "
                    f"checkpoint in {self.out_dir} is untouched")
            window_tokens += tokens
            self.tokens_seen += tokens
            self.train_seconds += time.perf_counter() - step_start
            row = None
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                loss = self.machine.mean_over_ranks(loss)
                tok_s = window_tokens / (time.perf_counter() - window_start)
                row = {"step": self.step, "loss": loss, "lr": self.learning_rate(self.step - 1),
                       "tokens_per_s": tok_s, "mfu": tok_s * flops_per_token / (peak * self.machine.world),
                       "tokens": self.tokens_seen, "train_s": self.train_seconds}
                mfu = f" | mfu {100 * row['mfu']:.1f}%" if flops_per_token else ""  # stage models may not say
                self.log(f"step {self.step:5d}/{cfg.max_steps} | loss {loss:.4f} | lr {row['lr']:.2e} | "
                         f"{tok_s:,.0f} tok/s{mfu}")
            if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                scores = self.evaluate()
                if scores:
                    self.log(f"step {self.step:5d} | " + " | ".join(f"{k} {v:.4f}" for k, v in scores.items()
                                                                    if isinstance(v, float)))
                    row = {**(row or {"step": self.step}), **scores}
            if row and self.is_main:
                metrics.write(row)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.max_steps:
                self.save()
            if row:
                window_start, window_tokens = time.perf_counter(), 0
        if self.is_main:
            metrics.close()
            plot_losses(self.out_dir / "metrics.jsonl", self.out_dir / "loss.png",
                        title=f"{self.out_dir.name}: {type(self.model).__name__}")
            self.log(f"wrote {self.out_dir / 'ckpt.pt'}, {self.out_dir / 'metrics.jsonl'}, {self.out_dir / 'loss.png'}")

    def close(self) -> None:
        """End the process group if this Trainer started it (after the stage's last words)."""
        if self._owns_machine:
            self.machine.close()
