"""Leaner-Glue: fine-tune a pre-trained tiny Llama or Mamba (or the same architecture from scratch) on
the GLUE tasks rewritten in simple language, and score it as GLUE does.

    python finetune_glue.py configs/glue_cpu.py --task=rte --init_from=out/leaner_llama
    python finetune_glue.py configs/glue_cpu.py --task=all --init_from=out/leaner_llama --lrs=1e-4,1e-3
    python finetune_glue.py configs/glue_cpu.py --task=cola --init_from=scratch:out/leaner_llama  # random
    python finetune_glue.py ... --test_dir=PATH    # the release's labelled TASK_test*.jsonl files

The model, its inputs, GLUE's metrics and the batches are in tinyhelen/glue.py: the backbone's hidden
state at each sequence's last real token, then a linear score head; a pair task's two sentences joined
by a newline; at most seq_len (256) tokens. The run starts from --init_from, opened as every stage
opens a run (tinyhelen/runs.py), or from random weights (scratch, scratch:RUN).

Data. Each task's train file trains and its validation file is the dev set. sst2, mnli, qnli and qqp
have no train file in the local copy: their validation file is split with a fixed seed into train and
dev (dev_fraction held out; every output and table says so). mnli: matched and mismatched are each
split so, and trained on together. A labelled test file (--test_file for one task, --test_dir for
TASK_test.jsonl / mnli_test_matched.jsonl / mnli_test_mismatched.jsonl) scores the selected step.

Selection. The dev set is scored eval_every steps (evals_per_epoch times per epoch by default) with
the task's main GLUE metric (cola MCC; mrpc, qqp the mean of F1 and accuracy; stsb the mean of
Pearson and Spearman; mnli matched accuracy; accuracy otherwise); the best step's weights are kept in
memory and scored on the test file. Each run ends with one JSON line (task, dev, test, settings) that
is also written to OUT_DIR/TASK/lr{LR}_seed{SEED}/result.json; a sweep restarted with the same
command skips the runs that have one (a run that was interrupted starts again from its beginning).
The sweep ends by writing OUT_DIR/summary.md and summary.png (tinyhelen/glue_report.py aggregates several
sweeps into one table and chart).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tinyhelen import config as config_lib
from tinyhelen import machine as machine_lib
from tinyhelen import runlock
from tinyhelen.atomic import atomic_write_json
from tinyhelen.checkpoint import CheckpointError, build_model, model_class
from tinyhelen.config import setting
from tinyhelen.glue import MAIN_METRIC, SEPARATOR, DevSelection, GlueBatches, SequenceClassifier, TaskData, \
    classifier_loss, encode, glue_metrics, majority_score, predict
from tinyhelen.runs import load_run, load_tokenizer_from
from data.corpus import GLUE_TASKS, DataError
from data.tasks import glue_file, glue_splits, glue_task, holdout, read_glue, read_glue_file
from trainer import Trainer, TrainConfig

HOLDOUT_SEED = 0    # the fixed split of a validation file into train and dev
# The paper's epochs per task (wnli is not given there: 50, as rte, the other small pair task).
PAPER_EPOCHS = {"cola": 30, "sst2": 3, "mrpc": 30, "qqp": 3, "stsb": 30, "mnli": 3, "qnli": 3, "rte": 50,
                "wnli": 50}


def _check_tasks(value: str) -> str | None:
    names = value.split(",")
    if value == "all" or names and all(n in GLUE_TASKS for n in names):
        return None
    return f"must be all or a comma list of {', '.join(GLUE_TASKS)}"


def _check_positive(values) -> str | None:
    return None if all(v > 0 for v in values) else "must all be greater than 0"


@dataclass
class GlueConfig(TrainConfig):
    # Keys of the training config this stage does not read: setting one is an error that says what to
    # set instead (tinyhelen/config.py), not a value silently ignored.
    unread_keys = {
        "data_dir": "use --glue_dir, the folder of the Leaner-Glue task files",
        "eval_steps": "every evaluation scores the whole dev set; set how often with --eval_every or "
                      "--evals_per_epoch",
        "sample_prompt": "fine-tuning writes no text sample (sample.py does, from a pre-training run)",
        "sample_tokens": "fine-tuning writes no text sample (sample.py does, from a pre-training run)",
        "bpb_genres": "the score is the task's GLUE metric; evaluate.py measures bits per byte",
    }
    task: str = setting("rte", check=_check_tasks)   # a task, a comma list, or all
    glue_dir: str = "../shared/data/tinyhelen/leaner/glue"
    init_from: str = ""  # a train.py run (folder or ckpt.pt), a transformers folder, scratch, scratch:RUN
    tokenizer: str = ""  # for scratch / transformers: a run or data folder, tokenizer.json, cl100k_base
    name: str = ""             # the model's row in tables; default: the init_from folder's name
    test_file: str = ""        # a labelled test file of the (single) task
    test_dir: str = ""         # a folder of TASK_test.jsonl files (mnli: mnli_test_matched/mismatched.jsonl)
    lrs: tuple[float, ...] = setting((), check=_check_positive)  # the sweep's learning rates; empty: lr
    seeds: tuple[int, ...] = ()                                   # the sweep's seeds; empty: seed
    task_epochs: dict = field(default_factory=lambda: dict(PAPER_EPOCHS))  # set in a config file
    epochs: int = setting(0, min=0)            # every task's epochs; 0: task_epochs
    max_steps: int = setting(0, min=0)         # a cap on the steps of each run; 0: the epochs decide
    eval_every: int = setting(0, min=0)        # 0: evals_per_epoch times per epoch
    evals_per_epoch: int = setting(2, min=1)
    eval_batch_size: int = setting(64, min=1)
    dev_fraction: float = setting(0.2, above=0, max=0.5)  # of validation held out as dev (no train file)
    max_train: int = setting(0, min=0)         # use at most this many training examples (0: all)
    bucket: int = setting(16, min=0)           # length-sort runs of this many batches (0: no bucketing)
    keep_checkpoints: bool = False             # keep each run's ckpt.pt (model and optimizer: large)
    # The paper's optimisation: linear decay to zero, no warmup, no weight decay.
    out_dir: str = "out/glue/run"
    data_dir: str = ""
    batch_size: int = setting(32, min=1)
    seq_len: int = setting(256, min=2)
    lr: float = setting(1e-4, above=0)
    min_lr: float = setting(0.0, min=0)
    warmup_steps: int = setting(0, min=0)
    decay: str = setting("linear", choices=("cosine", "linear", "constant"))
    weight_decay: float = setting(0.0, min=0)
    log_every: int = setting(50, min=1)
    ckpt_every: int = setting(10**9, min=1)   # the Trainer's end-of-run checkpoint only
    sample_tokens: int = setting(0, min=0)    # unread (above): 0, so each run's saved config says so
    compile: bool = False     # batch shapes vary; eager runs the fused CPU kernels anyway
    resume: bool = setting(False, check=lambda v: None if not v else (
        "is not a fine-tuning setting: a sweep restarted with the same command skips its finished runs "
        "and starts unfinished ones again"))

    def __post_init__(self):
        super().__post_init__()
        bad = [k for k, v in self.task_epochs.items()
               if k not in GLUE_TASKS or not isinstance(v, int) or v < 1]
        if bad:
            raise ValueError(f"task_epochs: {bad[0]!r} must be a task ({', '.join(GLUE_TASKS)}) with a "
                             f"whole number of epochs >= 1")

    @property
    def tasks(self) -> list[str]:
        return list(GLUE_TASKS) if self.task == "all" else list(dict.fromkeys(self.task.split(",")))


# ----------------------------------------------------------------------------- data

def test_files(cfg: GlueConfig, task: str) -> dict[str, Path]:
    """{"test": path} (mnli: "test" matched, "test_mm" mismatched) from --test_file / --test_dir."""
    if cfg.test_file:
        return {"test": Path(cfg.test_file)}
    if not cfg.test_dir:
        return {}
    names = {"test": "mnli_test_matched", "test_mm": "mnli_test_mismatched"} if task == "mnli" else \
        {"test": f"{task}_test"}
    files = {k: Path(cfg.test_dir) / f"{n}.jsonl" for k, n in names.items()}
    for path in files.values():
        if not path.is_file():
            present = sorted(p.name for p in Path(cfg.test_dir).glob("*_test*.jsonl")) if \
                Path(cfg.test_dir).is_dir() else []
            raise DataError(f"--test_dir: {path} not found (test files there: "
                            f"{', '.join(present) or 'none'})")
    return files


def load_task(cfg: GlueConfig, task: str, tokenizer) -> TaskData:
    """Read, check and tokenize one task's train, dev and test sets (before any model is built)."""
    enc = lambda examples, source: encode(examples, tokenizer, cfg.seq_len, source)  # noqa: E731
    held_out = "train" not in glue_splits(cfg.glue_dir, task)
    dev_names = {"dev": "validation_matched", "dev_mm": "validation_mismatched"} if task == "mnli" else \
        {"dev": "validation"}
    train, dev = [], {}
    for name, split in dev_names.items():
        examples = read_glue(cfg.glue_dir, task, split)
        path = glue_file(cfg.glue_dir, task, split)
        if held_out:
            rest, kept = holdout(examples, cfg.dev_fraction, HOLDOUT_SEED)
            train += rest
            dev[name] = enc(kept, f"{path}, {cfg.dev_fraction:.0%} held out (seed {HOLDOUT_SEED})")
        else:
            dev[name] = enc(examples, str(path))
    if held_out:
        train_source = (f"{glue_file(cfg.glue_dir, task, dev_names['dev']).parent}/{task}_"
                        f"{'validation*' if task == 'mnli' else 'validation'}.jsonl, the other "
                        f"{1 - cfg.dev_fraction:.0%} (no train file here)")
    else:
        train = read_glue(cfg.glue_dir, task, "train")
        train_source = str(glue_file(cfg.glue_dir, task, "train"))
    if cfg.max_train and len(train) > cfg.max_train:
        keep = np.sort(np.random.default_rng(HOLDOUT_SEED).permutation(len(train))[:cfg.max_train])
        train = [train[i] for i in keep]
        train_source += f" (a fixed random {cfg.max_train} of them: --max_train)"
    if len(train) < cfg.batch_size:
        raise config_lib.ConfigError(f"{task} has {len(train)} training examples, fewer than one batch of "
                                     f"--batch_size={cfg.batch_size}: lower it")
    test = {k: enc(read_glue_file(p, task), str(p)) for k, p in test_files(cfg, task).items()}
    return TaskData(task, enc(train, train_source), dev, test, held_out)


# ----------------------------------------------------------------------------- where a run starts

@dataclass
class Start:
    """What every run of a sweep starts from: an architecture, the weights to load (init_from for the
    Trainer; "" for random weights), the tokenizer, and the model's name in tables."""
    model_config: object
    init_from: str
    tokenizer: object
    data_meta: dict
    name: str


def resolve_start(cfg: GlueConfig) -> Start:
    if not cfg.init_from:
        raise config_lib.ConfigError(
            "--init_from is required: a train.py run folder (or its ckpt.pt), a transformers folder, "
            "scratch:RUN (random weights in RUN's architecture, with RUN's tokenizer), or scratch "
            "(random weights of --model, with --tokenizer)")
    scratch, _, like = cfg.init_from.partition(":") if cfg.init_from.startswith("scratch") else ("", "", "")
    if scratch and scratch != "scratch":
        raise config_lib.ConfigError(f"--init_from={cfg.init_from}: write scratch or scratch:RUN")
    weights = like if scratch else cfg.init_from
    if weights:
        model, tokenizer, meta = load_run(weights, tokenizer=cfg.tokenizer)
        model_config = model.config  # the Trainer loads the weights itself (init_from)
    else:
        if not cfg.tokenizer:
            raise config_lib.ConfigError("--init_from=scratch needs --tokenizer (a run or data folder, a "
                                         "tokenizer.json): the one the compared pre-trained models use")
        model_config, meta = cfg.model, {}
        tokenizer = load_tokenizer_from(cfg.tokenizer)
    if not hasattr(model_class(type(model_config).__name__)[1], "hidden_states"):
        raise config_lib.ConfigError(f"{type(model_config).__name__.removesuffix('Config')} has no "
                                     f"hidden_states(idx) yet, which the classifier reads")
    kind = type(model_config).__name__.removesuffix("Config").lower()
    name = cfg.name or (f"scratch_{kind}" if scratch else Path(weights).resolve().name.removesuffix(".pt"))
    if tokenizer.vocab_size > model_config.vocab_size:
        raise config_lib.ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                                     f"vocabulary is {model_config.vocab_size}: they do not belong together")
    max_len = getattr(model_config, "max_seq_len", None)
    if max_len is not None and cfg.seq_len > max_len:
        raise config_lib.ConfigError(f"--seq_len={cfg.seq_len} is longer than the model's max_seq_len "
                                     f"{max_len}: lower --seq_len")
    meta = {**meta, "tokenizer_name": tokenizer.name, "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id}
    return Start(model_config, "" if scratch else cfg.init_from, tokenizer, meta, name)


# ----------------------------------------------------------------------------- runs and sweeps

def run_dir(cfg: GlueConfig, task: str, lr: float, seed: int) -> Path:
    return Path(cfg.out_dir) / task / f"lr{lr:g}_seed{seed}"


def run_settings(cfg: GlueConfig, start: Start, data: TaskData, lr: float, seed: int) -> dict:
    """Everything that decides a run's outcome: a finished run is reused only when these are equal."""
    keys = ("batch_size", "seq_len", "max_steps", "eval_every", "evals_per_epoch", "dev_fraction",
            "max_train", "bucket", "min_lr", "warmup_steps", "decay", "weight_decay", "beta1", "beta2",
            "grad_clip", "grad_accum", "dtype", "glue_dir")
    settings = {k: getattr(cfg, k) for k in keys}
    epochs = cfg.epochs or cfg.task_epochs.get(data.task, PAPER_EPOCHS[data.task])
    model = {**config_lib.to_dict(start.model_config), "__class__": type(start.model_config).__name__}
    settings.update(task=data.task, lr=lr, seed=seed, epochs=epochs, init_from=start.init_from, model=model,
                    tokenizer=start.tokenizer.name, train_examples=len(data.train.labels),
                    test={k: v.source for k, v in data.test.items()}, separator=SEPARATOR)
    return json.loads(json.dumps(settings))  # as it reads back from result.json


def finetune(cfg: GlueConfig, start: Start, data: TaskData, lr: float, seed: int,
             machine: machine_lib.Machine, peak_flops: float) -> dict:
    """One fine-tuning run; returns (and writes to its result.json) its result."""
    task, spec = data.task, glue_task(data.task)
    settings = run_settings(cfg, start, data, lr, seed)
    out = run_dir(cfg, task, lr, seed)
    if out.exists():  # an interrupted earlier attempt: start it again from the beginning
        shutil.rmtree(out)
    source = GlueBatches(data.train, cfg.batch_size, cfg.seq_len, seed, cfg.bucket,
                         desc=f"{task} lr {lr:g} seed {seed}", epochs=settings["epochs"])
    steps = settings["epochs"] * source.steps_per_epoch
    steps = min(steps, cfg.max_steps) if cfg.max_steps else steps
    run_cfg = dataclasses.replace(
        cfg, lr=lr, seed=seed, out_dir=str(out), max_steps=steps, init_from=start.init_from,
        model=start.model_config, peak_flops=peak_flops, lrs=(), seeds=(),
        eval_every=cfg.eval_every or max(1, source.steps_per_epoch // cfg.evals_per_epoch))
    torch.manual_seed(seed)  # the head's initial weights (and a scratch backbone's)
    model = SequenceClassifier(build_model(start.model_config), 1 if spec.regression else spec.num_labels)
    selection = DevSelection(data, cfg.eval_batch_size, cfg.seq_len)
    began = time.perf_counter()
    trainer = Trainer(run_cfg, source, model=model, loss=classifier_loss, evaluate=selection,
                      init_prefix="backbone.", data_meta=start.data_meta, machine=machine)
    try:
        trainer.run()
    finally:
        source.close()
    model.load_state_dict(selection.best_state)
    test = {name: glue_metrics(task, predict(model, split, cfg.eval_batch_size, cfg.seq_len, machine.device,
                                             machine.autocast), split.labels)
            for name, split in data.test.items()}
    result = {
        "task": task, "model": start.name, "metric": MAIN_METRIC.get(task, "accuracy"),
        "dev": selection.best,
        **({"dev_mm": selection.best_metrics["dev_mm_score"]} if "dev_mm" in data.dev else {}),
        **{name: m["score"] for name, m in test.items()},
        "lr": lr, "seed": seed, "best_step": selection.best_step, "steps": steps,
        "majority_dev": majority_score(task, data.train, data.dev["dev"]),
        "dev_metrics": selection.best_metrics, "test_metrics": test,
        "data": {"train": data.train.source, "train_examples": len(data.train.labels),
                 "dev": {k: v.source for k, v in data.dev.items()},
                 "dev_examples": {k: len(v.labels) for k, v in data.dev.items()},
                 "dev_held_out_of_validation": data.held_out, "truncated_train": data.train.truncated,
                 "pair_separator": SEPARATOR if len(spec.text_fields) > 1 else None},
        "init_report": {k: len(v) for k, v in trainer.init_report.items()} if trainer.init_report else None,
        "wall_s": round(time.perf_counter() - began, 2), "settings": settings,
    }
    atomic_write_json(out / "result.json", result)
    if not cfg.keep_checkpoints:
        (out / "ckpt.pt").unlink(missing_ok=True)
    print(json.dumps(result), flush=True)
    return result


def plan(cfg: GlueConfig) -> tuple[Start, dict[str, TaskData], list[tuple[str, float, int, dict | None]]]:
    """Everything read and checked before any compute: the start, every task's data, and each run of
    the sweep with its earlier result (None when it still has to run)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise config_lib.ConfigError("finetune_glue.py runs in one process (each run is small): start it "
                                     "with python, not torchrun")
    start = resolve_start(cfg)
    tasks = cfg.tasks
    if cfg.test_file and (len(tasks) > 1):
        raise config_lib.ConfigError("--test_file is one task's file: give a single --task, or --test_dir")
    data = {task: load_task(cfg, task, start.tokenizer) for task in tasks}
    runs = []
    for task in tasks:
        for lr in cfg.lrs or (cfg.lr,):
            for seed in cfg.seeds or (cfg.seed,):
                path, done = run_dir(cfg, task, lr, seed) / "result.json", None
                if path.is_file():
                    done = json.loads(path.read_text())
                    settings = run_settings(cfg, start, data[task], lr, seed)
                    changed = [k for k in settings if done.get("settings", {}).get(k) != settings[k]]
                    if changed:
                        raise config_lib.ConfigError(
                            f"{path} was run with other settings ({', '.join(changed)}: "
                            f"{done['settings'].get(changed[0])!r} there, {settings[changed[0]]!r} now): use "
                            f"another --out_dir, or delete {path.parent} to run it again")
                runs.append((task, lr, seed, done))
    return start, data, runs


def sweep(cfg: GlueConfig) -> list[dict]:
    # The sweep folder has one writer too: finetune() removes unfinished run folders and the summary is
    # rewritten at the end, which a second sweep into the same --out_dir would do under the first one.
    with runlock.hold(cfg.out_dir):
        return _sweep(cfg)


def _sweep(cfg: GlueConfig) -> list[dict]:
    from tinyhelen.glue_report import write_summary
    from tinyhelen.metrics import measure_peak_flops
    start, data, runs = plan(cfg)
    for task, d in data.items():
        notes = f"train {len(d.train.labels)} ({d.train.source}), " + ", ".join(
            f"{k} {len(v.labels)} ({v.source})" for k, v in {**d.dev, **d.test}.items())
        print(f"{task}: {notes}" + (f"; {d.train.truncated} training examples cut to {cfg.seq_len} tokens"
                                    if d.train.truncated else ""), flush=True)
    print(f"model {start.name}: {type(start.model_config).__name__}, "
          f"{'random weights' if not start.init_from else 'weights of ' + start.init_from}; "
          f"tokenizer {start.tokenizer.name}; pair tasks joined by {SEPARATOR!r}; "
          f"{sum(d is None for *_, d in runs)} of {len(runs)} runs to do", flush=True)
    for task, lr, seed, done in runs:
        if done is not None:
            path = run_dir(cfg, task, lr, seed) / "result.json"
            print(f"{task} lr {lr:g} seed {seed}: done earlier ({path})")
    results = [done for *_, done in runs if done is not None]
    todo = [(t, lr, s) for t, lr, s, done in runs if done is None]
    if todo:
        machine = machine_lib.setup(cfg.device, cfg.dtype, cfg.threads, distributed=False)
        peak = cfg.peak_flops or measure_peak_flops(machine.device, machine.dtype)
        for task, lr, seed in todo:
            results.append(finetune(cfg, start, data[task], lr, seed, machine, peak))
    table = write_summary(results, Path(cfg.out_dir) / "summary")
    print(table, flush=True)
    return results


@config_lib.exits_2_on(CheckpointError, DataError, FileNotFoundError)
def main(cfg: GlueConfig) -> None:
    sweep(cfg)


if __name__ == "__main__":
    config_lib.run_cli(main, GlueConfig())
