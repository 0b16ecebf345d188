"""What every study shares: when a run is finished, how a step is run and timed, how seeds and extra
flags are read, how mean ± sd and tables are written, how a figure is saved.

A study is a list of steps (prepare, train, fine-tune, report...) that a user could type one by one.
The studies differ in their questions, not in these chores, so each chore has one definition here and
a study that reads `common.run_state(...)` or `runner.command(...)` means the same thing as every
other study that does.
"""

from __future__ import annotations

import json
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tinyhelen.atomic import append_line
from tinyhelen.metrics import save_figure

REPO = Path(__file__).resolve().parents[1]

FINISHED, STOPPED, ABSENT = "finished", "stopped", "absent"


# ----------------------------------------------------------------------------- is this run done?

def run_state(run_dir: str | Path, result: str | Path | None = None) -> str:
    """"finished", "stopped" (continue it with --resume) or "absent" (start it).

    A study that writes a result file after a run (result.json, bits_per_byte.json) counts the run
    finished only once that file exists: the result is the study's record, and a checkpoint at its
    last step without it means the run stopped between training and writing, so it is resumed (the
    trainer then has nothing left to train) and the result written. `result` is a path relative to
    run_dir, or an absolute one where the result sits beside the run folder.

    Without a result file, a run is finished when its checkpoint has reached the config's max_steps:
    the trainer's own record that it is done. A checkpoint is written atomically, so a file that is
    there is whole."""
    run_dir = Path(run_dir)
    if result is not None and (run_dir / result).is_file():
        return FINISHED
    ckpt = run_dir / "ckpt.pt"
    if not ckpt.is_file():
        return ABSENT
    if result is not None:
        return STOPPED
    import torch  # here, not at the top: a dry run of a study should not pay for importing torch
    # mmap: only the step and the config are read, not the weights and optimizer state
    state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    return FINISHED if state["step"] >= state["config"]["max_steps"] else STOPPED


def require_finished(run_dir: str | Path, first: str, dry_run: bool = False) -> None:
    """Refuse to go on from a run that has not finished (exit with a message naming the command to
    run `first`): a stopped run still has a checkpoint, and fine-tuning or scoring it would measure
    the wrong model. A dry run goes on, since it only prints the commands."""
    if not dry_run and run_state(run_dir) != FINISHED:
        raise SystemExit(f"error: {run_dir} has not finished (no checkpoint, or one before its last step); "
                         f"run {first} first (it resumes), then this step again")


# ----------------------------------------------------------------------------- running the steps

class Runner:
    """Runs a study's steps: prints each one first (so the output is the recipe a user could type),
    skips it on a dry run, and appends its wall time and exit code to OUT_DIR/times.jsonl, so the
    cost of every study is on record beside its results.

    `command` runs one of the project's commands as a subprocess from the repository root (the
    commands name files such as train.py and configs/ relative to it); `call` runs a Python function
    in this process, for studies that train through train.pretrain and friends."""

    def __init__(self, out_dir: str | Path, dry_run: bool = False):
        self.times = Path(out_dir) / "times.jsonl"
        self.dry_run = dry_run

    def command(self, step: str, args: Sequence[str | Path]) -> None:
        """Run `python ARGS...`; on failure say what to do and exit with the command's own code."""
        args = [str(a) for a in args]
        print("$ " + " ".join(["python", *args]), flush=True)
        if self.dry_run:
            return
        began = time.perf_counter()
        rc = subprocess.run([sys.executable, *args], cwd=REPO).returncode
        self._record(step, " ".join(args), began, rc)
        if rc != 0:
            print(f"error: that command failed (exit {rc}); fix what it says and run the study again: "
                  f"what is done is kept", file=sys.stderr)
            raise SystemExit(rc)

    def call(self, step: str, label: str, fn: Callable, *args, **kwargs):
        """Run fn(*args, **kwargs) as one step named `label`; returns its value (None on a dry run).
        An exception still records the step (rc 1, or the SystemExit code) and then propagates, so
        the study's own error handling says what went wrong."""
        print(f"=== {label}", flush=True)
        if self.dry_run:
            return None
        began, rc = time.perf_counter(), 1
        try:
            value = fn(*args, **kwargs)
            rc = 0
            return value
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
            raise
        except KeyboardInterrupt:
            rc = 130  # the shell's code for Ctrl-C
            raise
        finally:
            self._record(step, label, began, rc)

    def _record(self, step: str, command: str, began: float, rc: int) -> None:
        seconds = round(time.perf_counter() - began, 1)
        append_line(self.times, json.dumps({"step": step, "command": command, "seconds": seconds, "rc": rc}))


# ----------------------------------------------------------------------------- seeds and flags

# Seeds are `tuple[int, ...]` fields and extra flags `tuple[str, ...]` fields in every study's config:
# tinyhelen/config.py reads `--seeds=1,2,3` and `--train_flags=--dtype=fp32,--threads=1` into tuples
# and says which flag is wrong when an item is not an integer.

def at_least_one(values: Sequence) -> str | None:
    """A `setting(check=...)` for list fields that must not be empty (--seeds=, --depths=)."""
    return None if values else "must list at least one value"


def all_positive(values: Sequence[float]) -> str | None:
    """A `setting(check=...)` for lists of sizes and ratios."""
    return None if values and all(v > 0 for v in values) else "must list at least one value, all positive"


def flag_list(items: Iterable[str]) -> list[str]:
    """The command-line flags of a `tuple[str, ...]` flags field, one flag per item.

    The config splits the field's text at commas, which also splits a flag whose value is itself a
    comma list (--flags=--lrs=1e-3,3e-3,--epochs=2 arrives as --lrs=1e-3, 3e-3, --epochs=2): an item
    that does not start with "-" is such a continuation and is joined back. Items may also hold
    several flags separated by spaces (--flags="--max_steps=400 --lr=1e-3", the form some studies'
    documented commands use), split the way a shell would."""
    flags: list[str] = []
    for item in items:
        words = shlex.split(item)
        if words and flags and not words[0].startswith("-"):
            flags[-1] += "," + words.pop(0)
        flags += words
    return flags


# ----------------------------------------------------------------------------- numbers and tables

def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n - 1); the deviation is None for one value, which
    has no spread to show (0 would claim a measured spread of nothing)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def format_mean_sd(mean: float, sd: float | None, spec: str = ".4f") -> str:
    """"mean ± sd" in the given format, or the mean alone when there is no spread."""
    return f"{mean:{spec}}" if sd is None else f"{mean:{spec}} ± {sd:{spec}}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], align: str = "") -> str:
    """A Markdown table; align has one letter per column, l or r (default: the first column, a name,
    left and the others, numbers, right). Cells are written as given (format numbers first)."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(header)} columns")
    lines = ["| " + " | ".join(header) + " |",
             "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures

@contextmanager
def figure(path: str | Path, nrows: int = 1, ncols: int = 1, **subplots):
    """`with figure(PATH, figsize=(6, 4)) as (fig, ax): ...` draws on new axes and, when the block
    ends without an error, lays them out and writes PATH through tinyhelen.metrics.save_figure (an
    atomic write: a crash leaves the old picture or the new one). matplotlib draws with Agg, because
    studies run on machines without a display."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(nrows, ncols, **subplots)
    try:
        yield fig, axes
    except BaseException:
        plt.close(fig)
        raise
    fig.tight_layout()
    save_figure(fig, path)
