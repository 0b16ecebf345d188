"""Leaner-Glue's pieces: examples as tokens, the sequence classifier, GLUE's metrics, the batches and
the dev-set selection; finetune_glue.py is the stage that runs them (config, sweeps, results).

The model: the backbone's final-normed hidden state at the LAST REAL token of each sequence (batches
are right-padded, so that is position length - 1), then a bias-free linear score head: what
`transformers`' LlamaForSequenceClassification and the reference Mamba classifier do. Classification
trains with cross-entropy, stsb (one output) with mean squared error. Inputs are the tokenizer's
end-of-text token (what precedes every document in pre-training) and then the text; a pair task's
two sentences are joined by a newline ("\\n", one byte-level token of every tokenizer here, and what
the TinyHelen release itself puts between a row's text fields). At most seq_len tokens, batches
padded to their longest member and drawn from runs of similar length (data/documents.py).

Metrics: glue_metrics' "score" is the task's main GLUE metric (cola MCC; mrpc, qqp the mean of F1
and accuracy; stsb the mean of Pearson and Spearman; accuracy otherwise, for mnli on the matched set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data.documents import Documents, PaddedDocuments, padded_batches
from data.tasks import glue_task

SEPARATOR = "\n"    # between the two sentences of a pair task
# The main metric of each task, as tables name it (accuracy where not listed).
MAIN_METRIC = {"cola": "mcc", "mrpc": "mean of F1 and accuracy", "qqp": "mean of F1 and accuracy",
               "stsb": "mean of Pearson and Spearman", "mnli": "matched accuracy"}


# ----------------------------------------------------------------------------- examples as tokens

@dataclass
class Encoded:
    """One split of a task, tokenized: a Documents table over the token stream (one example per
    document), the labels, and where the examples came from."""
    docs: Documents
    labels: np.ndarray   # int64 class ids, or float32 scores (stsb)
    source: str          # the file, and which part of it for a held-out split
    truncated: int       # examples longer than seq_len tokens (cut at the end)


def encode(examples, tokenizer, max_len: int, source: str) -> Encoded:
    """Tokenize examples (a pair's texts joined by SEPARATOR) into one stream, each followed by an eot,
    the layout data/documents.py batches: a row is [eot] + the example, cut to max_len tokens."""
    ids = tokenizer.encode_batch([SEPARATOR.join(e.texts) for e in examples])
    lengths = np.array([len(row) for row in ids], dtype=np.int64)
    tokens = np.concatenate([np.array([*row, tokenizer.eot_id], dtype=np.int64) for row in ids])
    ends = np.cumsum(lengths + 1) - 1   # the eot after each example
    starts = ends - lengths
    regression = glue_task(examples[0].task).regression
    labels = np.array([e.label for e in examples], dtype=np.float32 if regression else np.int64)
    docs = Documents(tokens, starts, ends, np.zeros(len(ids), dtype=np.int64), ("glue",), tokenizer.eot_id,
                     source)
    return Encoded(docs, labels, source, int((lengths + 1 > max_len).sum()))




@dataclass
class TaskData:
    task: str
    train: Encoded
    dev: dict[str, Encoded]    # "dev" (and mnli's "dev_mm")
    test: dict[str, Encoded]   # "test" (and "test_mm"), when test files are given
    held_out: bool             # dev was carved out of the validation file (no train file here)


# ----------------------------------------------------------------------------- the model and its metrics

class SequenceClassifier(nn.Module):
    """A backbone's hidden state at each sequence's last real token -> a bias-free linear score head.

    forward(x, lengths, labels=None) -> (logits (B, n_outputs) fp32, loss or None); x (B, T) is
    right-padded and lengths (B,) counts each row's real tokens. One output is a regression (MSE)."""

    def __init__(self, backbone: nn.Module, n_outputs: int):
        super().__init__()
        if not hasattr(backbone, "hidden_states"):
            raise TypeError(f"{type(backbone).__name__} has no hidden_states(idx) method to classify with")
        self.backbone = backbone
        self.backbone.lm_head = nn.Identity()  # unused: its weights are reported as dropped
        self.score = nn.Linear(backbone.config.n_embd, n_outputs, bias=False)
        nn.init.normal_(self.score.weight, std=getattr(backbone.config, "init_std", 0.02))

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters, the token embedding left out when non_embedding (the LM head is gone)."""
        embeddings = [m.weight for m in self.modules() if isinstance(m, nn.Embedding)]
        skip = {id(w) for w in embeddings} if non_embedding else set()
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor | None = None):
        hidden = self.backbone.hidden_states(x)                            # (B, T, D)
        last = hidden[torch.arange(x.shape[0], device=x.device), lengths - 1]  # (B, D)
        logits = self.score(last).float()
        loss = None
        if labels is not None:
            loss = F.mse_loss(logits[:, 0], labels.float()) if logits.shape[1] == 1 else \
                F.cross_entropy(logits, labels)
        return logits, loss


def classifier_loss(runner, batch) -> torch.Tensor:
    return runner(*batch)[1]


def glue_metrics(task: str, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """GLUE's metrics of a task for model outputs (N, n_outputs) against labels; "score" is the main one
    (a correlation that is undefined because the predictions are constant counts as 0)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    if glue_task(task).regression:
        predictions = outputs[:, 0].astype(np.float64)
        constant = np.ptp(predictions) == 0 or np.ptp(labels) == 0
        pearson = 0.0 if constant else float(pearsonr(predictions, labels)[0])
        spearman = 0.0 if constant else float(spearmanr(predictions, labels)[0])
        return {"pearson": pearson, "spearman": spearman, "score": (pearson + spearman) / 2}
    predictions = outputs.argmax(axis=1)
    accuracy = float(accuracy_score(labels, predictions))
    if task == "cola":
        mcc = float(matthews_corrcoef(labels, predictions))
        return {"mcc": mcc, "accuracy": accuracy, "score": mcc}
    if task in ("mrpc", "qqp"):
        f1 = float(f1_score(labels, predictions, zero_division=0.0))
        return {"f1": f1, "accuracy": accuracy, "score": (f1 + accuracy) / 2}
    return {"accuracy": accuracy, "score": accuracy}


def majority_score(task: str, train: Encoded, dev: Encoded) -> float:
    """The main metric of always answering the training set's most common class (the mean score for stsb)."""
    n = 1 if glue_task(task).regression else glue_task(task).num_labels
    outputs = np.zeros((len(dev.labels), n), dtype=np.float32)
    if n == 1:
        outputs[:] = train.labels.mean()
    else:
        outputs[:, np.bincount(train.labels, minlength=n).argmax()] = 1
    return glue_metrics(task, outputs, dev.labels)["score"]


@torch.no_grad()
def predict(model: SequenceClassifier, data: Encoded, batch_size: int, max_len: int, device,
            autocast) -> np.ndarray:
    """Outputs (N, n_outputs) for every example, in batches of similar length."""
    was_training = model.training
    model.eval()
    out = np.zeros((len(data.labels), model.score.out_features), dtype=np.float32)
    try:
        for ids, x, y in padded_batches(data.docs, data.docs.order(by="length"), batch_size, max_len):
            with autocast():
                logits, _ = model(x.to(device), (y != -1).sum(1).to(device))
            out[ids] = logits.float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


# ----------------------------------------------------------------------------- batches and selection

class GlueBatches:
    """The Trainer's batch source over a tokenized training set: (x, lengths, labels), right-padded to
    the batch's longest example, batches from runs of similar length, a new shuffle each epoch (the
    last partial batch of an epoch waits for the next shuffle); a tqdm bar per epoch."""

    def __init__(self, data: Encoded, batch_size: int, max_len: int, seed: int, bucket: int, desc: str = "",
                 epochs: int = 0):
        self.data, self.desc, self.epochs = data, desc, epochs
        self.inner = PaddedDocuments(data.docs, None, batch_size, max_len, seed, shuffle=True, bucket=bucket)
        self.steps_per_epoch = self.inner.num_batches
        self._bar, self._bar_epoch = None, -1

    def next_batch(self):
        x, y = self.inner.next_batch()
        self._progress()
        return x, (y != -1).sum(1), torch.from_numpy(self.data.labels[self.inner.last_documents])

    def _progress(self) -> None:
        from tqdm import tqdm
        if self.inner.epoch != self._bar_epoch:
            self.close()
            self._bar_epoch = self.inner.epoch
            self._bar = tqdm(total=self.steps_per_epoch, leave=False, dynamic_ncols=True,
                             desc=f"{self.desc} epoch {self.inner.epoch + 1}/{self.epochs or '?'}")
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


class DevSelection:
    """The stage's evaluation (a Trainer's evaluate): every dev set's metrics; the weights of the best
    step by the main metric on "dev" are kept (a copy in memory), for scoring the test file with the
    selected step."""

    def __init__(self, data: TaskData, batch_size: int, max_len: int):
        self.data, self.batch_size, self.max_len = data, batch_size, max_len
        self.best, self.best_step, self.best_state, self.best_metrics = -math.inf, 0, None, {}

    def __call__(self, trainer) -> dict:
        scores = {}
        for name, split in self.data.dev.items():
            outputs = predict(trainer.model, split, self.batch_size, self.max_len, trainer.device,
                              trainer.autocast)
            metrics = glue_metrics(self.data.task, outputs, split.labels)
            scores.update({f"{name}_{k}": v for k, v in metrics.items()})
        if scores["dev_score"] > self.best:
            self.best, self.best_step, self.best_metrics = scores["dev_score"], trainer.step, dict(scores)
            self.best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        return scores
