"""The Leaner-Glue table and chart of one or more fine-tuning sweeps (finetune_glue.py's out folders),
and the gaps between models: finetune_glue.py writes each sweep's summary with them, and the studies
(studies/glue.py's report step, studies/curriculum_strategies.py) their tables over several sweeps.

    results = [r for folder in sweeps for r in read_results(folder)]
    write_summary(results, "out/glue/summary")       # out/glue/summary.md and .png
    gaps(results, [("leaner_llama", "ori_llama")])   # each gap A - B with its spread and p-value

For each model and task the learning rate with the best mean dev score over seeds is selected, and the
table gives the mean and standard deviation over those seeds of the test score (when every run of the
table has a test file) or else of the dev score; the latter is optimistic, since the same dev set
chose the step and the learning rate, and the table says so. Scores are GLUE's, x100. The average is
taken per seed over the tasks of the row (mnli counts once, as the mean of matched and mismatched),
then its mean and standard deviation over seeds. Tasks whose dev set was held out of the validation
file (no train file in the local copy) are marked.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from tinyhelen.atomic import atomic_write_text
from tinyhelen.metrics import save_figure
from data.corpus import GLUE_TASKS

LABELS = {"cola": "cola (MCC)", "mrpc": "mrpc (F1/acc)", "qqp": "qqp (F1/acc)", "stsb": "stsb (P/S corr)",
          "mnli-m": "mnli-m (acc)", "mnli-mm": "mnli-mm (acc)"}


def read_results(sweep_dir: str | Path) -> list[dict]:
    """Every finished run's result under a sweep folder (OUT/TASK/RUN/result.json)."""
    folder = Path(sweep_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"no sweep folder {folder}: give the --out_dir of a finetune_glue.py command")
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*/*/result.json"))]


def _columns(task: str) -> list[str]:
    return ["mnli-m", "mnli-mm"] if task == "mnli" else [task]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _selected(results: list[dict]) -> tuple[str, dict]:
    """("test" | "dev", {(model, task): runs of the learning rate with the best mean dev score, by seed})."""
    scored = "test" if results and all("test" in r for r in results) else "dev"
    by = defaultdict(lambda: defaultdict(list))  # (model, task) -> lr -> results
    for r in results:
        by[r["model"], r["task"]][r["lr"]].append(r)
    chosen = {}
    for key, by_lr in by.items():
        lr = max(by_lr, key=lambda lr: statistics.fmean(r["dev"] for r in by_lr[lr]))
        chosen[key] = sorted(by_lr[lr], key=lambda r: r["seed"])
    return scored, chosen


def _task_columns(chosen: dict) -> list[str]:
    """The table's score columns for the tasks present, in GLUE order (mnli as matched, mismatched)."""
    return [c for t in GLUE_TASKS if any(t == task for _, task in chosen) for c in _columns(t)]


def _per_seed(scored: str, chosen: dict) -> dict[str, dict[str, dict[int, float]]]:
    """{model: {column or "average": {seed: score}}}; the average only for seeds that have every task
    of the model (mnli counts once, as the mean of matched and mismatched)."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    tasks_of: dict = defaultdict(dict)  # model -> seed -> [task score]
    for (model, task), runs in chosen.items():
        for r in runs:
            for column, key in zip(_columns(task), (scored, f"{scored}_mm")):
                out[model][column][r["seed"]] = r[key]
            score = (r[scored] + r[f"{scored}_mm"]) / 2 if task == "mnli" else r[scored]
            tasks_of[model].setdefault(r["seed"], []).append(score)
    for model, seeds in tasks_of.items():
        n_tasks = sum(1 for (m, _) in chosen if m == model)
        out[model]["average"] = {s: statistics.fmean(v) for s, v in seeds.items() if len(v) == n_tasks}
    return out


def summarize(results: list[dict]) -> dict:
    """{"scored": "test" | "dev", "columns": [...], "rows": {model: {column: (mean, std, n, lr)}},
    "held_out": {task,...}, "majority": {column: dev score}}, the learning rate selected per model and
    task by its mean dev score over seeds."""
    scored, chosen = _selected(results)
    columns = _task_columns(chosen)
    rows: dict[str, dict] = {}
    for (model, task), runs in chosen.items():
        for column, key in zip(_columns(task), (scored, f"{scored}_mm")):
            rows.setdefault(model, {})[column] = (*_mean_std([r[key] for r in runs]), len(runs), runs[0]["lr"])
    for model, per_column in _per_seed(scored, chosen).items():
        if per_column["average"]:
            values = list(per_column["average"].values())
            rows[model]["average"] = (*_mean_std(values), len(values), None)
    held_out = {r["task"] for r in results if r.get("data", {}).get("dev_held_out_of_validation")}
    majority = {}
    for r in results:
        majority.setdefault(_columns(r["task"])[0], r.get("majority_dev"))
    return {"scored": scored, "columns": columns, "rows": rows, "held_out": held_out, "majority": majority}


def gaps(results: list[dict], pairs: list[tuple[str, str]]) -> str:
    """A Markdown table of the gap A - B, per task and in the average, for each (A, B) pair of models:
    the difference of the means over seeds (x100), its standard error sqrt(sA^2/nA + sB^2/nB), and the
    two-sided p-value of Welch's t-test (scipy) over the seeds. Different seeds of A and B are
    independent fine-tunings, so the test is unpaired."""
    from scipy import stats
    scored, chosen = _selected(results)
    per_seed = _per_seed(scored, chosen)
    columns = _task_columns(chosen) + ["average"]
    lines = ["| gap (A - B) | " + " | ".join(c if c == "average" else LABELS.get(c, f"{c} (acc)")
                                            for c in columns) + " |",
             "|" + "---|" * (len(columns) + 1)]
    for a, b in pairs:
        missing = [m for m in (a, b) if m not in per_seed]
        if missing:
            raise ValueError(f"cannot compare: no results for {', '.join(missing)}; models: {', '.join(per_seed)}")
        cells = []
        for c in columns:
            xa, xb = list(per_seed[a].get(c, {}).values()), list(per_seed[b].get(c, {}).values())
            if len(xa) < 2 or len(xb) < 2:
                cells.append("")
                continue
            gap = statistics.fmean(xa) - statistics.fmean(xb)
            se = (statistics.variance(xa) / len(xa) + statistics.variance(xb) / len(xb)) ** 0.5
            p = stats.ttest_ind(xa, xb, equal_var=False).pvalue if se > 0 else float("nan")
            cells.append(f"{100 * gap:+.1f} ± {100 * se:.1f} (p {p:.2f})")
        lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    lines += ["", f"Difference of the mean {scored} scores over seeds, x100, ± its standard error, and the "
              f"p-value of Welch's t-test over the seeds (unpaired; few seeds make it a rough guide)."]
    return "\n".join(lines) + "\n"


def markdown(summary: dict) -> str:
    columns, held_out = summary["columns"], summary["held_out"]

    def label(column: str) -> str:
        return LABELS.get(column, f"{column} (acc)") + (" †" if column.split("-")[0] in held_out else "")

    head = ["model", *map(label, columns), "average"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, cells in summary["rows"].items():
        row = [model]
        for c in [*columns, "average"]:
            if c not in cells:
                row.append("")
            else:  # one seed has no spread to show
                mean, std, n = cells[c][:3]
                row.append(f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    if summary["scored"] == "dev":
        majority = [f"{100 * summary['majority'][c]:.1f}" if summary["majority"].get(c) is not None else ""
                    for c in columns]
        lines.append("| " + " | ".join(["majority class (dev)", *majority, ""]) + " |")
    lines += ["", "Learning rate selected (by mean dev score) and seeds per cell:", "",
              "| model | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for model, cells in summary["rows"].items():
        lines.append("| " + " | ".join([model] + [f"{cells[c][3]:g} ({cells[c][2]})" if c in cells else ""
                                                    for c in columns]) + " |")
    lines.append("")
    lines.append(f"Mean ± standard deviation over seeds (the mean alone for one seed), x100, of the "
                 f"{summary['scored']} score."
                 + (" No test files were given: these are dev scores of the step and learning rate that the "
                    "same dev set selected, so they are optimistic." if summary["scored"] == "dev" else ""))
    if held_out:
        lines.append(f"† {', '.join(sorted(held_out))}: the local copy has no train file; the validation "
                     f"file was split with a fixed seed into train and a held-out dev set.")
    return "\n".join(lines) + "\n"


def bar_chart(summary: dict, png_path: str | Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    columns = [*summary["columns"], "average"]
    models = list(summary["rows"])
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(columns) + 2), 4.2), dpi=110)
    x = np.arange(len(columns))
    for i, model in enumerate(models):
        cells = summary["rows"][model]
        means = [100 * cells[c][0] if c in cells else np.nan for c in columns]
        stds = [100 * cells[c][1] if c in cells else 0.0 for c in columns]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=model)
    ax.set_xticks(x, columns, rotation=20)
    ax.set_ylabel(f"{summary['scored']} score (x100)")
    ax.set_title(f"Leaner-Glue, mean ± std over seeds ({summary['scored']})")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, png_path)


def write_summary(results: list[dict], prefix: str | Path) -> str:
    """PREFIX.md (the table) and PREFIX.png (the bar chart) of these results; returns the table."""
    summary = summarize(results)
    table = markdown(summary)
    prefix = Path(prefix)
    atomic_write_text(prefix.with_suffix(".md"), table)
    bar_chart(summary, prefix.with_suffix(".png"))
    return table
