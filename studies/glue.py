"""The Leaner-Glue study at CPU scale, one resumable command per step: leaner vs original vs scratch.

    python studies/glue.py --step=prepare     # leaner and original corpora, one tokenizer (trained on leaner)
    python studies/glue.py --step=pretrain    # Llama and Mamba (configs/study_*.py) on each corpus: 4 runs
    python studies/glue.py --step=finetune    # Leaner-Glue for the 4 runs and a from-scratch model of each
    python studies/glue.py --step=report      # OUT_DIR/glue/summary.md, .png and summary_gaps.md (the claims)
    python studies/glue.py                    # all four, in order
    python studies/glue.py --tiny --out_dir=/tmp/study   # every step on tiny settings: checks the commands

Options for fitting the study to a machine: --pretrain_flags and --finetune_flags are added to every
train.py / finetune_glue.py command (e.g. --pretrain_flags=--dtype=fp32,--threads=1 on a CPU where
bf16 is emulated or slower, --finetune_flags=--lrs=1e-3,--epochs=2); --models=NAME,... fine-tunes
only those models, in that order, so a second process can fine-tune each pre-trained run as soon as
it is finished while the first is still pre-training the next one (a run that has not finished is
refused, not fine-tuned). docs/results.md gives the exact commands of the measured study.

Each step runs the project's own commands (printed before they run), so a step is what a user would
type. Each is resumable: prepared data is kept, a pre-training run that was stopped continues with
--resume and a finished one is skipped, and a fine-tuning sweep skips its finished runs. The wall
time of every command is appended to OUT_DIR/times.jsonl.

Genres: the paper's web, book, wiki, textbook and conversation, less web, which has no train file in
the local copy of either corpus (it is over 4 MiB); so book, wiki, textbook, conversation.
Fine-tuning: configs/glue_cpu.py on cola, mrpc, rte, stsb and wnli (the tasks with a train file here).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python studies/NAME.py`: import from the repo root, not studies/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from studies import common
from tinyhelen import config as config_lib
from tinyhelen.atomic import atomic_write_text
from tinyhelen.config import setting

ARCHS = ("llama", "mamba")
CORPORA = ("leaner", "ori")
# The paper's claims, as gaps A - B that the report step tabulates with their spread (summary_gaps.md).
CLAIMS = [("leaner_llama", "leaner_mamba"), ("ori_llama", "ori_mamba"),            # Llama above Mamba
          ("leaner_llama", "ori_llama"), ("leaner_mamba", "ori_mamba"),            # leaner above original
          ("ori_llama", "scratch_llama"), ("ori_mamba", "scratch_mamba"),          # original above scratch
          ("leaner_llama", "scratch_llama"), ("leaner_mamba", "scratch_mamba")]
TINY_MODEL = {
    "llama": ["--model.n_layer=1", "--model.n_embd=64", "--model.n_head=4", "--model.n_kv_head=2",
              "--model.ffn_hidden=176"],
    "mamba": ["--model.n_layer=1", "--model.n_embd=64", "--model.d_state=16", "--model.headdim=16",
              "--model.chunk_size=16", "--model.mlp_hidden=128", "--compile=False"],  # checks commands, not speed
}
TINY_PRETRAIN = ["--max_steps=8", "--eval_every=8", "--eval_steps=1", "--ckpt_every=8", "--batch_size=4",
                 "--seq_len=64", "--sample_tokens=0", "--warmup_steps=2", "--log_every=4"]
TINY_FINETUNE = ["--epochs=1", "--max_train=64", "--batch_size=16", "--lrs=1e-3", "--seeds=1", "--seq_len=64"]


@dataclass
class StudyConfig:
    step: str = setting("all", choices=("all", "prepare", "pretrain", "finetune", "report"))
    out_dir: str = "out/study"
    data_root: str = "../shared/data/tinyhelen"
    genres: str = "book,wiki,textbook,conversation"
    tasks: str = "cola,mrpc,rte,stsb,wnli"
    glue_config: str = "configs/glue_cpu.py"
    models: tuple[str, ...] = ()  # finetune only these, in this order (default all 6)
    pretrain_flags: tuple[str, ...] = ()  # added to train.py, e.g. --dtype=fp32
    finetune_flags: tuple[str, ...] = ()  # added to finetune_glue.py, e.g. --lrs=1e-3
    tiny: bool = False       # tiny models, steps and data: for checking that every command works
    dry_run: bool = False    # print the commands without running them


def runner(cfg: StudyConfig) -> common.Runner:
    return common.Runner(cfg.out_dir, cfg.dry_run)


def prepare(cfg: StudyConfig) -> None:
    data = Path(cfg.out_dir) / "data"
    genres = "wiki,conversation" if cfg.tiny else cfg.genres
    shared = [f"--data_root={cfg.data_root}", f"--genres={genres}"]
    for corpus in CORPORA:
        if (data / corpus / "meta.json").is_file():
            print(f"{data / corpus}: prepared earlier", flush=True)
            continue
        tokenizer = "train" if corpus == "leaner" else str(data / "leaner" / "tokenizer.json")
        runner(cfg).command("prepare", ["data/prepare.py", f"--corpus={corpus}", *shared,
                                        f"--tokenizer={tokenizer}", f"--out_dir={data / corpus}"])


def pretrain(cfg: StudyConfig) -> None:
    for arch in ARCHS:
        for corpus in CORPORA:
            out = Path(cfg.out_dir) / f"{corpus}_{arch}"
            state = common.run_state(out)
            if state == common.FINISHED:
                print(f"{out}: trained earlier", flush=True)
                continue
            tiny = [*TINY_MODEL[arch], *TINY_PRETRAIN] if cfg.tiny else []
            data = Path(cfg.out_dir) / "data" / corpus
            resume = ["--resume"] if state == common.STOPPED else []
            runner(cfg).command("pretrain", ["train.py", f"configs/study_{arch}.py", f"--data_dir={data}",
                                             f"--out_dir={out}", *tiny, *resume,
                                             *common.flag_list(cfg.pretrain_flags)])


def sweeps(cfg: StudyConfig) -> list[tuple[str, str]]:
    """(init_from, name) of every fine-tuned model: the four runs, then a from-scratch model of each
    architecture (the leaner run's architecture and the shared tokenizer, random weights)."""
    out = Path(cfg.out_dir)
    models = [(str(out / f"{corpus}_{arch}"), f"{corpus}_{arch}") for arch in ARCHS for corpus in CORPORA]
    return models + [(f"scratch:{out / f'leaner_{arch}'}", f"scratch_{arch}") for arch in ARCHS]


def finetune(cfg: StudyConfig) -> None:
    models = dict((name, init_from) for init_from, name in sweeps(cfg))
    unknown = [name for name in cfg.models if name not in models]
    if unknown:
        raise SystemExit(f"error: --models: unknown {', '.join(unknown)}; valid: {', '.join(models)}")
    for name in cfg.models or list(models):
        init_from = models[name]
        if not init_from.startswith("scratch:"):
            common.require_finished(Path(init_from), "python studies/glue.py --step=pretrain", cfg.dry_run)
        runner(cfg).command("finetune", ["finetune_glue.py", cfg.glue_config, f"--task={cfg.tasks}",
                                         f"--init_from={init_from}", f"--name={name}",
                                         f"--out_dir={Path(cfg.out_dir) / 'glue' / name}",
                                         *(TINY_FINETUNE if cfg.tiny else []),
                                         *common.flag_list(cfg.finetune_flags)])


def pretrain_report(cfg: StudyConfig) -> None:
    """OUT_DIR/pretrain.md and .png: the four pre-training runs' validation loss in nats per token and
    in bits per byte (comparable across the two corpora, whose bytes per token differ), against step."""
    from data.tokens import read_meta, tokens_per_byte
    from tinyhelen.metrics import read_metrics
    out = Path(cfg.out_dir)
    rows, curves = [], []
    for arch in ARCHS:
        for corpus in CORPORA:
            name = f"{corpus}_{arch}"
            if common.run_state(out / name) != common.FINISHED:
                continue
            metrics = read_metrics(out / name / "metrics.jsonl")
            bits = math.log2(math.e) * tokens_per_byte(read_meta(out / "data" / corpus), "validation")
            evals = [(r["step"], r["val_loss"]) for r in metrics if "val_loss" in r]
            speeds = [r["tokens_per_s"] for r in metrics if "tokens_per_s" in r][1:]  # the first is warm-up
            rows.append([name, f"{metrics[-1]['step']:,}", f"{metrics[-1].get('tokens', 0):,}",
                         f"{evals[-1][1]:.3f}", f"{evals[-1][1] * bits:.3f}",
                         f"{sum(speeds) / max(1, len(speeds)):,.0f}"])
            curves.append((name, corpus, [s for s, _ in evals], [v * bits for _, v in evals]))
    if not rows:
        return
    with common.figure(out / "pretrain.png", figsize=(6.4, 4.0), dpi=110) as (fig, ax):
        for name, corpus, steps, bpb in curves:
            ax.plot(steps, bpb, marker="o", label=name, linestyle="-" if corpus == "leaner" else "--")
        ax.set_xlabel("step")
        ax.set_ylabel("validation bits per byte")
        ax.set_title("Pre-training of the Leaner-Glue study (own corpus's validation split)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    text = common.markdown_table(["run", "steps", "training tokens", "final val loss (nats/token)",
                                  "final val bits/byte", "mean tokens/s"], rows)
    text += ("\n\nValidation loss of each run on its own corpus's validation split (leaner or original), "
             "so the nats per token compare only within a corpus; bits per byte compare across them.")
    atomic_write_text(out / "pretrain.md", text + "\n")
    print(text + f"\nwrote {out / 'pretrain.md'} and {out / 'pretrain.png'}", flush=True)


def glue_summary(cfg: StudyConfig) -> None:
    """OUT_DIR/glue/summary.md and .png (the fine-tuning table and chart over every sweep) and
    summary_gaps.md (each of the paper's CLAIMS as a gap with its spread)."""
    from tinyhelen.glue_report import gaps, read_results, write_summary
    glue = Path(cfg.out_dir) / "glue"
    results = [r for _, name in sweeps(cfg) for r in read_results(glue / name)]
    if not results:
        raise FileNotFoundError(f"no finished fine-tuning runs (TASK/RUN/result.json) under {glue}: "
                                f"run python studies/glue.py --step=finetune first")
    try:
        gap_table = gaps(results, CLAIMS)
    except ValueError as e:  # a model of a claim has no results
        raise config_lib.ConfigError(str(e)) from None
    print(write_summary(results, glue / "summary"))
    atomic_write_text(glue / "summary_gaps.md", gap_table)
    print(gap_table)
    print(f"wrote {glue / 'summary.md'}, {glue / 'summary.png'} and {glue / 'summary_gaps.md'}", flush=True)


def report(cfg: StudyConfig) -> None:
    if not cfg.dry_run:
        pretrain_report(cfg)
    runner(cfg).call(
        "report", f"the Leaner-Glue table, chart and claims in {Path(cfg.out_dir) / 'glue'}", glue_summary, cfg)


@config_lib.exits_2_on(FileNotFoundError)
def main(cfg: StudyConfig) -> None:
    steps = {"prepare": prepare, "pretrain": pretrain, "finetune": finetune, "report": report}
    for name, step in steps.items():
        if cfg.step in ("all", name):
            step(cfg)


if __name__ == "__main__":
    config_lib.run_cli(main, StudyConfig())
