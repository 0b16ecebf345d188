"""The curriculum experiment: every strategy, several seeds, the same step budget, then the table and plot.

    python studies/curriculum_strategies.py                                   # configs/curriculum_proxy.py, seeds 1-3
    python studies/curriculum_strategies.py --seeds=1,2,3,4,5 --out_dir=out/curriculum
    python studies/curriculum_strategies.py --report_only                     # the table and plot of what is done
    python studies/curriculum_strategies.py --steps=glue,report --glue_tasks=rte,cola --glue_seeds=1   # Leaner-Glue

Runs (each a curriculum.py run in OUT_DIR/NAME/seedS): random, sentence_length, self_loss,
self_loss_reverse, reference_loss, full_repeated, full_random, multi_round (any NAME_reverse of an
ordered strategy works too). reference_loss scores with the same seed's full_repeated run, which
therefore runs first. Seeds are the outer loop, so a stopped experiment has whole seeds done.

Resumable: a run with result.json is skipped, a run with a checkpoint but no result.json continues
from it (--resume), so restarting the same command after a kill loses at most one checkpoint interval.
Each run's result.json holds its settings, wall time and every evaluation row. At the end (and with
--report_only) OUT_DIR/summary.md gets the table: for each strategy, the steps and the unique training
tokens it needed to reach the full_repeated baseline's final validation loss (mean over its seeds),
mean and standard deviation over the seeds that reached it ("not reached" when none did); OUT_DIR/
curves.png the validation loss against steps and against unique tokens, the mean over seeds as a line
and the range over seeds as a band; OUT_DIR/summary.json the same numbers. The wall time of every
run and fine-tuning is appended to OUT_DIR/times.jsonl.

Leaner-Glue (--glue_tasks, the "glue" step): each finished run's final checkpoint is fine-tuned by
finetune_glue.py (--glue_config, plus --glue_flags) into OUT_DIR/glue/NAME/seedS, itself resumable.
OUT_DIR/glue_summary.md and .png hold one row per run with the mean and standard deviation over its
pre-training seeds (--glue_seeds, default every seed), which is the spread that says whether a
strategy changed the model. The steps run in the order given, so `--steps=glue,report` scores what
is already trained, for example beside a running experiment.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python studies/NAME.py`: import from the repo root, not studies/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from studies import common
from tinyhelen import config as config_lib
from tinyhelen.atomic import atomic_write_json, atomic_write_text
from tinyhelen.checkpoint import CheckpointError
from tinyhelen.config import setting
from data.corpus import DataError
from curriculum import ORDERED, CurriculumConfig, run_curriculum
from tinyhelen.metrics import read_metrics

RUNS = ("full_repeated", "full_random", "random", "sentence_length", "self_loss", "self_loss_reverse",
        "reference_loss", "multi_round")
BASELINE = "full_repeated"


def _check_runs(runs) -> str | None:
    for name in runs:
        strategy = name.removesuffix("_reverse")
        if name not in RUNS and not (name.endswith("_reverse") and strategy in ORDERED):
            return f"has unknown run {name!r}: use {', '.join(RUNS)} or ORDERED_reverse"
    return None if BASELINE in runs else f"must include {BASELINE} (the target every run is measured against)"


def _check_steps(steps) -> str | None:
    unknown = [s for s in steps if s not in ("runs", "glue", "report")]
    return f"has unknown step {unknown[0]!r}: use runs, glue, report" if unknown else None


@dataclass
class ExperimentConfig:
    run_config: str = "configs/curriculum_proxy.py"  # the settings every run shares
    out_dir: str = "out/curriculum"
    seeds: tuple[int, ...] = setting((1, 2, 3), check=common.at_least_one)
    runs: tuple[str, ...] = setting(RUNS, check=_check_runs)
    flags: tuple[str, ...] = ()  # extra --key=value for every run, comma separated
    report_only: bool = False   # the same as --steps=report
    steps: tuple[str, ...] = setting(("runs", "glue", "report"), check=_check_steps)
    glue_tasks: str = ""        # e.g. rte,cola: fine-tune every run's final checkpoint (empty: no glue step)
    glue_seeds: tuple[int, ...] = ()   # the pre-training seeds whose checkpoints are fine-tuned; () = all
    glue_config: str = "configs/glue_cpu.py"
    glue_flags: tuple[str, ...] = ()  # e.g. --lrs=1e-3,--seeds=1


def run_flags(name: str, seed: int, cfg: ExperimentConfig) -> list[str]:
    strategy = name.removesuffix("_reverse")
    flags = [cfg.run_config, *common.flag_list(cfg.flags), f"--strategy={strategy}", f"--seed={seed}",
             f"--out_dir={Path(cfg.out_dir) / name / f'seed{seed}'}"]
    if name.endswith("_reverse"):
        flags.append("--reverse")
    if strategy == "reference_loss":
        flags.append(f"--reference={Path(cfg.out_dir) / BASELINE / f'seed{seed}'}")
    return flags


def run_one(name: str, seed: int, cfg: ExperimentConfig) -> dict:
    out = Path(cfg.out_dir) / name / f"seed{seed}"
    done = out / "result.json"
    state = common.run_state(out, result="result.json")
    if state == common.FINISHED:
        return json.loads(done.read_text())
    flags = run_flags(name, seed, cfg) + (["--resume"] if state == common.STOPPED else [])
    run_cfg = config_lib.parse_args(CurriculumConfig(), flags)
    start = time.perf_counter()
    common.Runner(cfg.out_dir).call("runs", f"{name} seed {seed}: python curriculum.py {' '.join(flags)}",
                                    run_curriculum, run_cfg)
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r]
    keys = ("step", "tokens", "val_loss", "fraction", "growths", "grew_to", "round", "unique_documents",
            "unique_tokens")
    result = {"run": name, "strategy": run_cfg.strategy, "reverse": run_cfg.reverse, "seed": seed,
              "wall_s_this_session": time.perf_counter() - start, "resumed": run_cfg.resume,
              "final_val_loss": evals[-1]["val_loss"], "evals": [{k: r[k] for k in keys if k in r} for r in evals],
              "config": config_lib.to_dict(run_cfg)}
    atomic_write_json(done, result)
    return result


def first_reaching(evals: list[dict], target: float) -> dict | None:
    return next((r for r in evals if r["val_loss"] <= target), None)


def summarize(results: dict[str, list[dict]]) -> dict:
    """The table's numbers: target = the baseline's final validation loss, mean over its seeds."""
    target = statistics.fmean(r["final_val_loss"] for r in results[BASELINE])
    rows = {}
    for name, runs in results.items():
        hits = [first_reaching(r["evals"], target) for r in runs]
        reached = [h for h in hits if h is not None]
        row = {"seeds": len(runs), "reached": len(reached),
               "final_val_loss": common.mean_sd([r["final_val_loss"] for r in runs]),
               "final_unique_tokens": common.mean_sd([r["evals"][-1]["unique_tokens"] for r in runs])}
        if reached:
            row["steps"] = common.mean_sd([h["step"] for h in reached])
            row["unique_tokens"] = common.mean_sd([h["unique_tokens"] for h in reached])
        rows[name] = row
    return {"target_val_loss": target, "baseline": BASELINE, "rows": rows}


def table(summary: dict) -> str:
    def cell(pair, spec):  # a (mean, sd) pair of summarize, or a run that never reached the target
        return "not reached" if pair is None else common.format_mean_sd(*pair, spec)

    rows = [[name, f"{row['reached']}/{row['seeds']}", cell(row.get("steps"), ".0f"),
             cell(row.get("unique_tokens"), ",.0f"), cell(row["final_val_loss"], ".4f"),
             cell(row["final_unique_tokens"], ",.0f")] for name, row in summary["rows"].items()]
    header = ["run", "seeds reaching target", "steps to target", "unique tokens to target", "final val loss",
              "unique tokens at the end"]
    return (f"Target: the {summary['baseline']} baseline's final validation loss, {summary['target_val_loss']:.4f} "
            f"(mean over its seeds). Mean ± standard deviation over the seeds that reached it.\n\n"
            + common.markdown_table(header, rows, align="llllll") + "\n")


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import numpy as np
    with common.figure(path, 1, 2, figsize=(13, 5), dpi=110) as (fig, axes):
        for name, runs in results.items():
            n = min(len(r["evals"]) for r in runs)
            loss = np.array([[e["val_loss"] for e in r["evals"][:n]] for r in runs])
            for ax, key in zip(axes, ("step", "unique_tokens")):
                x = np.array([[e[key] for e in r["evals"][:n]] for r in runs]).mean(0)
                (line,) = ax.plot(x, loss.mean(0), label=name)
                ax.fill_between(x, loss.min(0), loss.max(0), color=line.get_color(), alpha=0.2)
        for ax, xlabel in zip(axes, ("optimizer steps", "unique training tokens seen")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel("validation loss")
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle("curriculum experiment: mean over seeds, band = range over seeds")


def report(cfg: ExperimentConfig) -> dict | None:
    out = Path(cfg.out_dir)
    results = {}
    for name in cfg.runs:
        runs = [json.loads(p.read_text()) for seed in cfg.seeds if (p := out / name / f"seed{seed}" / "result.json").is_file()]
        if runs:
            results[name] = runs
    if BASELINE not in results:
        print(f"no finished {BASELINE} run in {out} yet: nothing to report", flush=True)
        return None
    summary = summarize(results)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", table(summary))
    plot(results, out / "curves.png")
    print(table(summary), flush=True)
    print(f"wrote {out / 'summary.md'}, {out / 'summary.json'}, {out / 'curves.png'}", flush=True)
    return summary


def glue_config(name: str, seed: int, cfg: ExperimentConfig):
    from finetune_glue import GlueConfig
    run = Path(cfg.out_dir) / name / f"seed{seed}"
    return config_lib.parse_args(GlueConfig(), [cfg.glue_config, f"--task={cfg.glue_tasks}", f"--init_from={run}",
                                                f"--name={name}", f"--out_dir={Path(cfg.out_dir) / 'glue' / name / f'seed{seed}'}",
                                                *common.flag_list(cfg.glue_flags)])


def glue(cfg: ExperimentConfig) -> None:
    """Fine-tune every finished run of the chosen seeds; a run without result.json yet is left for later."""
    from finetune_glue import sweep
    for seed in cfg.glue_seeds or cfg.seeds:
        for name in cfg.runs:
            if common.run_state(Path(cfg.out_dir) / name / f"seed{seed}", result="result.json") != common.FINISHED:
                print(f"glue: {name} seed {seed} is not trained yet: skipped", flush=True)
                continue
            common.Runner(cfg.out_dir).call("glue", f"glue {name} seed {seed}", sweep, glue_config(name, seed, cfg))


def glue_report(cfg: ExperimentConfig) -> str | None:
    """One row per run: each pre-training seed's fine-tuned scores count as one sample (their fine-tuning
    seeds folded in), so the spread is over pre-training seeds."""
    from tinyhelen.glue_report import bar_chart, markdown, read_results, summarize
    results = []
    for name in cfg.runs:
        for seed in cfg.glue_seeds or cfg.seeds:
            folder = Path(cfg.out_dir) / "glue" / name / f"seed{seed}"
            if folder.is_dir():
                results += [dict(r, model=name, seed=1000 * seed + r["seed"]) for r in read_results(folder)]
    if not results:
        return None
    summary = summarize(results)
    table = markdown(summary)
    note = ("\nRows: the final checkpoint of each run; spread over its pre-training seeds "
            "(each fine-tuned with the seeds of --glue_flags, folded into one sample per pair).\n")
    atomic_write_text(Path(cfg.out_dir) / "glue_summary.md", table + note)
    bar_chart(summary, Path(cfg.out_dir) / "glue_summary.png")
    print(table + note, flush=True)
    return table


def main(cfg: ExperimentConfig) -> None:
    steps = ("report",) if cfg.report_only else cfg.steps
    try:
        if "glue" in steps and not cfg.glue_tasks:
            steps = tuple(s for s in steps if s != "glue")
            print("no --glue_tasks: no Leaner-Glue fine-tuning (e.g. --glue_tasks=rte,cola)", flush=True)
        runs = sorted(cfg.runs, key=lambda name: name != BASELINE)  # reference_loss needs the baseline
        # fail on a bad run or fine-tuning setting before any run starts
        for name in runs:
            config_lib.parse_args(CurriculumConfig(), run_flags(name, cfg.seeds[0], cfg))
            if "glue" in steps:
                glue_config(name, cfg.seeds[0], cfg)
        for step in steps:
            if step == "runs":
                for seed in cfg.seeds:
                    for name in runs:
                        run_one(name, seed, cfg)
            elif step == "glue":
                glue(cfg)
            else:
                report(cfg)
                glue_report(cfg)
    except (config_lib.ConfigError, CheckpointError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    config_lib.run_cli(main, ExperimentConfig())
