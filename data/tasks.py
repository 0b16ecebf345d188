"""Readers for the task data beside the pre-training corpus: Leaner-Glue, Leaner-Eval, instruction JSONL.

    ROOT/leaner/glue/TASK_SPLIT.jsonl   one labelled example per line; each task's text fields and
                                        label type are in data/corpus.py's GLUE_TASKS (stsb: a float
                                        0-5, the others: class ids). mnli has validation_matched and
                                        validation_mismatched, not validation. The local copy lacks the
                                        train files of sst2, mnli, qnli and qqp (4 MiB or more).
    ROOT/leaner/eval/NAME.jsonl         open questions: question, source, hash. all.jsonl holds the
                                        1,594 of them, split-A-B.jsonl and inner_comparison.jsonl subsets
    any instruction file                instruction, optional input, output (or response)

Every reader checks each row completely and raises DataError naming the file, the line, what is
wrong and the valid choices, so a bad file stops a run before any model is built. ROOT may be the
TinyHelen folder itself or the glue / eval folder inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.corpus import GLUE_TASKS, DataError, GlueTask, get_field, iter_json_lines, task_prompt


def _folder(root: str | Path, name: str) -> Path:
    """ROOT/leaner/NAME, ROOT/NAME, or ROOT itself when it is that folder."""
    root = Path(root)
    for folder in (root / "leaner" / name, root / name, root):
        if folder.is_dir() and folder.name == name:
            return folder
    raise DataError(f"no Leaner-{name.capitalize()} folder at {root}: expected {root / 'leaner' / name} "
                    f"(or that folder itself), as in the TinyHelen release (../shared/data/tinyhelen)")


# ---- Leaner-Glue --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GlueExample:
    task: str
    texts: tuple[str, ...]   # the task's text fields, in GLUE_TASKS order
    label: int | float       # a class id, or stsb's similarity score
    idx: int
    path: str
    line: int


def glue_task(name: str) -> GlueTask:
    if name not in GLUE_TASKS:
        raise DataError(f"unknown Leaner-Glue task {name!r}: the tasks are {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[name]


def glue_file(root: str | Path, task: str, split: str) -> Path:
    """ROOT/leaner/glue/TASK_SPLIT.jsonl, checked to be a split of the task and to exist."""
    spec = glue_task(task)
    if split not in spec.splits:
        raise DataError(f"Leaner-Glue {task} has no split {split!r}: its splits are {', '.join(spec.splits)}")
    path = _folder(root, "glue") / f"{task}_{split}.jsonl"
    if not path.is_file():
        present = glue_splits(root, task)
        raise DataError(f"{path} not found; the {task} splits here: {', '.join(present) or 'none'}"
                        + (" (the TinyHelen release's files of 4 MiB or more, such as the train files of "
                           "sst2, mnli, qnli and qqp, may be absent from a local copy: split a validation file "
                           "into train and dev instead, and say so)" if split == "train" else ""))
    return path


def glue_splits(root: str | Path, task: str) -> list[str]:
    """The splits of a task that have a file under ROOT."""
    folder = _folder(root, "glue")
    return [s for s in glue_task(task).splits if (folder / f"{task}_{s}.jsonl").is_file()]


def _glue_label(row: dict, spec: GlueTask, where: str) -> int | float:
    if spec.regression:
        label = get_field(row, "label", where, kind=(int, float))
        if not 0 <= label <= 5:
            raise DataError(f"{where}: {spec.name} label {label} is outside the similarity range 0-5")
        return float(label)
    label = get_field(row, "label", where, kind=int)
    if not 0 <= label < spec.num_labels:
        names = ", ".join(f"{i} {n}" for i, n in enumerate(spec.labels))
        raise DataError(f"{where}: {spec.name} label {label} is not a class id ({names})")
    return label


def read_glue(root: str | Path, task: str, split: str) -> list[GlueExample]:
    """Every example of one task's split, checked: text fields are strings, the label is of the task's
    type and range, idx is an int."""
    return read_glue_file(glue_file(root, task, split), task)


def read_glue_file(path: str | Path, task: str) -> list[GlueExample]:
    """Every example of a file of one task's rows (any split, such as the release's labelled
    TASK_test.jsonl), checked as read_glue checks them."""
    spec = glue_task(task)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Leaner-Glue {task} file not found: {path}")
    examples = []
    for line, row in iter_json_lines(path):
        where = f"{path}:{line}"
        texts = tuple(get_field(row, f, where, f"{task} row") for f in spec.text_fields)
        label = _glue_label(row, spec, where)
        idx = get_field(row, "idx", where, kind=int)
        examples.append(GlueExample(task, texts, label, idx, str(path), line))
    if not examples:
        raise DataError(f"{path} holds no examples")
    return examples


def holdout(examples: list, dev_fraction: float, seed: int = 0) -> tuple[list, list]:
    """(train, dev): a seeded random dev_fraction of the examples held out, both in file order. For the
    tasks whose train file the local copy lacks, fine-tune on part of the validation file (and say so)."""
    if not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must be between 0 and 1, got {dev_fraction}")
    n_dev = max(1, round(len(examples) * dev_fraction))
    dev = set(np.random.default_rng(seed).permutation(len(examples))[:n_dev].tolist())
    return ([e for i, e in enumerate(examples) if i not in dev], [e for i, e in enumerate(examples) if i in dev])


# ---- Leaner-Eval ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalQuestion:
    question: str
    source: str   # who wrote it (gpt-4-0125, chatgpt)
    hash: str     # sha256 hex, the same in all.jsonl and the subsets
    path: str
    line: int


def eval_files(root: str | Path) -> dict[str, Path]:
    """{name: path} of the question files under ROOT/leaner/eval: all, split-0-7, ..."""
    return {p.name.removesuffix(".jsonl"): p for p in sorted(_folder(root, "eval").glob("*.jsonl"))}


def read_eval(root: str | Path, name: str = "all") -> list[EvalQuestion]:
    """The questions of one Leaner-Eval file (all, or a subset such as split-0-7), each hash once."""
    files = eval_files(root)
    if name not in files:
        raise DataError(f"no Leaner-Eval file {name!r} in {_folder(root, 'eval')}: the files are "
                        f"{', '.join(files) or 'none'}")
    path, questions, seen = files[name], [], {}
    for line, row in iter_json_lines(path):
        where = f"{path}:{line}"
        fields = (get_field(row, f, where, "Leaner-Eval row") for f in ("question", "source", "hash"))
        q = EvalQuestion(*fields, str(path), line)
        if q.hash in seen:
            raise DataError(f"{where}: hash {q.hash[:16]}... was already used at line {seen[q.hash]}")
        seen[q.hash] = line
        questions.append(q)
    if not questions:
        raise DataError(f"{path} holds no questions")
    return questions


# ---- instruction JSONL ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Instruction:
    instruction: str
    input: str    # "" when the row has none
    output: str
    path: str
    line: int

    def prompt(self) -> str:
        """The model's input: `### TASK INPUT:\\n{instruction}\\n{input}\\n\\n### RESPONSE:\\n`."""
        return task_prompt(self.instruction, self.input)

    def text(self) -> str:
        """Prompt and answer, the text instruction tuning trains on (the loss usually on the answer only)."""
        return self.prompt() + self.output


def read_instructions(path: str | Path) -> list[Instruction]:
    """Rows of {"instruction", "input" (optional), "output"} ("response" is accepted for "output")."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"instruction file not found: {path} (expected JSON lines of "
                        f"{{\"instruction\": ..., \"input\": ..., \"output\": ...}})")
    rows = []
    for line, row in iter_json_lines(path):
        where = f"{path}:{line}"
        instruction = get_field(row, "instruction", where, "instruction row")
        given = get_field(row, "input", where, "instruction row", required=False) or ""
        if "output" in row and "response" in row:
            raise DataError(f"{where}: the row has both 'output' and 'response': keep one of them")
        output = get_field(row, "response" if "response" in row else "output", where, "instruction row")
        rows.append(Instruction(instruction, given, output, str(path), line))
    if not rows:
        raise DataError(f"{path} holds no instructions")
    return rows
