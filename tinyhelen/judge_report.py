"""The report on instruct.py's judgements: scores with their intervals, how far to trust the judge, and
model-free measures of the answers.

    python instruct.py report --answers=A.jsonl,B.jsonl --judgements=J.jsonl --out_dir=DIR

Trust. Every question is judged twice (tinyhelen/judge.py), so pass 1 against pass 2 of the same answer
gives the judge's self-agreement (Spearman's and Kendall's rank correlations per score, and the share
of exact matches), and the score sums by label position show whether it favours one (Kruskal-Wallis).
Scores are means over questions with a 95% t interval, overall and per Leaner-Eval split file.

Measures that need no judge: words, distinct-1/2, the repetition rate, the share of words outside the
core vocabulary (simplify/vocab.py) and, with --reference, the answers' perplexity under a model.
The report is written as OUT_DIR/report.md, report.json and scores.png.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tinyhelen.atomic import atomic_write_text, read_lines
from tinyhelen.judge import SCORES, read_answers
from data.corpus import DataError, iter_json_lines


# ------------------------------------------------------------------------------------------- trust

def agreement(judgements: list[dict]) -> dict:
    """Pass 1 against pass 2 of the same (question, model): per score (and their sum), Spearman's and
    Kendall's rank correlations and the share of exact matches; how many pairs they rest on."""
    from scipy.stats import kendalltau, spearmanr
    by = defaultdict(dict)
    for j in judgements:
        if j["status"] == "ok":
            for model, s in j["scores"].items():
                by[(j["hash"], model)][j["pass"]] = s
    pairs = [(v[1], v[2]) for v in by.values() if 1 in v and 2 in v]
    out = {"pairs": len(pairs)}
    for score in SCORES + ("sum",):
        def get(s):
            return sum(s.values()) if score == "sum" else s[score]
        a, b = [get(x) for x, _ in pairs], [get(y) for _, y in pairs]
        if len(pairs) >= 3 and len(set(a)) > 1 and len(set(b)) > 1:
            out[score] = {"spearman": float(spearmanr(a, b)[0]), "kendall": float(kendalltau(a, b)[0]),
                          "exact": sum(x == y for x, y in zip(a, b)) / len(a)}
        else:  # a constant judge has no rank correlation
            out[score] = {"spearman": None, "kendall": None,
                          "exact": sum(x == y for x, y in zip(a, b)) / len(a) if a else None}
    return out


def position_bias(judgements: list[dict]) -> dict:
    """Mean score sum by label (A, B, ...) over all successful judgements, with counts, and a
    Kruskal-Wallis p-value of 'every position is scored alike' (None when it cannot be computed)."""
    from scipy.stats import kruskal
    sums = defaultdict(list)
    for j in judgements:
        if j["status"] == "ok":
            for label, model in j["labels"].items():
                sums[label].append(sum(j["scores"][model].values()))
    groups = [sums[label] for label in sorted(sums)]
    p = None
    if len(groups) > 1 and all(len(g) > 1 for g in groups) and len({v for g in groups for v in g}) > 1:
        p = float(kruskal(*groups).pvalue)
    by_label = {label: {"mean_sum": sum(v) / len(v), "n": len(v)} for label, v in sorted(sums.items())}
    return {"by_label": by_label,
            "kruskal_p": p}


# ------------------------------------------------------------------------------------------- measures

def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+|\d+", text.lower())


def text_measures(answer: str, vocab=None) -> dict:
    """Model-free measures of one answer: words, distinct-1/2 (unique n-grams over n-grams), the
    repetition rate (share of word 3-grams seen before in the same answer) and, with a core vocabulary
    (simplify/vocab.py), the share of words outside it."""
    w = _words(answer)

    def distinct(n):
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        return len(set(grams)) / len(grams) if grams else 0.0
    tri = [tuple(w[i:i + 3]) for i in range(len(w) - 2)]
    seen, repeated = set(), 0
    for g in tri:
        repeated += g in seen
        seen.add(g)
    out = {"words": len(w), "distinct_1": distinct(1), "distinct_2": distinct(2),
           "repetition": repeated / len(tri) if tri else 0.0}
    if vocab is not None:
        out["outside_core"] = vocab.oov_share(answer) if w else 0.0
    return out


def answer_perplexity(rows: list[dict], reference: str, batch_size: int = 8) -> list[float]:
    """exp(mean loss) of each answer's tokens after its prompt under a reference model (a run folder,
    its ckpt.pt or an export: tinyhelen/runs.py)."""
    import math

    import torch

    from data.corpus import task_prompt
    from tinyhelen.runs import load_run
    model, tok, _ = load_run(reference)
    out = []
    with torch.inference_mode():
        for r in rows:
            p = [tok.eot_id] + tok.encode(task_prompt(r["question"]))
            a = tok.encode(r["answer"]) + [tok.eot_id]
            ids = torch.tensor([(p + a)[-getattr(model.config, "max_seq_len", 10 ** 9):]])
            n = min(len(a), ids.shape[1] - 1)
            logits = model(ids[:, :-1])[0][0, -n:].float()
            out.append(math.exp(torch.nn.functional.cross_entropy(logits, ids[0, -n:]).item()))
    return out


# ------------------------------------------------------------------------------------------- report

@dataclass
class ReportConfig:
    answers: str = ""               # the answers files that were judged
    judgements: str = ""            # the judge's JSONL ("" : model-free measures only)
    eval_root: str = "/work/shared/data/tinyhelen"  # for the per-split breakdown
    reference: str = ""             # a checkpoint for answer perplexity ("" : skipped)
    out_dir: str = "out/instruct_report"


def mean_ci(values: list[float]) -> tuple[float, float, int]:
    """(mean, half-width of the 95% t interval, n)."""
    from scipy.stats import t
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), 0
    m = sum(values) / n
    if n == 1:
        return m, float("nan"), 1
    sd = (sum((v - m) ** 2 for v in values) / (n - 1)) ** 0.5
    return m, float(t.ppf(0.975, n - 1) * sd / n ** 0.5), n


def split_of(eval_root: str) -> dict[str, str]:
    from data.tasks import eval_files
    try:
        files = eval_files(eval_root)
    except (DataError, FileNotFoundError):
        return {}
    return {row["hash"]: name for name, path in files.items() if name.startswith("split-")
            for _, row in iter_json_lines(path)}


def score_table(names, judgements, splits: dict[str, str]) -> tuple[list[str], dict]:
    """Markdown rows and {model: {split: {score: (mean, ci, n)}}}; a (question, model)'s passes averaged."""
    per = defaultdict(lambda: defaultdict(list))
    for j in judgements:
        if j["status"] == "ok":
            for model, s in j["scores"].items():
                per[(j["hash"], model)]["sum"].append(sum(s.values()))
                for k in SCORES:
                    per[(j["hash"], model)][k].append(s[k])
    stats = {}
    for model in names:
        groups = {"all": [k for k in per if k[1] == model]}
        for key in groups["all"]:
            if key[0] in splits:
                groups.setdefault(splits[key[0]], []).append(key)
        stats[model] = {g: {k: mean_ci([sum(per[key][k]) / len(per[key][k]) for key in keys])
                            for k in SCORES + ("sum",)} for g, keys in sorted(groups.items())}
    lines = ["| model | questions | " + " | ".join(SCORES) + " | sum |", "|---|---|" + "---|" * 4]
    for model in names:
        for g, s in stats[model].items():
            cells = [f"{s[k][0]:.2f} ± {s[k][1]:.2f}" for k in SCORES + ("sum",)]
            lines.append(f"| {model} | {g} (n={s['sum'][2]}) | " + " | ".join(cells) + " |")
    return lines, stats


def bar_chart(stats: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tinyhelen.metrics import save_figure
    models = list(stats)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        s = stats[model].get("all")
        if not s:
            continue
        means = [s[k][0] for k in SCORES + ("sum",)]
        errs = [0 if s[k][1] != s[k][1] else s[k][1] for k in SCORES + ("sum",)]
        ax.bar([x + i * width for x in range(4)], means, width, yerr=errs, capsize=3, label=model)
    ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(4)], list(SCORES) + ["sum"])
    ax.set_ylabel("judge score (95% CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def run_report(cfg: ReportConfig) -> str:
    names, by_hash = read_answers([p for p in cfg.answers.split(",") if p])
    out = Path(cfg.out_dir)
    lines = [f"# Instruction-following report\n", f"{len(by_hash)} questions, models: {', '.join(names)}\n"]
    report = {"models": names}
    if cfg.judgements:
        judgements = [json.loads(line) for line in read_lines(cfg.judgements)]
        if not judgements:
            raise DataError(f"{cfg.judgements} holds no judgements")
        failed = [j for j in judgements if j["status"] != "ok"]
        table, stats = score_table(names, judgements, split_of(cfg.eval_root))
        agree, bias = agreement(judgements), position_bias(judgements)
        report.update(scores=stats, agreement=agree, position_bias=bias, failed=len(failed),
                      judgements=len(judgements), judge=sorted({j["judge"] for j in judgements}))
        lines += [f"Judge: {', '.join(report['judge'])}; {len(judgements)} judgements, {len(failed)} failed "
                  f"(unparsable after retries).\n", "## Scores (mean ± 95% CI)\n", *table, "",
                  f"## Self-agreement (pass 1 against pass 2, {agree['pairs']} answer pairs)\n",
                  "| score | Spearman | Kendall | exact |", "|---|---|---|---|"]
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        for k in SCORES + ("sum",):
            a = agree[k]
            lines.append(f"| {k} | {fmt(a['spearman'])} | {fmt(a['kendall'])} | {fmt(a['exact'])} |")
        lines += ["", "## Label position (mean score sum by label)\n", "| label | mean sum | n |",
                  "|---|---|---|"]
        lines += [f"| {label} | {v['mean_sum']:.2f} | {v['n']} |" for label, v in bias["by_label"].items()]
        lines += ["", f"Kruskal-Wallis p (all positions alike): {fmt(bias['kruskal_p'])}", ""]
        bar_chart(stats, out / "scores.png")
        lines.append("![scores](scores.png)\n")
    from simplify.vocab import core_vocab
    try:
        vocab = core_vocab()
    except Exception:  # noqa: BLE001  the core list needs spaCy; the other measures do not
        vocab = None
    lines += ["## Model-free measures (means)\n"]
    keys = ["words", "distinct_1", "distinct_2", "repetition"] + (["outside_core"] if vocab else []) + \
        (["perplexity"] if cfg.reference else [])
    lines += ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    measures = {}
    for model in names:
        rows = [by_hash[h][model] for h in sorted(by_hash)]
        ms = [text_measures(r["answer"], vocab) for r in rows]
        if cfg.reference:
            for m, p in zip(ms, answer_perplexity(rows, cfg.reference)):
                m["perplexity"] = p
        measures[model] = {k: sum(m[k] for m in ms) / len(ms) for k in keys}
        lines.append(f"| {model} | " + " | ".join(f"{measures[model][k]:.3f}" for k in keys) + " |")
    report["measures"] = measures
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    print("\n".join(lines))
    return "\n".join(lines)
