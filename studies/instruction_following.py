"""The instruction-following experiment at CPU scale, one resumable command: does leaner
pre-training make a tiny instruction-tuned Llama answer Leaner-Eval better than original pre-training?

    python studies/instruction_following.py                      # every step below, in order
    python studies/instruction_following.py --step=pretrain      # or one step: prepare, pretrain, convert, tune,
                                                  # generate, judge, report

  prepare   the leaner and original corpora (book, wiki, textbook, conversation) with one tokenizer,
            trained on the leaner text (studies/glue.py's prepare)
  pretrain  configs/instruct_pretrain.py on each corpus: two Llamas of one shape and token budget
  convert   the instruction set (instruct.py convert --sources: by default leaner math problems with
            their hints and code prompts with their responses, the sources with open answers; every
            Leaner-Eval question and test split kept out and checked). Leaner-Glue rows are left out
            by default because their answers are a few fixed sentences and a Leaner-Eval question
            reads like a Glue sentence: tuned with all 17,330 of them (88% of the set) the leaner
            model gave "Yes, this sentence is good English." to 1,518 of the 1,594 questions, and
            with 200 per task (30% of the set) to 1,365.
  tune      instruct.py train on it from each pre-trained Llama, same data, steps and seed
            (--tune_flags; loss on the response tokens only, the default)
  generate  greedy answers of both to every Leaner-Eval question (all.jsonl)
  judge     the local LLM judge (instruct.py judge, two passes with other shuffles) on a seeded
            sample of --judge_limit questions, which the report breaks down by Leaner-Eval split
  report    instruct.py report, twice (OUT_DIR/report_leaner_reference, report_ori_reference):
            scores with 95% intervals, the judge's self-agreement and position bias, and the
            model-free measures (length, distinct-n, repetition, words outside the core vocabulary,
            perplexity under each pre-trained run in turn)

Each step runs the project's own commands, printed before they run, and skips what is done: a
finished run, a written file, an answered question, a finished judgement. The wall time of every
command is appended to OUT_DIR/times.jsonl.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python studies/NAME.py`: import from the repo root, not studies/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from studies import common
from studies import glue as glue_study
from tinyhelen import config as config_lib
from tinyhelen.config import setting

CORPORA = ("leaner", "ori")
STEPS = ("prepare", "pretrain", "convert", "tune", "generate", "judge", "report")


@dataclass
class StudyConfig:
    step: str = setting("all", choices=("all",) + STEPS)
    out_dir: str = "out/instruct_study"
    data_root: str = "../shared/data/tinyhelen"
    genres: str = "book,wiki,textbook,conversation"
    pretrain_config: str = "configs/instruct_pretrain.py"
    pretrain_flags: tuple[str, ...] = ()  # added to both train.py commands
    sources: str = "math,code"       # instruct.py convert's sources (math, code, glue, simplified:PATH)
    glue_per_task: int = setting(0, min=0)  # with glue in sources: rows per task (0: all)
    tune_flags: tuple[str, ...] = ("--max_steps=400", "--batch_size=16", "--lr=1e-3", "--min_lr=1e-4",
                                   "--eval_every=50", "--threads=1")
    max_new_tokens: int = setting(128, min=1)
    judge_limit: int = setting(300, min=0)   # questions judged, a seeded sample (0: all 1,594)
    judge_flags: tuple[str, ...] = ()  # e.g. --base_url=...,--model=... for a stronger judge
    dry_run: bool = False            # print the commands without running them


def runner(cfg: StudyConfig) -> common.Runner:
    return common.Runner(cfg.out_dir, cfg.dry_run)


def _paths(cfg: StudyConfig) -> dict:
    out = Path(cfg.out_dir)
    return {"train": out / "instructions.jsonl", "questions": Path(cfg.data_root) / "leaner/eval/all.jsonl",
            "judgements": out / "judgements.jsonl",
            **{f"{c}_llama": out / f"{c}_llama" for c in CORPORA},
            **{f"{c}_instruct": out / f"{c}_instruct" for c in CORPORA},
            **{f"{c}_answers": out / "answers" / f"{c}_instruct.jsonl" for c in CORPORA}}


def _require(cfg: StudyConfig, run_dir: Path, step: str) -> None:
    common.require_finished(run_dir, f"python studies/instruction_following.py --step={step}", cfg.dry_run)


def prepare(cfg: StudyConfig) -> None:
    """studies/glue.py's prepare step, with this study's folder and genres."""
    glue_study.prepare(glue_study.StudyConfig(out_dir=cfg.out_dir, data_root=cfg.data_root, genres=cfg.genres,
                                              dry_run=cfg.dry_run))


def pretrain(cfg: StudyConfig) -> None:
    p = _paths(cfg)
    for corpus in CORPORA:
        out = p[f"{corpus}_llama"]
        state = common.run_state(out)
        if state == common.FINISHED:
            print(f"{out}: trained earlier", flush=True)
            continue
        runner(cfg).command("pretrain", [
            "train.py", cfg.pretrain_config, f"--data_dir={Path(cfg.out_dir) / 'data' / corpus}",
            f"--out_dir={out}", *(["--resume"] if state == common.STOPPED else []),
            *common.flag_list(cfg.pretrain_flags)])


def convert(cfg: StudyConfig) -> None:
    path = _paths(cfg)["train"]
    if path.is_file():
        print(f"{path}: converted earlier", flush=True)
        return
    runner(cfg).command("convert", ["instruct.py", "convert", f"--data_root={cfg.data_root}",
                                    f"--sources={cfg.sources}", f"--glue_per_task={cfg.glue_per_task}",
                                    f"--out={path}"])


def tune(cfg: StudyConfig) -> None:
    p = _paths(cfg)
    for corpus in CORPORA:
        _require(cfg, p[f"{corpus}_llama"], "pretrain")
        out = p[f"{corpus}_instruct"]
        state = common.run_state(out)
        if state == common.FINISHED:
            print(f"{out}: tuned earlier", flush=True)
            continue
        start = ["--resume"] if state == common.STOPPED else [f"--init_from={p[f'{corpus}_llama']}"]
        runner(cfg).command("tune", [
            "instruct.py", "train", f"--data={p['train']}", f"--data_root={cfg.data_root}",
            f"--out_dir={out}", *start, *common.flag_list(cfg.tune_flags)])


def generate(cfg: StudyConfig) -> None:
    p = _paths(cfg)
    for corpus in CORPORA:
        _require(cfg, p[f"{corpus}_instruct"], "tune")
        # instruct.py generate skips the questions already answered in --out
        runner(cfg).command("generate", [
            "instruct.py", "generate", f"--init_from={p[f'{corpus}_instruct']}", f"--questions={p['questions']}",
            f"--out={p[f'{corpus}_answers']}", f"--name={corpus}_instruct",
            f"--max_new_tokens={cfg.max_new_tokens}"])


def _answers(cfg: StudyConfig) -> str:
    p = _paths(cfg)
    return ",".join(str(p[f"{c}_answers"]) for c in CORPORA)


def judge(cfg: StudyConfig) -> None:
    # instruct.py judge never asks for a finished judgement twice
    runner(cfg).command("judge", [
        "instruct.py", "judge", f"--answers={_answers(cfg)}", f"--out={_paths(cfg)['judgements']}",
        f"--limit={cfg.judge_limit}", *common.flag_list(cfg.judge_flags)])


def report(cfg: StudyConfig) -> None:
    """Twice, once with each pre-trained run as the perplexity reference: a reference pre-trained on
    one corpus favours answers in that corpus's language, so neither alone is neutral."""
    p = _paths(cfg)
    for corpus in CORPORA:
        runner(cfg).command("report", [
            "instruct.py", "report", f"--answers={_answers(cfg)}", f"--judgements={p['judgements']}",
            f"--eval_root={cfg.data_root}", f"--reference={p[f'{corpus}_llama']}",
            f"--out_dir={Path(cfg.out_dir) / f'report_{corpus}_reference'}"])


def main(cfg: StudyConfig) -> None:
    for name in STEPS:
        if cfg.step in ("all", name):
            globals()[name](cfg)


if __name__ == "__main__":
    config_lib.run_cli(main, StudyConfig())
