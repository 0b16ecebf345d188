"""Instruction sets for instruct.py: converters from the data the local copy holds, the check that no
evaluation or test text leaks into training, and the padded batch source instruction tuning trains on.

The public release's Leaner-Instruct file (instruction0000.jsonl) is not in the local copy; these
converters build instruction rows ({"instruction", "input", "output", "source", "hash"}) from what is:

    math        leaner math problems -> their hints, step by step (train and validation splits)
    code        leaner code prompts -> responses (the validation split: the train split has no code
                file and the test split is held out)
    glue        Leaner-Glue train rows posed as questions, the answer written out in words
    simplified:PATH   the simplify pipeline's instruction output (rows of instruction, input, response)
    generated:PATH    instruct.py make's open-answer rows (tinyhelen/instruct_make.py), their kind kept

Held out, always (forbidden_texts / check_no_leak): every Leaner-Eval question (all files, by hash and
by normalised text), the leaner test split's math and code rows, and every Leaner-Glue validation
or test row. A training row that shares a hash or a normalised text (any field, or instruction and
input together) with them is an error naming the row.

Batches (InstructionBatches) are whole examples, right-padded per batch to the longest (rounded up to
16), with examples of similar length batched together. Right padding under causal attention means no
real token ever attends to a pad, and each row holds one example, so neither loss nor attention
crosses examples; targets of the prompt (unless loss_on="all") and of the padding are -1.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.corpus import GLUE_TASKS, DataError, get_field, iter_json_lines, task_prompt
from data.tasks import Instruction, eval_files, read_glue_file, read_instructions

SOURCES = ("math", "code", "glue")  # plus simplified:PATH and generated:PATH

# Leaner-Glue rows as questions: (question, answer per label id); {0}, {1} are the text fields.
GLUE_QUESTIONS = {
    "cola": ("Is this sentence good English? Answer yes or no.\n{0}",
             ("No, this sentence is not good English.", "Yes, this sentence is good English.")),
    "sst2": ("Does this sentence say something good or bad?\n{0}",
             ("It says something bad.", "It says something good.")),
    "mrpc": ("Do these two sentences say the same thing?\n1: {0}\n2: {1}",
             ("No, they do not say the same thing.", "Yes, they say the same thing.")),
    "qqp": ("Do these two questions ask the same thing?\n1: {0}\n2: {1}",
            ("No, they ask different things.", "Yes, they ask the same thing.")),
    "mnli": ("If the first sentence is true, is the second true, false, or can we not tell?\n1: {0}\n2: {1}",
             ("The second is true.", "We cannot tell.", "The second is false.")),
    "qnli": ("Does the sentence answer the question?\nQuestion: {0}\nSentence: {1}",
             ("Yes, the sentence answers the question.", "No, the sentence does not answer the question.")),
    "rte": ("If the first sentence is true, must the second be true?\n1: {0}\n2: {1}",
            ("Yes, the second must be true.", "No, the second need not be true.")),
    "wnli": ("If the first sentence is true, must the second be true?\n1: {0}\n2: {1}",
             ("No, the second need not be true.", "Yes, the second must be true.")),
    "stsb": ("How close in meaning are these two sentences, from 0 (not at all) to 5 (the same)?"
             "\n1: {0}\n2: {1}",
             ()),
}


def normalise(text: str) -> str:
    """Lowercase words and digits only, single spaces: equal for texts that differ in case, spacing or
    punctuation, so a question re-typed with another comma still counts as the same text."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.findall(r"[a-z0-9]+", text))


def row_hash(instruction: str, input: str, output: str) -> str:
    return hashlib.sha256("\x1f".join((instruction, input, output)).encode()).hexdigest()


def _row(source: str, instruction: str, input: str, output: str, hash: str = "") -> dict:
    return {"instruction": instruction, "input": input, "output": output, "source": source,
            "hash": hash or row_hash(instruction, input, output)}


def _split_file(root: Path, split: str, genre: str) -> Path | None:
    folder = root / "leaner" / "10M" / split
    files = sorted(folder.glob(f"{genre}[0-9]*.jsonl"))
    return files[0] if files else None


def convert_math(root: str | Path, splits=("train", "validation")) -> list[dict]:
    rows = []
    for split in splits:
        path = _split_file(Path(root), split, "math")
        for line, row in iter_json_lines(path) if path else ():
            where = f"{path}:{line}"
            hints = get_field(row, "hints", where, "math row", kind=list)
            problem = get_field(row, "problem", where, "math row")
            rows.append(_row("math", "Work this out step by step.", problem,
                             "\n".join(str(h) for h in hints), get_field(row, "hash", where, "math row")))
    return rows


def convert_code(root: str | Path, splits=("validation",)) -> list[dict]:
    rows = []
    for split in splits:
        path = _split_file(Path(root), split, "code")
        for line, row in iter_json_lines(path) if path else ():
            where = f"{path}:{line}"
            response = get_field(row, "response", where, "code row", required=False)
            if response:  # the release's code rows without a response have nothing to learn from
                rows.append(_row("code", get_field(row, "prompt", where, "code row"), "", response,
                                 get_field(row, "hash", where, "code row")))
    return rows


def glue_answer(task: str, label) -> str:
    answers = GLUE_QUESTIONS[task][1]
    if not answers:  # stsb: a similarity score
        return f"They are {float(label):.1f} out of 5 close in meaning."
    return answers[int(label)]


def convert_glue(root: str | Path, per_task: int = 0) -> list[dict]:
    """Every Leaner-Glue *train* file present, each row a question with its answer in words; with
    per_task, a seeded sample of that many rows of each task (in file order). The answers are a
    handful of fixed sentences, so a set made mostly of them teaches a tiny model to give one of
    those sentences to any question: per_task keeps them from outnumbering the open answers."""
    import random
    rows = []
    for task in GLUE_TASKS:
        path = Path(root) / "leaner" / "glue" / f"{task}_train.jsonl"
        if not path.is_file():
            continue
        question = GLUE_QUESTIONS[task][0]
        examples = read_glue_file(path, task)
        if per_task and len(examples) > per_task:
            keep = sorted(random.Random(f"glue:{task}").sample(range(len(examples)), per_task))
            examples = [examples[i] for i in keep]
        for e in examples:
            rows.append(_row(f"glue:{task}", question.format(*e.texts), "", glue_answer(task, e.label)))
    return rows


def convert_simplified(path: str | Path) -> list[dict]:
    return [_row("simplified", r.instruction, r.input, r.output) for r in read_instructions(path)]


def convert_generated(path: str | Path) -> list[dict]:
    """instruct.py make's rows, each keeping its source ("generated:describe", ...)."""
    kinds = {line: row.get("source", "generated") for line, row in iter_json_lines(path)} \
        if Path(path).is_file() else {}
    return [_row(str(kinds.get(r.line, "generated")), r.instruction, r.input, r.output)
            for r in read_instructions(path)]


def convert(root: str | Path, sources: list[str], glue_per_task: int = 0) -> tuple[list[dict], int]:
    """(rows from each named source (SOURCES, simplified:PATH or generated:PATH), how many were dropped because they
    share a hash or text with held-out data (forbidden_texts)); glue_per_task: convert_glue's."""
    rows = []
    for source in sources:
        if source.startswith("simplified:"):
            rows += convert_simplified(source.partition(":")[2])
        elif source.startswith("generated:"):
            rows += convert_generated(source.partition(":")[2])
        elif source == "glue":
            rows += convert_glue(root, glue_per_task)
        elif source in SOURCES:
            rows += {"math": convert_math, "code": convert_code}[source](root)
        else:
            raise DataError(f"unknown instruction source {source!r}: use {', '.join(SOURCES)}, "
                            f"simplified:PATH or generated:PATH")
    forbidden = forbidden_texts(root)
    rows, dropped = drop_leaks(rows, forbidden)
    check_no_leak(rows, forbidden)
    return rows, dropped


# ---- keeping evaluation and test data out -------------------------------------------------------------

@dataclass
class Forbidden:
    hashes: dict[str, str]  # hash -> where it comes from
    texts: dict[str, str]   # normalised text -> where it comes from


def forbidden_texts(root: str | Path) -> Forbidden:
    """Every Leaner-Eval question, the leaner test split's math and code rows, and every Leaner-Glue
    validation and test row of the TinyHelen folder ROOT."""
    root = Path(root)
    out = Forbidden({}, {})

    def add(text, where, hash=None):
        if text and normalise(text):
            out.texts.setdefault(normalise(text), where)
        if hash:
            out.hashes.setdefault(hash, where)

    if (root / "leaner" / "eval").is_dir():
        for name, path in eval_files(root).items():
            for line, row in iter_json_lines(path):
                add(row.get("question"), f"{path}:{line}", row.get("hash"))
    for genre, fields in (("math", ("problem",)), ("code", ("prompt", "response"))):
        path = _split_file(root, "test", genre)
        for line, row in iter_json_lines(path) if path else ():
            for f in fields:
                add(row.get(f), f"{path}:{line}", row.get("hash"))
    glue = root / "leaner" / "glue"
    for path in sorted(glue.glob("*.jsonl")) if glue.is_dir() else ():
        task, _, split = path.stem.partition("_")
        if task in GLUE_TASKS and split != "train":
            for line, row in iter_json_lines(path):
                for f in GLUE_TASKS[task].text_fields:
                    add(row.get(f), f"{path}:{line}")
    return out


def leak(row, forbidden: Forbidden) -> str | None:
    """Why a row (dict or Instruction) may not be trained on (it shares a hash or a normalised text
    with held-out data), or None."""
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k, None)
    if get("hash") in forbidden.hashes:
        return f"hash {get('hash')[:16]}... is held out ({forbidden.hashes[get('hash')]})"
    joined = "\n".join(t for t in (get("instruction"), get("input")) if t)
    for text in (get("instruction"), get("input"), get("output"), joined):
        key = normalise(text or "")
        if key and key in forbidden.texts:
            return f"the text {text[:60]!r} is held out ({forbidden.texts[key]})"
    return None


def drop_leaks(rows: list[dict], forbidden: Forbidden) -> tuple[list[dict], int]:
    """The converters' filter: (rows that do not leak, how many did). Templated math repeats across
    splits (the same '70 x 5' problem is in train and test), so a converted set must drop them."""
    kept = [r for r in rows if leak(r, forbidden) is None]
    return kept, len(rows) - len(kept)


def check_no_leak(rows: list, forbidden: Forbidden) -> None:
    """DataError at the first row that leaks (leak), naming it: for files given to train."""
    for i, r in enumerate(rows):
        reason = leak(r, forbidden)
        if reason:
            get = r.get if isinstance(r, dict) else lambda k, r=r: getattr(r, k, None)
            where = (f"{get('path')}:{get('line')}" if get("path")
                     else f"instruction row {i + 1} ({get('source')})")
            raise DataError(f"{where}: {reason}: evaluation and test rows must not be trained on; remove the "
                            f"row (instruct.py convert drops such rows itself)")


# ---- tokenised examples and their batches -------------------------------------------------------------

@dataclass
class Encoded:
    tokens: list[np.ndarray]   # per example: eot, prompt, response, eot
    prompt_len: list[int]      # tokens before the response (the leading eot included)


def encode(instructions: list[Instruction], tokenizer, max_len: int) -> tuple[Encoded, int]:
    """Each example as eot + prompt + response + eot, cut to max_len + 1 tokens (inputs and targets of
    max_len positions); examples whose response would be cut away entirely are dropped (their count
    is returned). The leading eot is what every pre-training document followed."""
    eot = tokenizer.eot_id
    prompts = tokenizer.encode_batch([i.prompt() for i in instructions])
    outputs = tokenizer.encode_batch([i.output for i in instructions])
    tokens, prompt_len, dropped = [], [], 0
    for p, o in zip(prompts, outputs):
        ids = np.array([eot] + p + o + [eot], dtype=np.int64)[:max_len + 1]
        if len(ids) <= len(p) + 1:
            dropped += 1
            continue
        tokens.append(ids)
        prompt_len.append(len(p) + 1)
    return Encoded(tokens, prompt_len), dropped


def make_batch(enc: Encoded, rows, loss_on: str, pad_id: int, multiple: int = 16):
    """(x, y) (B, T) for examples rows: right-padded, y = -1 at the padding and, with loss_on="response",
    at every target that is still part of the prompt."""
    longest = max(len(enc.tokens[r]) - 1 for r in rows)
    T = -(-longest // multiple) * multiple
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        ids = torch.from_numpy(enc.tokens[r])
        n = len(ids) - 1
        x[b, :n], y[b, :n] = ids[:-1], ids[1:]
        if loss_on == "response":
            # target i is token i + 1: the prompt's tokens are targets 0 .. prompt_len - 2
            y[b, :enc.prompt_len[r] - 1] = -1
    return x, y


class InstructionBatches:
    """The Trainer's batch source over encoded examples: each epoch a seeded shuffle, cut into
    batches of examples of similar length (sorted within windows of 50 batches), the batches shuffled;
    its state is (epoch, batch) so a resumed run continues exactly."""

    def __init__(self, enc: Encoded, batch_size: int, loss_on: str, pad_id: int, seed: int = 0):
        if not enc.tokens:
            raise DataError("no instruction examples to train on")
        self.enc, self.batch_size, self.loss_on = enc, batch_size, loss_on
        self.pad_id, self.seed = pad_id, seed
        self.epoch, self.cursor = 0, 0
        self.plan = self._plan(0)

    def _plan(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.enc.tokens))
        lengths = np.array([len(t) for t in self.enc.tokens])
        window = self.batch_size * 50
        order = np.concatenate([w[np.argsort(lengths[w], kind="stable")]
                                for w in np.split(order, range(window, len(order), window))])
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def next_batch(self):
        if self.cursor == len(self.plan):
            self.epoch, self.cursor = self.epoch + 1, 0
            self.plan = self._plan(self.epoch)
        rows = self.plan[self.cursor]
        self.cursor += 1
        return make_batch(self.enc, rows, self.loss_on, self.pad_id)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "n": len(self.enc.tokens)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n") != len(self.enc.tokens) or state.get("seed") != self.seed:
            raise DataError("--resume: the instruction set or seed changed since the checkpoint was written")
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self.plan = self._plan(self.epoch)


def all_batches(enc: Encoded, batch_size: int, loss_on: str, pad_id: int):
    """Every example once, in order, as (x, y) batches: for the dev loss."""
    for i in range(0, len(enc.tokens), batch_size):
        yield make_batch(enc, list(range(i, min(i + batch_size, len(enc.tokens)))), loss_on, pad_id)


__all__ = ["SOURCES", "convert", "forbidden_texts", "check_no_leak", "drop_leaks", "leak", "normalise",
           "encode", "make_batch", "InstructionBatches", "all_batches", "task_prompt"]
