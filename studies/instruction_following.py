"""The instruction-following experiment at CPU scale, one resumable command: does leaner
pre-training make a tiny instruction-tuned Llama answer Leaner-Eval better than original pre-training?

    python studies/instruction_following.py                      # every step below, in order
    python studies/instruction_following.py --step=pretrain      # or one step: prepare, pretrain, convert,
                                                  # tune, generate, validate, score, report, judge

  prepare   the leaner and original corpora (book, wiki, textbook, conversation) with one tokenizer,
            trained on the leaner text (studies/glue.py's prepare)
  pretrain  configs/instruct_pretrain.py on each corpus, once per seed (--seeds): Llamas of one
            shape, tokenizer and token budget
  convert   the instruction set (instruct.py convert --sources): by default the open-answer rows
            made by instruct.py make from leaner train documents (GENERATED, committed with the
            command that made it), every Leaner-Eval question and test split kept out and checked.
            Math hints and code are left out by default: tuned on them (the earlier default), both
            models answered every question in broken math hints. Leaner-Glue rows are left out
            because their answers are a few fixed sentences: tuned with them, the leaner model gave
            "Yes, this sentence is good English." to 1,518 of the 1,594 questions.
  tune      instruct.py train on it from each pre-trained Llama, same data, steps and seed
  generate  greedy answers of every tuned model to every Leaner-Eval question (all.jsonl)
  validate  instruct.py validate: each answer measure's accuracy on contrasts whose right order is
            known (validation splits and the generated set), so the report can say which to trust
  score     instruct.py score on every model's answers (fluency, relevance, expected grades under
            SmolLM2-135M-Instruct run by the engine)
  report    per arm and per Leaner-Eval split file: each measure's mean with its 95% interval over
            questions and its spread over pre-training seeds, the paired leaner - original
            difference, the model-free measures, a figure and quoted answers; a measure the validate
            step did not trust is marked so (studies/instruction_report.py)
  judge     (only with --judge=true, or by name) the generative judge and its report, as before:
            docs/results.md shows it scores by label position, so it is off by default

Each step runs the project's own commands, printed before they run, and skips what is done: a
finished run, a written file, an answered question. The wall time of every command is appended to
OUT_DIR/times.jsonl.
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
STEPS = ("prepare", "pretrain", "convert", "tune", "generate", "validate", "score", "report", "judge")
GENERATED = "studies/data/leaner_open_answers.jsonl.zst"


@dataclass
class StudyConfig:
    step: str = setting("all", choices=("all",) + STEPS)
    out_dir: str = "out/instruct_study"
    data_root: str = "../shared/data/tinyhelen"
    genres: str = "book,wiki,textbook,conversation"
    seeds: tuple[int, ...] = setting((1, 2), check=common.at_least_one)  # pre-training seeds per arm
    pretrain_config: str = "configs/instruct_pretrain.py"
    pretrain_flags: tuple[str, ...] = ()  # added to every train.py command
    sources: str = f"generated:{GENERATED}"  # instruct.py convert's sources (math, code, glue, simplified:, generated:)
    glue_per_task: int = setting(0, min=0)  # with glue in sources: rows per task (0: all)
    tune_flags: tuple[str, ...] = ("--max_steps=400", "--batch_size=16", "--lr=1e-3", "--min_lr=1e-4",
                                   "--eval_every=50", "--threads=1")
    max_new_tokens: int = setting(96, min=1)
    scorer: str = "smollm2-135m"       # the model the measures score under
    # the measures' precision, in validate and score alike: bf16 (autocast) is about 1.8x faster on a
    # CPU with native bf16, which turns the scoring of 4 x 1,594 answers from about two hours into one;
    # auto takes bf16 only where it is native (emulated bf16 is slower than fp32)
    score_dtype: str = setting("auto", choices=("auto", "fp32", "bf16"))
    score_flags: tuple[str, ...] = ()  # added to every instruct.py score command
    validity_pairs: int = setting(40, min=2)  # pairs per contrast in the validate step
    judge: bool = False                # run the generative judge too (in "all")
    judge_limit: int = setting(300, min=0)   # questions judged, a seeded sample (0: all 1,594)
    judge_flags: tuple[str, ...] = ()  # e.g. --base_url=...,--model=... for a stronger judge
    dry_run: bool = False              # print the commands without running them


def runner(cfg: StudyConfig) -> common.Runner:
    return common.Runner(cfg.out_dir, cfg.dry_run)


def arms(cfg: StudyConfig) -> list[tuple[str, int]]:
    return [(corpus, seed) for corpus in CORPORA for seed in cfg.seeds]


def paths(cfg: StudyConfig, corpus: str = "", seed: int = 0) -> dict:
    """The study's files; with a corpus and seed, that model's run folders and answer and score files."""
    out = Path(cfg.out_dir)
    p = {"train": out / "instructions.jsonl", "questions": Path(cfg.data_root) / "leaner/eval/all.jsonl",
         "validity": out / "validity", "report": out / "report", "judgements": out / "judgements.jsonl"}
    if corpus:
        name = f"{corpus}_s{seed}"
        p.update(llama=out / f"{name}_llama", instruct=out / f"{name}_instruct",
                 answers=out / "answers" / f"{name}.jsonl", scores=out / "scores" / f"{name}.jsonl", name=name)
    return p


def _require(cfg: StudyConfig, run_dir: Path, step: str) -> None:
    common.require_finished(run_dir, f"python studies/instruction_following.py --step={step}", cfg.dry_run)


def prepare(cfg: StudyConfig) -> None:
    """studies/glue.py's prepare step, with this study's folder and genres."""
    glue_study.prepare(glue_study.StudyConfig(out_dir=cfg.out_dir, data_root=cfg.data_root, genres=cfg.genres,
                                              dry_run=cfg.dry_run))


def pretrain(cfg: StudyConfig) -> None:
    for corpus, seed in arms(cfg):
        out = paths(cfg, corpus, seed)["llama"]
        state = common.run_state(out)
        if state == common.FINISHED:
            print(f"{out}: trained earlier", flush=True)
            continue
        runner(cfg).command("pretrain", [
            "train.py", cfg.pretrain_config, f"--data_dir={Path(cfg.out_dir) / 'data' / corpus}",
            f"--out_dir={out}", f"--seed={seed}", *(["--resume"] if state == common.STOPPED else []),
            *common.flag_list(cfg.pretrain_flags)])


def convert(cfg: StudyConfig) -> None:
    path = paths(cfg)["train"]
    if path.is_file():
        print(f"{path}: converted earlier", flush=True)
        return
    runner(cfg).command("convert", ["instruct.py", "convert", f"--data_root={cfg.data_root}",
                                    f"--sources={cfg.sources}", f"--glue_per_task={cfg.glue_per_task}",
                                    f"--out={path}"])


def tune(cfg: StudyConfig) -> None:
    for corpus, seed in arms(cfg):
        p = paths(cfg, corpus, seed)
        _require(cfg, p["llama"], "pretrain")
        state = common.run_state(p["instruct"])
        if state == common.FINISHED:
            print(f"{p['instruct']}: tuned earlier", flush=True)
            continue
        start = ["--resume"] if state == common.STOPPED else [f"--init_from={p['llama']}"]
        runner(cfg).command("tune", [
            "instruct.py", "train", f"--data={p['train']}", f"--data_root={cfg.data_root}",
            f"--out_dir={p['instruct']}", *start, *common.flag_list(cfg.tune_flags)])


def generate(cfg: StudyConfig) -> None:
    for corpus, seed in arms(cfg):
        p = paths(cfg, corpus, seed)
        _require(cfg, p["instruct"], "tune")
        # instruct.py generate skips the questions already answered in --out
        runner(cfg).command("generate", [
            "instruct.py", "generate", f"--init_from={p['instruct']}", f"--questions={p['questions']}",
            f"--out={p['answers']}", f"--name={p['name']}", f"--max_new_tokens={cfg.max_new_tokens}"])


def validate(cfg: StudyConfig) -> None:
    out = paths(cfg)["validity"]
    if (out / "validity.json").is_file():
        print(f"{out}: validated earlier", flush=True)
        return
    generated = [s.partition(":")[2] for s in cfg.sources.split(",") if s.startswith("generated:")]
    runner(cfg).command("validate", [
        "instruct.py", "validate", f"--data_root={cfg.data_root}", f"--out_dir={out}",
        f"--pairs={cfg.validity_pairs}", f"--model={cfg.scorer}", f"--dtype={cfg.score_dtype}",
        *([f"--generated={generated[0]}"] if generated else [])])


def score(cfg: StudyConfig) -> None:
    for corpus, seed in arms(cfg):
        p = paths(cfg, corpus, seed)
        if p["scores"].is_file():
            print(f"{p['scores']}: scored earlier", flush=True)
            continue
        if not cfg.dry_run and not p["answers"].is_file():
            raise SystemExit(f"{p['answers']} is missing: run python studies/instruction_following.py "
                             f"--step=generate first")
        runner(cfg).command("score", ["instruct.py", "score", f"--rows={p['answers']}", f"--out={p['scores']}",
                                      f"--model={cfg.scorer}", f"--dtype={cfg.score_dtype}",
                                      *common.flag_list(cfg.score_flags)])


def report(cfg: StudyConfig) -> None:
    from studies.instruction_report import write_report
    files = {(corpus, seed): (paths(cfg, corpus, seed)["answers"], paths(cfg, corpus, seed)["scores"])
             for corpus, seed in arms(cfg)}
    if cfg.dry_run:
        print(f"=== report of {len(files)} models into {paths(cfg)['report']}", flush=True)
        return
    missing = [str(s) for _, s in files.values() if not s.is_file()]
    if missing:
        raise SystemExit(f"{missing[0]} is missing: run python studies/instruction_following.py --step=score first")
    runner(cfg).call("report", f"report into {paths(cfg)['report']}", write_report, files,
                     paths(cfg)["validity"] / "validity.json", cfg.data_root, paths(cfg)["report"])


def judge(cfg: StudyConfig) -> None:
    """The generative judge on every model's answers, and its report (scores by label, agreement)."""
    answers = ",".join(str(paths(cfg, c, s)["answers"]) for c, s in arms(cfg))
    runner(cfg).command("judge", [
        "instruct.py", "judge", f"--answers={answers}", f"--out={paths(cfg)['judgements']}",
        f"--limit={cfg.judge_limit}", *common.flag_list(cfg.judge_flags)])
    runner(cfg).command("judge", [
        "instruct.py", "report", f"--answers={answers}", f"--judgements={paths(cfg)['judgements']}",
        f"--eval_root={cfg.data_root}", f"--out_dir={Path(cfg.out_dir) / 'judge_report'}"])


def main(cfg: StudyConfig) -> None:
    for name in STEPS:
        if cfg.step == name or cfg.step == "all" and (name != "judge" or cfg.judge):
            globals()[name](cfg)


if __name__ == "__main__":
    config_lib.run_cli(main, StudyConfig())
