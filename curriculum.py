"""The perplexity curriculum and multiple-round training, as batch sources of the shared Trainer.

    python curriculum.py configs/curriculum_proxy.py --strategy=self_loss [--reverse] [--key=value ...]
    python curriculum.py configs/curriculum_proxy.py --strategy=reference_loss --reference=out/some_run
    python curriculum.py configs/curriculum_proxy.py --strategy=multi_round --rounds=2 --keep_fraction=0.5
    python studies/curriculum_strategies.py configs/curriculum_experiment.py     # every strategy, 3 seeds, the table

Every key of train.py works too (CurriculumConfig extends TrainConfig; the end-of-run sample and
--bpb_genres included), and --resume continues a killed run exactly: the subset, the order, the
growth count, the best loss, the patience count, the pass position and the record of which tokens
were seen are all in the checkpoint.

The iterative curriculum (TinyHelen's): the training documents are put in an order by a strategy,
training starts on the first init_fraction of them, and after each evaluation whose validation loss
did not improve on the best so far by more than `threshold` for `patience` evaluations in a row the
subset grows by another grow_fraction of the whole set and a new pass over it starts, re-cut into
windows (at 100% such a trigger just starts a new pass). Strategies, easy first unless --reverse:

  random           one fixed shuffle (seeded), so each subset contains the last
  sentence_length  mean tokens per sentence of each document (its gpt-2K tokens over its sentences,
                   split by simplify/chunk.py's offline splitter), computed once
  self_loss        each document's mean token loss under the model being trained, recomputed over the
                   whole train split at every growth (a new subset need not contain the old one)
  reference_loss   each document's mean token loss under --reference (a run or ckpt.pt), computed once
  full_repeated    baseline: the whole split cut into windows once, the windows reshuffled every pass
  full_random      baseline: the documents reshuffled and re-cut into windows every pass
  multi_round      "Rethinking Optimization and Architecture for Tiny Language Models": `rounds` equal
                   parts of max_steps; the first trains on every window, each later one on
                   keep_fraction of the windows sampled without replacement with probability
                   proportional to exp(loss) under the model at the end of the round before

Each evaluation row of metrics.jsonl carries the state it was measured in (`fraction` of documents
in the subset, `growths` so far, `unique_documents` and `unique_tokens` trained on so far, or
`round`); a row where the subset grew adds `grew_to` (the new fraction) and counts that growth.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from tinyhelen import config as config_lib
from tinyhelen import machine as machine_lib
from tinyhelen import runlock
from tinyhelen.checkpoint import CheckpointError, load_model
from tinyhelen.config import setting
from data.documents import Documents, PackedDocuments, packed_positions
from data.tokens import read_meta
from tinyhelen.scoring import score_documents, score_windows, window_batch
from tinyhelen.pretrained import resolve
from trainer import Trainer, TrainConfig, learning_rate

STRATEGIES = ("random", "sentence_length", "self_loss", "reference_loss", "full_repeated", "full_random",
              "multi_round")
ORDERED = ("random", "sentence_length", "self_loss", "reference_loss")


def _fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


@dataclass
class CurriculumConfig(TrainConfig):
    strategy: str = setting("self_loss", choices=STRATEGIES)
    reverse: bool = False                   # hard first (highest score first) instead of easy first
    init_fraction: float = setting(0.05, check=_fraction)   # of the train documents, to start on
    grow_fraction: float = setting(0.05, check=_fraction)   # added at each growth
    patience: int = setting(1, min=1)       # evaluations in a row without improvement before growing
    threshold: float = setting(0.0, min=0)  # an improvement must beat the best by more than this
    reset_best_on_growth: bool = False      # forget the best loss at each growth (reference: keep it)
    restart_schedule_on_growth: bool = False  # warmup and decay again from each growth (reference: one schedule)
    reference: str = ""                     # reference_loss: the run folder or ckpt.pt scoring the documents
    score_batch_tokens: int = setting(16384, min=1)  # tokens per forward pass when scoring
    rounds: int = setting(2, min=1)         # multi_round: parts of max_steps
    keep_fraction: float = setting(0.5, check=_fraction)  # multi_round: windows kept for each later round

    def __post_init__(self):
        super().__post_init__()
        if self.strategy == "reference_loss" and not self.reference:
            raise ValueError("strategy reference_loss needs --reference=RUN_DIR (or a ckpt.pt) to score with")
        if self.reverse and self.strategy not in ORDERED:
            raise ValueError(f"--reverse orders documents; strategy {self.strategy} has no order to reverse "
                             f"(use one of {', '.join(ORDERED)})")


# ----------------------------------------------------------------------------- document scores

def sentence_lengths(docs: Documents, tokenizer) -> np.ndarray:
    """Mean tokens per sentence of every document: its tokens (eot not counted) over the number of
    sentences simplify/chunk.py's splitter finds in its decoded text (at least one)."""
    from simplify.chunk import split_sentences
    out = np.zeros(len(docs), dtype=np.float64)
    for i in range(len(docs)):
        sentences = len(split_sentences(tokenizer.decode(docs.tokens_of(i).tolist())))
        out[i] = docs.lengths[i] / max(1, sentences)
    return out


def easy_first(docs: Documents, scores: np.ndarray, reverse: bool) -> np.ndarray:
    """Every document, lowest score first (highest first when reversed); ties keep index order."""
    return docs.order(None, by=scores, descending=reverse)


def subset_size(docs: Documents, order: np.ndarray, fraction: float, min_tokens: int) -> int:
    """How many documents of the order make `fraction` of the split, at least enough for one batch."""
    n = min(len(order), max(1, math.ceil(round(fraction * len(order), 9))))
    tokens = np.cumsum(docs.lengths[order] + 1)
    return max(n, min(len(order), int(np.searchsorted(tokens, min_tokens)) + 1))


class SeenTokens:
    """Which tokens of the train split some training batch has held: the unique data a run used."""

    def __init__(self, docs: Documents):
        self.docs, self.mask = docs, np.zeros(len(docs.tokens), dtype=bool)

    def mark(self, positions: np.ndarray) -> None:
        self.mask[positions] = True

    def counts(self) -> dict:
        before = np.concatenate([[0], np.cumsum(self.mask)])
        per_doc = before[self.docs.ends + 1] - before[self.docs.starts]  # the eot counted with its document
        return {"unique_documents": int((per_doc > 0).sum()), "unique_tokens": int(self.mask.sum())}

    def state_dict(self) -> torch.Tensor:
        return torch.from_numpy(np.packbits(self.mask))

    def load_state_dict(self, packed: torch.Tensor) -> None:
        self.mask = np.unpackbits(packed.numpy(), count=len(self.docs.tokens)).astype(bool)


# ----------------------------------------------------------------------------- the curriculum

class Curriculum:
    """A growing, ordered subset of the train documents as a batch source (see the module docstring).

    The model it scores with (self_loss) and the machine are given by `attach(trainer)`; the first
    order is computed at the first batch, so a resumed run never recomputes it."""

    def __init__(self, cfg: CurriculumConfig, docs: Documents, tokenizer=None, rank: int = 0, world_size: int = 1):
        self.cfg, self.docs, self.tokenizer = cfg, docs, tokenizer
        self.rank, self.world_size = rank, world_size
        self.model, self.machine = None, None
        self.source: PackedDocuments | None = None
        self.order = None                          # every document, in the strategy's order
        self.growths, self.fraction = 0, cfg.init_fraction
        self.best, self.bad, self.schedule_start = float("inf"), 0, 0
        self.seen = SeenTokens(docs)
        self.min_tokens = cfg.batch_size * world_size * cfg.seq_len + 1

    def attach(self, trainer: Trainer) -> None:
        self.model, self.machine = trainer.model, trainer.machine
        trainer.learning_rate = self.learning_rate

    # ---- orders
    def _scores(self) -> np.ndarray:
        s, cfg = self.cfg.strategy, self.cfg
        if s == "random":
            return np.random.default_rng([cfg.seed, 7]).permutation(len(self.docs)).astype(np.float64)
        if s == "sentence_length":
            return sentence_lengths(self.docs, self.tokenizer)
        model = self.model if s == "self_loss" else load_model(resolve(cfg.reference), str(self.machine.device))[0]
        return score_documents(model, self.docs, None, cfg.seq_len, cfg.score_batch_tokens, self.machine)

    def _new_order(self) -> np.ndarray:
        s = self.cfg.strategy
        if s == "full_repeated":
            return np.arange(len(self.docs), dtype=np.int64)
        if s == "full_random":
            return self.docs.order(None, seed=self._pass_seed())
        return easy_first(self.docs, self._scores(), self.cfg.reverse)

    def _pass_seed(self) -> list[int]:
        return [self.cfg.seed, 11, self.source.epoch + 1 if self.source is not None else 0]

    def _subset(self) -> np.ndarray:
        if self.cfg.strategy in ("full_repeated", "full_random"):
            return self.order
        return self.order[:subset_size(self.docs, self.order, self.fraction, self.min_tokens)]

    def _use(self, subset: np.ndarray) -> None:
        if self.source is None:
            self.source = PackedDocuments(self.docs, subset, self.cfg.batch_size, self.cfg.seq_len, self.cfg.seed,
                                          self.rank, self.world_size)
        else:
            self.source.set_documents(subset)
        self.positions = packed_positions(self.docs, self.source.documents)

    # ---- the protocol
    def next_batch(self):
        if self.source is None:
            self.fraction = 1.0 if self.cfg.strategy in ("full_repeated", "full_random") else self.cfg.init_fraction
            self.order = self._new_order()
            self._use(self._subset())
        elif self.cfg.strategy == "full_random" and \
                self.source.cursor + self.source.global_batch > self.source.num_windows:
            self.order = self._new_order()  # documents reshuffled and re-cut at every pass
            self._use(self.order)
        x, y = self.source.next_batch()
        offsets = self.source.last_windows[:, None] * self.cfg.seq_len + np.arange(self.cfg.seq_len + 1)
        self.seen.mark(self.positions[offsets])
        return x, y

    def progress(self) -> dict:
        """What the next evaluation row records about the data trained on so far."""
        return {"fraction": self.fraction, "growths": self.growths, **self.seen.counts()}

    def on_evaluation(self, step: int, metrics: dict) -> None:
        """The patience rule; a growth is written into this evaluation's metrics row."""
        if self.cfg.strategy not in ORDERED or self.source is None or step >= self.cfg.max_steps:
            return  # (nothing is trained after the last evaluation: no growth to pay for)
        loss = metrics["val_loss"]
        improved = loss < self.best - self.cfg.threshold
        self.best = min(self.best, loss)
        self.bad = 0 if improved else self.bad + 1
        if self.bad < self.cfg.patience:
            return
        self.bad = 0
        if self.fraction < 1.0:
            self.growths += 1
            self.fraction = min(1.0, round(self.cfg.init_fraction + self.growths * self.cfg.grow_fraction, 9))
            if self.cfg.strategy == "self_loss":
                self.order = self._new_order()  # the current model's losses, over the whole split
            if self.cfg.restart_schedule_on_growth:
                self.schedule_start = step
            metrics.update(grew_to=self.fraction, growths=self.growths)
        if self.cfg.reset_best_on_growth:
            self.best = float("inf")
        self._use(self._subset())  # a new pass, re-cut into windows (at 100%: just a new pass)

    def learning_rate(self, step: int) -> float:
        """One schedule over all steps, or (restart_schedule_on_growth) a fresh warmup and decay over
        the steps left after the last growth."""
        cfg = self.cfg
        if not self.schedule_start:
            return learning_rate(step, cfg)
        rest = dataclasses.replace(cfg, max_steps=max(1, cfg.max_steps - self.schedule_start))
        return learning_rate(step - self.schedule_start, rest)

    def state_dict(self) -> dict:
        if self.source is None:
            return {"started": False}
        return {"started": True, "strategy": self.cfg.strategy, "order": torch.from_numpy(self.order.copy()),
                "growths": self.growths, "fraction": self.fraction, "best": self.best, "bad": self.bad,
                "schedule_start": self.schedule_start, "seen": self.seen.state_dict(),
                "source": self.source.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not state["started"]:  # saved before the first batch (the Trainer's compile fallback)
            self.source, self.order, self.seen = None, None, SeenTokens(self.docs)
            return
        if state["strategy"] != self.cfg.strategy:
            raise config_lib.ConfigError(f"--resume: the checkpoint's strategy is {state['strategy']}, not "
                                         f"{self.cfg.strategy}; resume with the same strategy")
        self.order = state["order"].numpy().astype(np.int64)
        self.growths, self.fraction, self.best = int(state["growths"]), float(state["fraction"]), float(state["best"])
        self.bad, self.schedule_start = int(state["bad"]), int(state["schedule_start"])
        self.seen.load_state_dict(state["seen"])
        saved = state["source"]
        self.source = PackedDocuments(self.docs, saved["documents"].numpy(), self.cfg.batch_size, self.cfg.seq_len,
                                      self.cfg.seed, self.rank, self.world_size)
        self.source.load_state_dict(saved)
        self.positions = packed_positions(self.docs, self.source.documents)


# ----------------------------------------------------------------------------- multiple rounds

def sample_windows(losses: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` window indices drawn without replacement, each draw with probability proportional to
    exp(loss) among the windows not yet drawn (torch.multinomial), in the order drawn."""
    weights = torch.from_numpy(np.exp(losses - losses.max()))
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(weights, count, replacement=False, generator=generator).numpy()


class MultiRound:
    """Windows of the whole train split; after each of `rounds` equal parts of max_steps, the next
    round trains on keep_fraction of them, sampled by exp(loss) under the frozen model."""

    def __init__(self, cfg: CurriculumConfig, docs: Documents, rank: int = 0, world_size: int = 1):
        self.cfg, self.docs, self.rank, self.world_size = cfg, docs, rank, world_size
        self.tokens = docs.tokens
        self.num_windows = (len(self.tokens) - 1) // cfg.seq_len
        self.global_batch = cfg.batch_size * world_size
        self.kept = max(self.global_batch, round(cfg.keep_fraction * self.num_windows))
        if self.kept > self.num_windows:
            raise config_lib.ConfigError(f"{cfg.data_dir}: {self.num_windows} windows of {cfg.seq_len} tokens, "
                                         f"fewer than one global batch of {self.global_batch}")
        self.round_steps = math.ceil(cfg.max_steps / cfg.rounds)
        self.model, self.machine = None, None
        self.round, self.micro_batches, self.epoch, self.cursor = 0, 0, 0, 0
        self.windows = np.arange(self.num_windows, dtype=np.int64)
        self.seen = SeenTokens(docs)

    def attach(self, trainer: Trainer) -> None:
        self.model, self.machine = trainer.model, trainer.machine

    def _plan(self) -> np.ndarray:
        return self.windows[np.random.default_rng([self.cfg.seed, self.round, self.epoch]).permutation(len(self.windows))]

    def _next_round(self) -> None:
        cfg = self.cfg
        losses = score_windows(self.model, self.tokens, cfg.seq_len, cfg.score_batch_tokens, self.machine)
        self.round += 1
        self.windows = sample_windows(losses, self.kept, cfg.seed * 1000 + self.round).astype(np.int64)
        self.epoch, self.cursor = 0, 0

    def next_batch(self):
        step = self.micro_batches // self.cfg.grad_accum
        if self.round < self.cfg.rounds - 1 and step >= (self.round + 1) * self.round_steps:
            self._next_round()
        if self.cursor + self.global_batch > len(self.windows):
            self.epoch, self.cursor = self.epoch + 1, 0
        start = self.cursor + self.rank * self.cfg.batch_size
        windows = self._plan()[start:start + self.cfg.batch_size]
        self.cursor += self.global_batch
        self.micro_batches += 1
        self.seen.mark(windows[:, None] * self.cfg.seq_len + np.arange(self.cfg.seq_len + 1))
        return window_batch(self.tokens, windows, self.cfg.seq_len)

    def progress(self) -> dict:
        return {"round": self.round, "fraction": len(self.windows) / self.num_windows, **self.seen.counts()}

    def state_dict(self) -> dict:
        return {"round": self.round, "micro_batches": self.micro_batches, "epoch": self.epoch,
                "cursor": self.cursor, "windows": torch.from_numpy(self.windows.copy()),
                "seen": self.seen.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.round, self.micro_batches = int(state["round"]), int(state["micro_batches"])
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.windows = state["windows"].numpy().astype(np.int64)
        self.seen.load_state_dict(state["seen"])


# ----------------------------------------------------------------------------- the stage

def check_reference(cfg: CurriculumConfig, meta: dict) -> None:
    """The reference model must exist and read the same tokens as this data, before any compute."""
    if cfg.strategy != "reference_loss":
        return
    from tinyhelen.checkpoint import load_checkpoint
    ckpt = load_checkpoint(resolve(cfg.reference))
    theirs = ckpt.get("data_meta", {})
    if theirs and (theirs.get("tokenizer_name"), theirs.get("vocab_size")) != (meta.get("tokenizer_name"),
                                                                             meta.get("vocab_size")):
        raise config_lib.ConfigError(f"--reference={cfg.reference} was trained with tokenizer "
                                     f"{theirs.get('tokenizer_name')} ({theirs.get('vocab_size')} tokens), "
                                     f"{cfg.data_dir} with {meta.get('tokenizer_name')}: use a reference "
                                     f"trained on this data's tokenizer")


def run_curriculum(cfg: CurriculumConfig) -> Trainer:
    """Train cfg's model with cfg's strategy and return the finished Trainer."""
    with runlock.hold(cfg.out_dir):  # one writer per run folder, as train.py: before the data is read
        return _run_curriculum(cfg)


def _run_curriculum(cfg: CurriculumConfig) -> Trainer:
    import train
    from data.tokens import open_tokens
    from tinyhelen.runs import load_tokenizer_from
    meta = read_meta(cfg.data_dir)
    docs = Documents.open(cfg.data_dir, "train")
    val_tokens = open_tokens(cfg.data_dir, "validation")
    check_reference(cfg, meta)
    train.check_vocab(cfg.model, meta, cfg.data_dir)
    held_out = train.read_held_out(cfg, meta)  # --bpb_genres, as train.py: a missing file stops here
    m = machine_lib.setup(cfg.device, cfg.dtype, cfg.threads)
    try:
        try:
            if cfg.strategy == "multi_round":
                source = MultiRound(cfg, docs, m.rank, m.world)
            else:
                # the prepared data's own tokenizer (a file there, or a standard one it names)
                tokenizer = load_tokenizer_from(cfg.data_dir) if cfg.strategy == "sentence_length" else None
                source = Curriculum(cfg, docs, tokenizer, m.rank, m.world)
        except ValueError as e:
            raise config_lib.ConfigError(f"{cfg.data_dir}: {e}") from None
        validation = train.ValidationLoss(val_tokens)

        def evaluate(trainer):
            return {**validation(trainer), **source.progress()}

        trainer = Trainer(cfg, source, evaluate=evaluate, data_meta=meta, machine=m)
        source.attach(trainer)
        if trainer.is_main:
            train.copy_tokenizer(cfg.data_dir, meta, trainer.out_dir)
        trainer.log(f"strategy {cfg.strategy}{' (reversed)' if cfg.reverse else ''} | {len(docs)} train documents | "
                    f"{cfg.batch_size * cfg.seq_len * cfg.grad_accum * m.world:,} tokens/step")
        trainer.run()
        if trainer.is_main:  # the end of a train.py run: --sample_tokens, --bpb_genres
            train.print_sample(trainer, meta)
            train.report_bits_per_byte(trainer, meta, held_out, docs.tokens)
    finally:
        m.close()
    return trainer


@config_lib.exits_2_on(CheckpointError, FileNotFoundError)
def main(cfg: CurriculumConfig) -> None:
    run_curriculum(cfg)


if __name__ == "__main__":
    config_lib.run_cli(main, CurriculumConfig())
