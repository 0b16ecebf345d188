"""Instruction tuning, Leaner-Eval answers and an LLM judge: the paper's second experiment.

    python instruct.py make --out=out/instruct/generated.jsonl [--target=3000]
    python instruct.py convert --sources=math,code,generated:out/instruct/generated.jsonl --out=out/instruct/train.jsonl
    python instruct.py train [configs/...] --init_from=out/leaner_llama --data=out/instruct/train.jsonl \\
                             --out_dir=out/instruct_leaner
    python instruct.py generate --init_from=out/instruct_leaner --questions=PATH/leaner/eval/all.jsonl \\
                                --out=out/answers/leaner.jsonl
    python instruct.py judge --answers=out/answers/leaner.jsonl,out/answers/ori.jsonl --out=out/judge.jsonl
    python instruct.py report --answers=... --judgements=out/judge.jsonl --out_dir=out/instruct_report
    python instruct.py score --rows=out/answers/leaner.jsonl --out=out/scores/leaner.jsonl [--model=smollm2-135m]
    python instruct.py validate --out_dir=out/answer_validity [--pairs=20] [--judge=true]

make writes open-answer instruction rows about leaner train documents with a local LLM
(tinyhelen/instruct_make.py: template questions, the LLM's short grounded answers, every row checked).
train runs the shared Trainer (trainer.py) on instruction rows formatted as the release does,
`### TASK INPUT:\\n{instruction}[\\n{input}]\\n\\n### RESPONSE:\\n{output}` then end-of-text, the loss
on the response only (--loss_on=response, the default) or on every token (--loss_on=all, as the
reference did); config, checkpoints, --resume and metrics are train.py's. tinyhelen/instruct_data.py has the
converters, the held-out check and the batches; tinyhelen/judge.py the judging, tinyhelen/judge_report.py
its agreement, the model-free measures and the report. score and validate are the measures that
score each answer alone with an imported LLM (tinyhelen/answer_scores.py) and their validity on
contrasts whose right order is known (tinyhelen/answer_validity.py).

generate answers any file of {"question": ...} rows (Leaner-Eval's all.jsonl or its split files) in
batches of prompts of different lengths, left-padded (model_common.generate), greedy by default.
Each answer is appended to --out as soon as its batch is done, keyed by the question's hash (the
file's, or the sha256 of the question), so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from tinyhelen import config as config_lib
from tinyhelen import machine as machine_lib
from tinyhelen import runlock
from tinyhelen.atomic import append_line, atomic_jsonl, read_lines
from tinyhelen.checkpoint import CheckpointError
from tinyhelen.config import ConfigError, setting
from tinyhelen.runs import load_run
from data.corpus import DataError, get_field, iter_json_lines, task_prompt
from data.tasks import read_instructions
from tinyhelen.instruct_data import InstructionBatches, all_batches, check_no_leak, convert, encode, forbidden_texts
from model_common import pad_left
from trainer import Trainer, TrainConfig

DEFAULT_ROOT = "/work/shared/data/tinyhelen"


# ------------------------------------------------------------------------------------------- convert

@dataclass
class ConvertConfig:
    data_root: str = DEFAULT_ROOT   # the TinyHelen folder
    sources: str = "math,code,glue"  # comma-separated: math, code, glue, simplified:PATH, generated:PATH
    out: str = "out/instruct/train.jsonl"
    glue_per_task: int = setting(0, min=0)  # a seeded sample of N train rows per Glue task (0: all)


def run_convert(cfg: ConvertConfig) -> list[dict]:
    rows, dropped = convert(cfg.data_root, [s for s in cfg.sources.split(",") if s], cfg.glue_per_task)
    with atomic_jsonl(cfg.out) as f:
        for row in rows:
            f.write(row)
    counts = {}
    for r in rows:
        counts[r["source"].split(":")[0]] = counts.get(r["source"].split(":")[0], 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    print(f"wrote {len(rows)} instruction rows to {cfg.out} ({summary}); "
          f"{dropped} dropped for sharing a hash or text with Leaner-Eval or a test split")
    return rows


# ------------------------------------------------------------------------------------------- train

@dataclass
class InstructConfig(TrainConfig):
    # Keys of the training config this stage does not read: setting one is an error that says what to
    # set instead (tinyhelen/config.py), not a value silently ignored.
    unread_keys = {
        "data_dir": "use --data, the instruction JSONL file (rows of instruction, input, output)",
        "model": "the architecture comes with the --init_from run's weights (with --resume, from the "
                 "checkpoint); train another architecture with train.py first",
        "eval_steps": "the dev loss covers every held-out row; set how many with --dev_fraction",
        "sample_prompt": "instruct.py train writes no text sample; `instruct.py generate` answers questions",
        "sample_tokens": "instruct.py train writes no text sample; `instruct.py generate` answers questions",
        "bpb_genres": "instruct.py train reports the dev loss; evaluate.py measures bits per byte",
    }
    data: str = ""                   # instruction JSONL (instruction, input, output)
    data_root: str = DEFAULT_ROOT    # for the held-out check; "" skips it (say so in results)
    loss_on: str = setting("response", choices=("response", "all"))
    dev_fraction: float = setting(0.02, above=0, max=0.5)  # held out for the dev loss
    out_dir: str = "out/instruct"
    # Each batch has its own length: compiled code would recompile for most of them.
    compile: bool = False
    lr: float = setting(3e-4, above=0)
    min_lr: float = setting(3e-5, min=0)
    warmup_steps: int = setting(20, min=0)
    max_steps: int = setting(500, min=1)
    eval_every: int = setting(100, min=1)
    ckpt_every: int = setting(100, min=1)
    sample_tokens: int = setting(0, min=0)


class DevLoss:
    """Mean response loss (as trained: the same loss_on) over the held-out instruction rows."""

    def __init__(self, enc, batch_size: int, loss_on: str, pad_id: int):
        self.enc, self.batch_size, self.loss_on, self.pad_id = enc, batch_size, loss_on, pad_id

    def __call__(self, trainer: Trainer) -> dict:
        total, count = 0.0, 0
        for x, y in all_batches(self.enc, self.batch_size, self.loss_on, self.pad_id):
            x, y = trainer.to_device((x, y))
            with trainer.autocast():
                logits = trainer.model(x)[0].float()
            scored = y != -1
            total += torch.nn.functional.cross_entropy(logits[scored], y[scored], reduction="sum").item()
            count += int(scored.sum())
        return {"val_loss": total / max(count, 1)}


def instruction_tune(cfg: InstructConfig) -> Trainer:
    with runlock.hold(cfg.out_dir):  # before the instruction data is read and tokenized
        return _instruction_tune(cfg)


def _instruction_tune(cfg: InstructConfig) -> Trainer:
    if not cfg.init_from and not cfg.resume:
        raise ConfigError("--init_from=RUN is required: instruction tuning starts from a pre-trained run")
    if not cfg.data:
        raise ConfigError("--data=FILE.jsonl is required (rows of instruction, input, output; "
                          "`python instruct.py convert` builds one)")
    rows = read_instructions(cfg.data)
    if cfg.data_root:
        check_no_leak(rows, forbidden_texts(cfg.data_root))
    source_path = cfg.init_from or cfg.out_dir
    # the tokenizer and the data meta (a resumed run's own holds its source's, so it carries on); the
    # Trainer loads the weights itself, from init_from or the checkpoint it resumes
    _, tokenizer, meta = load_run(source_path)
    from data.tasks import holdout
    train_rows, dev_rows = holdout(rows, cfg.dev_fraction, cfg.seed) if len(rows) > 1 else (rows, rows)
    train_enc, dropped = encode(train_rows, tokenizer, cfg.seq_len)
    dev_enc, _ = encode(dev_rows, tokenizer, cfg.seq_len)
    if cfg.resume:
        # the Trainer builds cfg.model before reading the checkpoint, and an init_from run's
        # architecture came with its weights, not with --model: take it from the checkpoint
        from tinyhelen.checkpoint import load_checkpoint, model_config_from_dict
        saved = load_checkpoint(Path(cfg.out_dir) / "ckpt.pt")["config"]["model"]
        cfg = dataclasses.replace(cfg, model=model_config_from_dict(saved))
    source = InstructionBatches(train_enc, cfg.batch_size, cfg.loss_on, tokenizer.eot_id, cfg.seed)
    trainer = Trainer(cfg, source, evaluate=DevLoss(dev_enc, cfg.batch_size, cfg.loss_on, tokenizer.eot_id),
                      data_meta={**meta, "instruct_data": str(cfg.data), "loss_on": cfg.loss_on})
    trainer.log(f"{len(train_enc.tokens)} training / {len(dev_enc.tokens)} dev examples from {cfg.data} "
                f"(loss on {cfg.loss_on} tokens)"
                + (f"; {dropped} dropped: prompt longer than seq_len" if dropped else ""))
    if trainer.is_main and cfg.init_from:
        # the run folder carries its tokenizer as train.py's do, also when it started from an export
        # (whose tokenizer.json is transformers' format, not ours)
        trainer.out_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save(trainer.out_dir / "tokenizer.json")
    try:
        trainer.run()
    finally:
        trainer.close()
    return trainer


# ------------------------------------------------------------------------------------------- generate

@dataclass
class GenerateConfig:
    init_from: str = ""              # an instruction-tuned run folder or ckpt.pt (or any run)
    questions: str = ""              # JSONL of {"question": ..., "hash" (optional)}
    out: str = "out/answers.jsonl"
    name: str = ""                   # the model's name in the judge and the report; default: run folder
    batch_size: int = setting(16, min=1)
    max_new_tokens: int = setting(256, min=1)
    temperature: float = setting(0.0, min=0)  # 0: greedy, as the reference
    top_k: int = setting(0, min=0)            # 0: off
    top_p: float = setting(1.0, above=0, max=1)
    seed: int = 1337
    limit: int = setting(0, min=0)   # answer only the first N questions (0: all)
    device: str = setting("auto", check=machine_lib.check_device)
    threads: int = setting(0, min=0)


def question_hash(question: str) -> str:
    return hashlib.sha256(question.encode()).hexdigest()


def read_questions(path: str | Path) -> list[dict]:
    """[{"question", "hash"}] of a file of {"question": ...} rows; a missing hash is the question's sha256."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"question file not found: {path} (expected JSON lines of {{\"question\": ...}}, "
                        f"e.g. Leaner-Eval's leaner/eval/all.jsonl)")
    out, seen = [], {}
    for line, row in iter_json_lines(path):
        where = f"{path}:{line}"
        q = get_field(row, "question", where, "question row")
        h = get_field(row, "hash", where, "question row", required=False) or question_hash(q)
        if h in seen:
            raise DataError(f"{where}: question hash {h[:16]}... already used at line {seen[h]}")
        seen[h] = line
        out.append({"question": q, "hash": h})
    if not out:
        raise DataError(f"{path} holds no questions")
    return out


def _settings(cfg: GenerateConfig) -> dict:
    return {k: getattr(cfg, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed")}


def generate_answers(cfg: GenerateConfig) -> list[dict]:
    if not cfg.init_from or not cfg.questions:
        raise ConfigError("--init_from=RUN and --questions=FILE.jsonl are both required")
    questions = read_questions(cfg.questions)[:cfg.limit or None]
    name = cfg.name or Path(cfg.init_from).resolve().name
    settings = _settings(cfg)
    done = {}
    for i, line in enumerate(read_lines(cfg.out)):
        row = json.loads(line)
        if row.get("model") != name or row.get("settings") != settings:
            raise ConfigError(f"{cfg.out}:{i + 1} holds answers of model {row.get('model')!r} with settings "
                              f"{row.get('settings')}, not {name!r} with {settings}: use another --out")
        done[row["hash"]] = row
    todo = [q for q in questions if q["hash"] not in done]
    if done:
        print(f"{cfg.out}: {len(done)} answers already there, {len(todo)} to go")
    if not todo:
        return [done[q["hash"]] for q in questions]
    device = machine_lib.setup(cfg.device, "fp32", cfg.threads, distributed=False).device
    model, tokenizer, _ = load_run(cfg.init_from, device)
    eot = tokenizer.eot_id
    prompts = [[eot] + tokenizer.encode(task_prompt(q["question"])) for q in todo]
    limit = getattr(model.config, "max_seq_len", None)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    # similar lengths together: less padding; the output order does not matter (keyed by hash)
    order = sorted(range(len(todo)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), cfg.batch_size):
        rows = order[start:start + cfg.batch_size]
        batch = [prompts[i] for i in rows]
        new = cfg.max_new_tokens
        if limit is not None:
            batch = [p[-(limit - 1):] for p in batch]  # a prompt past the context keeps its end
            new = min(new, limit - max(len(p) for p in batch))
        idx, left_pad = pad_left(batch, eot, device)
        out = model.generate(idx, new, temperature=cfg.temperature, top_k=cfg.top_k or None,
                             top_p=cfg.top_p if cfg.top_p < 1 else None, eot_id=eot, generator=generator,
                             left_pad=left_pad)
        for i, tokens in zip(rows, out[:, idx.shape[1]:].tolist()):
            finished = eot in tokens
            tokens = tokens[:tokens.index(eot)] if finished else tokens
            row = {"hash": todo[i]["hash"], "question": todo[i]["question"],
                   "answer": tokenizer.decode(tokens), "tokens": len(tokens), "finished": finished,
                   "model": name, "settings": settings}
            append_line(cfg.out, json.dumps(row, ensure_ascii=False))
            done[row["hash"]] = row
        print(f"answered {min(start + cfg.batch_size, len(order))}/{len(order)}", flush=True)
    return [done[q["hash"]] for q in questions]


# ------------------------------------------------------------------------------------------- CLI

COMMANDS = {"convert": (run_convert, ConvertConfig), "train": (instruction_tune, InstructConfig),
            "generate": (generate_answers, GenerateConfig)}


def _commands():
    from tinyhelen import answer_scores, answer_validity, instruct_make, judge, judge_report
    return {**COMMANDS, "make": (instruct_make.run_make, instruct_make.MakeConfig),
            "judge": (judge.run_judge, judge.JudgeConfig),
            "report": (judge_report.run_report, judge_report.ReportConfig),
            "score": (answer_scores.run_score, answer_scores.ScoreConfig),
            "validate": (answer_validity.run_validate, answer_validity.ValidateConfig)}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if not argv or argv[0] not in commands:
        print(f"usage: python instruct.py {{{'|'.join(commands)}}} [configs/...] [--key=value ...]\n"
              f"(python instruct.py COMMAND --help lists a command's settings)", file=sys.stderr)
        raise SystemExit(2)
    run, defaults = commands[argv[0]]

    def guarded(cfg):
        try:
            run(cfg)
        except (ConfigError, DataError, CheckpointError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    config_lib.run_cli(guarded, defaults(), argv[1:])


if __name__ == "__main__":
    main()
