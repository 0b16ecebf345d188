"""Pre-train a tiny language model on prepared tokens.

    python train.py configs/demo_llama.py [--key=value ...]               # one process
    python train.py configs/demo_llama.py --init_from=out/other_run       # start from its weights
    torchrun --standalone --nproc_per_node=2 train.py configs/leaner_llama.py   # DDP

The pre-training stage of the shared loop (trainer.py): batches are shuffled windows of the
prepared token stream (data/tokens.py), evaluation is the loss on fixed validation windows against
a unigram baseline, and the run ends with a short sample.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from tinyhelen import config as config_lib
from tinyhelen import machine as machine_lib
from tinyhelen import runlock
from tinyhelen.atomic import atomic_write_json
from tinyhelen.checkpoint import CheckpointError
from tinyhelen.pretrained import resolve
from data.tokens import TokenBatches, open_tokens, read_meta
from trainer import Trainer, TrainConfig, learning_rate  # noqa: F401  (learning_rate: used by tests)

VALIDATION_SEED = 20250101  # fixed, so validation losses compare across runs and seeds


def unigram_log_probs(train_tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Log-probabilities of a unigram model fitted on the training tokens (add-one smoothed): the
    baseline a trained model must beat clearly to have learned anything about context."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1.0
    return np.log(counts / counts.sum())


def unigram_loss(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int) -> float:
    """Validation cross-entropy of that unigram model."""
    return float(-unigram_log_probs(train_tokens, vocab_size)[np.asarray(val_tokens)].mean())


class ValidationLoss:
    """Mean loss over the first eval_steps optimizer-step-sized batches of a token stream.

    The same windows every time (whatever the run's seed), and the same set for any split of the
    global batch into processes and accumulation steps, so runs with different world sizes report
    the same number. A fixed shuffle spreads the windows over every genre (the file is sorted by
    genre)."""

    def __init__(self, tokens: np.ndarray, baseline: float | None = None):
        self.tokens, self.baseline = tokens, baseline

    def __call__(self, trainer: Trainer) -> dict:
        cfg, m = trainer.cfg, trainer.machine
        batches = TokenBatches(self.tokens, cfg.batch_size, cfg.seq_len, seed=VALIDATION_SEED,
                               rank=m.rank, world_size=m.world)
        micro_steps = min(cfg.eval_steps * cfg.grad_accum, batches.num_windows // batches.global_batch)
        total = 0.0
        for _ in range(micro_steps):
            x, y = trainer.to_device(batches.next_batch())
            with trainer.autocast():
                total += trainer.runner(x, y)[1].item()
        return {"val_loss": m.mean_over_ranks(total / micro_steps)}


def copy_tokenizer(data_dir: str | Path, meta: dict, out_dir: Path) -> None:
    """Make the run folder self-contained: sample/evaluate/export need only --out_dir."""
    tok = meta.get("tokenizer", "")
    source = Path(data_dir) / tok
    if tok and source.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, out_dir / "tokenizer.json")


def check_same_tokenizer(cfg: TrainConfig, meta: dict) -> None:
    """init_from a run trained on other tokens: its embedding rows would mean other strings."""
    if not cfg.init_from:
        return
    from tinyhelen.checkpoint import load_checkpoint
    path = Path(resolve(cfg.init_from))
    if not path.exists() or path.is_dir() and not (path / "ckpt.pt").is_file():
        return  # missing (the Trainer says so) or a transformers folder: no tokenizer record to compare
    source_meta = load_checkpoint(path).get("data_meta", {})
    mine = (meta.get("tokenizer_name"), meta.get("vocab_size"), meta.get("eot_id"))
    theirs = (source_meta.get("tokenizer_name"), source_meta.get("vocab_size"), source_meta.get("eot_id"))
    if source_meta and mine != theirs:
        raise config_lib.ConfigError(
            f"--init_from={cfg.init_from} was trained with tokenizer {theirs} (name, size, eot id) but "
            f"{cfg.data_dir} is prepared with {mine}: prepare the data with the source run's tokenizer "
            f"(data/prepare.py --tokenizer=PATH/tokenizer.json)")


def pretrain(cfg: TrainConfig) -> Trainer:
    """Train cfg's model on cfg.data_dir and return the finished Trainer."""
    # One writer per run folder, taken before the data is read or anything computed: a second process
    # training into cfg.out_dir stops here (exit 2), naming this one. Held to the last file written.
    with runlock.hold(cfg.out_dir):
        return _pretrain(cfg)


def _pretrain(cfg: TrainConfig) -> Trainer:
    meta = read_meta(cfg.data_dir)
    check_same_tokenizer(cfg, meta)
    train_tokens, val_tokens = open_tokens(cfg.data_dir, "train"), open_tokens(cfg.data_dir, "validation")
    held_out = read_held_out(cfg, meta)  # before any compute: a missing raw file stops the run here
    m = machine_lib.setup(cfg.device, cfg.dtype, cfg.threads)
    try:
        try:
            source = TokenBatches(train_tokens, cfg.batch_size, cfg.seq_len, seed=cfg.seed, rank=m.rank,
                                  world_size=m.world)
        except ValueError as e:  # fewer windows than one global batch: the settings do not fit the data
            raise config_lib.ConfigError(f"{cfg.data_dir}: {e}") from None
        if not cfg.init_from:  # with init_from the model (and its vocabulary) comes from the source
            check_vocab(cfg.model, meta, cfg.data_dir)
        trainer = Trainer(cfg, source, evaluate=ValidationLoss(val_tokens), data_meta=meta, machine=m)
        check_vocab(trainer.cfg.model, meta, cfg.data_dir)
        baseline = unigram_loss(train_tokens, val_tokens, trainer.cfg.model.vocab_size)
        if trainer.is_main:
            copy_tokenizer(cfg.data_dir, meta, trainer.out_dir)
        trainer.log(f"{cfg.batch_size * cfg.seq_len * cfg.grad_accum * m.world:,} tokens/step | "
                    f"unigram baseline validation loss: {baseline:.4f}")
        trainer.run()
        if trainer.is_main:
            print_sample(trainer, meta)
            report_bits_per_byte(trainer, meta, held_out, train_tokens)
    finally:
        m.close()
    return trainer


def check_vocab(model_cfg, meta: dict, data_dir) -> None:
    if meta["vocab_size"] > model_cfg.vocab_size:
        raise config_lib.ConfigError(
            f"the tokenizer of {data_dir} has {meta['vocab_size']} tokens but model.vocab_size is "
            f"{model_cfg.vocab_size}: set --model.vocab_size={meta['vocab_size']}")


def read_held_out(cfg: TrainConfig, meta: dict) -> dict:
    """{split: {genre: texts}} of cfg.bpb_genres from the raw corpus data_dir was prepared from."""
    from evaluate import genre_names, read_texts
    genres = genre_names(cfg.bpb_genres)
    if not genres:
        return {}
    root = meta.get("data_root", "")
    try:
        return {split: read_texts(root, meta.get("corpus", "leaner"), split, genres)
                for split in ("validation", "test")}
    except (FileNotFoundError, ValueError) as e:  # ValueError: data.corpus.DataError
        raise config_lib.ConfigError(f"--bpb_genres: {cfg.data_dir} was prepared from {root!r}, whose "
                                     f"held-out text cannot be read ({e}); set --bpb_genres= to skip") from None


def report_bits_per_byte(trainer: Trainer, meta: dict, held_out: dict, train_tokens: np.ndarray) -> None:
    """Score the final model on held-out raw text: bits per byte, which unlike the loss per token does
    not depend on the tokenizer; beside it the same for the unigram model of the train tokens, the
    floor any model must clear. Logged, and written to OUT_DIR/bits_per_byte.json."""
    if not held_out:
        return
    from evaluate import score_texts
    from tinyhelen.runs import load_tokenizer_from
    tokenizer = load_tokenizer_from(trainer.out_dir, meta)
    baseline = unigram_log_probs(train_tokens, trainer.cfg.model.vocab_size)
    model = trainer.model.eval()
    report = {}
    for split, texts in held_out.items():
        trainer.log(f"bits per byte on held-out {split} text ({', '.join(texts)}):")
        report[split] = score_texts(model, tokenizer, texts, trainer.cfg.seq_len, trainer.cfg.batch_size,
                                    trainer.device, echo=trainer.log, baseline_log_probs=baseline)
        trainer.log(f"{split}: {report[split]['bits_per_byte']:.4f} bits per byte "
                    f"(unigram baseline {report[split]['unigram_bits_per_byte']:.4f})")
    atomic_write_json(trainer.out_dir / "bits_per_byte.json", {"step": trainer.step, **report})


def print_sample(trainer: Trainer, meta: dict) -> None:
    cfg = trainer.cfg
    if not cfg.sample_tokens:
        return
    from tinyhelen.runs import load_tokenizer_from
    tokenizer = load_tokenizer_from(trainer.out_dir, meta)
    prompt = [tokenizer.eot_id] + tokenizer.encode(cfg.sample_prompt)
    idx = torch.tensor([prompt], device=trainer.device)
    generator = torch.Generator(device=trainer.device).manual_seed(cfg.seed)
    model = trainer.model.eval()
    out = model.generate(idx, cfg.sample_tokens, temperature=0.8, top_k=50, eot_id=tokenizer.eot_id,
                         generator=generator)
    new_tokens = out[0, 1:].tolist()
    if tokenizer.eot_id in new_tokens[len(prompt) - 1:]:  # stop at the end of the first document
        new_tokens = new_tokens[:new_tokens.index(tokenizer.eot_id, len(prompt) - 1)]
    trainer.log("sample:\n" + tokenizer.decode(new_tokens))


@config_lib.exits_2_on(CheckpointError, FileNotFoundError)
def main(cfg: TrainConfig) -> None:
    try:
        pretrain(cfg)
    except FloatingPointError as e:  # a diverged run: not the user's input, but no traceback helps
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    config_lib.run_cli(main, TrainConfig())
