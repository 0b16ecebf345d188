"""The instruction-following study's report: the validated answer measures per arm and per Leaner-Eval
split file, with 95% intervals over questions and the spread over pre-training seeds.

Inputs: per model (corpus, seed) its answers (instruct.py generate: hash, question, answer) and their
scores (instruct.py score: one row per answer, in order), the validate step's validity.json, and the
Leaner-Eval folder (which question is in which split file). Written to OUT_DIR: report.md,
report.json and scores.png.

How each number is made, per measure:
  - a model's mean over a set of questions (all, or one split file);
  - an arm's value: the mean of its models' means, ± their standard deviation over seeds (none with
    one seed); the bracket is the 95% t interval over questions of the per-question score averaged
    over the arm's seeds;
  - leaner - original: per question, the leaner arm's seed-averaged score minus the original arm's,
    then its mean and 95% t interval over questions (paired: both arms answered the same questions).
A measure the validity table marks as not trusted on the contrasts that matter for it is flagged:
relevance must order the question swaps (math_swap, code_swap, gen_swap), fluency the shuffled and
cut answers, each grade every contrast it was run on.
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

from studies import common
from tinyhelen.answer_scores import MEASURES
from tinyhelen.atomic import atomic_write_json, atomic_write_text
from tinyhelen.judge_report import mean_ci, split_of, text_measures
from data.corpus import DataError, iter_json_lines

# The contrasts a measure must order right before its differences between models mean anything.
NEEDED = {"relevance": ("math_swap", "code_swap", "gen_swap"), "fluency": ("shuffled", "cut")}
TEXT_MEASURES = ("words", "distinct_2", "repetition", "outside_core")


def trusted(validity: dict) -> dict[str, tuple[bool, str]]:
    """{measure: (trusted, why)} from validate's table ({contrast: {measure: {accuracy, trusted}}})."""
    out = {}
    for m in MEASURES:
        needed = [c for c in NEEDED.get(m, tuple(validity)) if m in validity.get(c, {})]
        if not needed:
            out[m] = (False, "not validated")
            continue
        bad = [f"{c} {validity[c][m]['accuracy']:.2f}" for c in needed if not validity[c][m]["trusted"]]
        out[m] = (not bad, ("below 90% on " + ", ".join(bad)) if bad else
                  "ordered " + ", ".join(f"{c} {validity[c][m]['accuracy']:.2f}" for c in needed))
    return out


def read_model(answers: Path, scores: Path) -> dict[str, dict]:
    """{question hash: {"question", "answer", measure: value...}}: answers and scores joined by hash
    (instruct.py score copies each answer row's hash into its score row)."""
    rows = {r["hash"]: {"question": r["question"], "answer": r["answer"]} for _, r in iter_json_lines(answers)}
    for line, s in iter_json_lines(scores):
        if s.get("hash") not in rows:
            raise DataError(f"{scores}:{line}: hash {s.get('hash')!r} has no answer in {answers}")
        rows[s["hash"]].update({m: s[m] for m in MEASURES})
    unscored = [h for h, r in rows.items() if MEASURES[0] not in r]
    if unscored:
        raise DataError(f"{scores}: {len(unscored)} answers of {answers} have no score (rerun the score step)")
    return rows


def arm_table(models: dict[tuple[str, int], dict[str, dict]], hashes: list[str], measure: str) -> dict:
    """{corpus: {"mean", "sd" (over seeds), "ci" (over questions), "n"}} and the paired difference."""
    by_corpus: dict[str, dict[int, dict]] = {}
    for (corpus, seed), rows in models.items():
        by_corpus.setdefault(corpus, {})[seed] = rows
    out = {}
    per_question = {}
    for corpus, seeds in by_corpus.items():
        seed_means = [statistics.fmean(seeds[s][h][measure] for h in hashes) for s in sorted(seeds)]
        mean, sd = common.mean_sd(seed_means)
        per_question[corpus] = [statistics.fmean(seeds[s][h][measure] for s in seeds) for h in hashes]
        _, ci, n = mean_ci(per_question[corpus])
        out[corpus] = {"mean": mean, "sd": sd, "ci": ci, "n": n, "seeds": seed_means}
    if {"leaner", "ori"} <= set(per_question):
        diff, ci, n = mean_ci([a - b for a, b in zip(per_question["leaner"], per_question["ori"])])
        out["leaner - ori"] = {"mean": diff, "ci": ci, "n": n}
    return out


def _cell(stats: dict) -> str:
    sd = "" if stats.get("sd") is None else f" ± {stats['sd']:.3f}"
    return f"{stats['mean']:.3f}{sd} [{stats['ci']:.3f}]"


def write_report(files: dict[tuple[str, int], tuple[Path, Path]], validity_path: Path, eval_root: str,
                 out_dir: Path, quotes: int = 4, seed: int = 0) -> dict:
    from simplify.vocab import core_vocab
    models = {key: read_model(Path(a), Path(s)) for key, (a, s) in sorted(files.items())}
    hashes = sorted(set.intersection(*(set(rows) for rows in models.values())))
    if not hashes:
        raise DataError("the models answered no question in common")
    validity = json.loads(Path(validity_path).read_text())["table"] if Path(validity_path).is_file() else {}
    trust = trusted(validity)
    splits = split_of(eval_root)
    groups = {"all": hashes}
    for h in hashes:
        if h in splits:
            groups.setdefault(splits[h], []).append(h)
    result = {"questions": len(hashes), "models": [f"{c}_s{s}" for c, s in models], "trust": trust,
              "measures": {m: {g: arm_table(models, hs, m) for g, hs in sorted(groups.items())} for m in MEASURES}}
    vocab = core_vocab()
    text = {}
    for (corpus, seed_), rows in models.items():
        per = [text_measures(rows[h]["answer"], vocab) for h in hashes]
        text.setdefault(corpus, []).append({k: statistics.fmean(p[k] for p in per) for k in TEXT_MEASURES})
    result["text_measures"] = {c: {k: common.mean_sd([v[k] for v in vals]) for k in TEXT_MEASURES}
                               for c, vals in text.items()}
    rng = random.Random(seed)
    picked = rng.sample(hashes, min(quotes, len(hashes)))
    result["quotes"] = [{"question": models[next(iter(models))][h]["question"],
                         **{f"{c}_s{s}": rows[h]["answer"] for (c, s), rows in models.items()}} for h in picked]

    lines = [f"# Leaner-Eval answers scored alone ({len(hashes)} questions, models "
             f"{', '.join(result['models'])})", "",
             "Cells: mean over seeds ± their standard deviation [95% interval over questions]; the last "
             "column is the paired leaner - original difference per question, mean [95% interval].", ""]
    for m in MEASURES:
        ok, why = trust[m]
        lines += [f"## {m}{'' if ok else ' (not to be trusted: ' + why + ')'}", "",
                  common.markdown_table(["questions", "n", "leaner", "original", "leaner - original"],
                                        [[g, t["leaner"]["n"], _cell(t["leaner"]), _cell(t["ori"]),
                                          f"{t['leaner - ori']['mean']:+.3f} [{t['leaner - ori']['ci']:.3f}]"]
                                         for g, t in result["measures"][m].items()]), ""]
    lines += ["## Model-free measures (means over answers; ± over seeds)", "",
              common.markdown_table(["measure", "leaner", "original"],
                                    [[k] + [common.format_mean_sd(*result["text_measures"][c][k], ".3f")
                                            for c in ("leaner", "ori")] for k in TEXT_MEASURES]), ""]
    lines += ["## Answers quoted (a seeded sample)", ""]
    for q in result["quotes"]:
        lines.append(f"- **{q['question']}**")
        lines += [f"  - {k}: {v[:300]!r}" for k, v in q.items() if k != "question"]
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
    atomic_write_json(out_dir / "report.json", result)
    _figure(result, out_dir / "scores.png")
    print("\n".join(lines))
    return result


def _figure(result: dict, path: Path) -> None:
    shown = [m for m in ("relevance", "fluency") if m in result["measures"]]
    with common.figure(path, 1, len(shown), figsize=(5 * len(shown), 3.6), squeeze=False) as (fig, axes):
        for ax, m in zip(axes[0], shown):
            groups = list(result["measures"][m])
            for k, corpus in enumerate(("leaner", "ori")):
                stats = [result["measures"][m][g][corpus] for g in groups]
                ax.bar([i + 0.4 * k for i in range(len(groups))], [s["mean"] for s in stats], width=0.4,
                       yerr=[s["ci"] for s in stats], capsize=3, label=corpus)
            ax.set_xticks([i + 0.2 for i in range(len(groups))], groups, rotation=20, fontsize=8)
            ok = result["trust"][m][0]
            ax.set_title(f"{m} (nats per token){'' if ok else ' - not trusted'}", fontsize=9)
            ax.legend(fontsize=8)
