"""Validity before scores: does each answer measure order pairs whose right order is known without a judge?

    python instruct.py validate --out_dir=out/answer_validity [--pairs=20] [--judge=true] [--generated=FILE]

Contrast sets, built from the TinyHelen *validation* splits only (never Leaner-Eval, never a test
split), each pair a better and a worse answer to the same question:

    math_swap   a math problem with its own hints  against  the hints of another problem
    code_swap   a code prompt with its own response  against  another prompt's response
    gen_swap    (with --generated) a row of a generated set (instruct.py make's rows, or {"question",
                "answer"} rows) with its own answer against another row's answer
    shuffled    a sentence of leaner validation text  against  the same words shuffled (the question:
                SENTENCE_QUESTION)
    cut         a math or code answer  against  its first half (cut at half its words)
    looped      a math or code answer  against  its first half said twice (about the same length,
                so length alone does not decide)

Every measure of tinyhelen/answer_scores.py (higher is better for each) and, with --judge, the
generative judge of tinyhelen/judge.py (both answers shown at once, shuffled, one pass; grammar,
coherence, specificity and their sum) score both sides of every pair. A pair counts as ordered right
when the better answer scores strictly higher: a tie counts as wrong, and so does a judgement that
failed to parse. The table gives each measure's accuracy on each contrast with its 95% Wilson
interval, and marks a measure that orders fewer than TRUST (90%) of a contrast's pairs right as not
to be trusted on it. Not every measure is meant for every contrast (fluency cannot see which question
an answer belongs to); the table shows where each one can be used. Written to OUT_DIR: validity.md,
validity.json and pairs.jsonl (every pair with its scores).
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from tinyhelen.answer_scores import GRADES, MEASURES
from tinyhelen.config import ConfigError, setting
from data.corpus import DataError, get_field, iter_json_lines

TRUST = 0.90
Z95 = 1.959963984540054
SENTENCE_QUESTION = "Write one simple sentence."
TEXT_GENRES = ("book", "conversation", "textbook", "web", "wiki")
CONTRASTS = ("math_swap", "code_swap", "gen_swap", "shuffled", "cut", "looped")
JUDGE_MEASURES = tuple(f"judge_{s}" for s in GRADES) + ("judge_sum",)


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion correct / n (95% for the default z)."""
    if n == 0:
        return float("nan"), float("nan")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


# ------------------------------------------------------------------------------------------- contrasts

def _validation_file(root: Path, genre: str) -> Path | None:
    files = sorted((root / "leaner" / "10M" / "validation").glob(f"{genre}[0-9]*.jsonl"))
    return files[0] if files else None


def math_rows(root: Path) -> list[tuple[str, str]]:
    """(problem, its hints joined by newlines) of the leaner math validation split."""
    path = _validation_file(root, "math")
    rows = []
    for line, row in iter_json_lines(path) if path else ():
        where = f"{path}:{line}"
        hints = get_field(row, "hints", where, "math row", kind=list)
        rows.append((get_field(row, "problem", where, "math row"), "\n".join(str(h) for h in hints)))
    return rows


def code_rows(root: Path) -> list[tuple[str, str]]:
    """(prompt, response) of the leaner code validation split, rows with a response."""
    path = _validation_file(root, "code")
    rows = []
    for line, row in iter_json_lines(path) if path else ():
        where = f"{path}:{line}"
        response = get_field(row, "response", where, "code row", required=False)
        if response:
            rows.append((get_field(row, "prompt", where, "code row"), response))
    return rows


def sentences(root: Path, min_words: int = 6, max_words: int = 30) -> list[str]:
    """Sentences of the leaner validation text (book, conversation, textbook, web, wiki), of
    min_words..max_words words, each once."""
    out, seen = [], set()
    for genre in TEXT_GENRES:
        path = _validation_file(root, genre)
        for _, row in iter_json_lines(path) if path else ():
            for s in re.split(r"(?<=[.!?])\s+", str(row.get("text", ""))):
                s = " ".join(s.split())
                if min_words <= len(s.split()) <= max_words and s not in seen:
                    seen.add(s)
                    out.append(s)
    return out


def generated_rows(path: str | Path) -> list[tuple[str, str]]:
    """(question, answer) of each row of a generated set: {"question", "answer"} rows, or instruction
    rows as instruct.py make writes them (the question is the instruction and its input)."""
    out = []
    for line, r in iter_json_lines(path):
        where = f"{path}:{line}"
        if "instruction" in r:
            given = get_field(r, "input", where, "instruction row", required=False) or ""
            question = get_field(r, "instruction", where, "instruction row") + (f"\n{given}" if given else "")
            out.append((question, get_field(r, "output", where, "instruction row")))
        else:
            out.append((get_field(r, "question", where), get_field(r, "answer", where)))
    return out


def _swap_pairs(name: str, rows: list[tuple[str, str]], n: int, rng: random.Random) -> list[dict]:
    """Each chosen row's own answer (better) against the answer of another row whose answer differs."""
    rows = [r for r in rows if r[0].strip() and r[1].strip()]
    if len(rows) < 2:
        return []
    pairs = []
    for i in rng.sample(range(len(rows)), min(n, len(rows))):
        question, good = rows[i]
        others = [j for j in range(len(rows)) if rows[j][1].strip() != good.strip()]
        if others:
            pairs.append({"contrast": name, "question": question, "better": good,
                          "worse": rows[rng.choice(others)][1]})
    return pairs


def _half(answer: str) -> str:
    words = answer.split(" ")
    return " ".join(words[:max(1, len(words) // 2)]).strip()


def build_contrasts(root: str | Path, pairs: int, seed: int = 0, generated: str = "",
                    max_words: int = 150) -> list[dict]:
    """Every contrast's pairs ({"contrast", "question", "better", "worse"}), `pairs` per contrast
    (fewer when a source has fewer rows), seeded. Answers longer than max_words words keep their
    first max_words (code responses run to thousands), before any contrast is made of them."""
    root = Path(root)

    def clip(text: str) -> str:
        words = text.split(" ")
        return " ".join(words[:max_words]) if len(words) > max_words else text
    maths = [(q, clip(a)) for q, a in math_rows(root)]
    codes = [(q, clip(a)) for q, a in code_rows(root)]
    if not maths and not codes:
        raise DataError(f"no leaner math or code validation files under {root}/leaner/10M/validation")
    out = []
    out += _swap_pairs("math_swap", maths, pairs, random.Random(f"{seed}:math_swap"))
    out += _swap_pairs("code_swap", codes, pairs, random.Random(f"{seed}:code_swap"))
    if generated:
        gen = [(q, clip(a)) for q, a in generated_rows(generated)]
        out += _swap_pairs("gen_swap", gen, pairs, random.Random(f"{seed}:gen_swap"))
    rng = random.Random(f"{seed}:shuffled")
    texts = sentences(root)
    for s in rng.sample(texts, min(pairs, len(texts))):
        words = s.split()
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        out.append({"contrast": "shuffled", "question": SENTENCE_QUESTION, "better": s, "worse": " ".join(shuffled)})
    # cut and looped: answers of at least 8 words, so that a half is still a text
    long_enough = [(q, a) for q, a in maths + codes if len(a.split()) >= 8]
    for name in ("cut", "looped"):
        rng = random.Random(f"{seed}:{name}")
        for q, a in rng.sample(long_enough, min(pairs, len(long_enough))):
            half = _half(a)
            out.append({"contrast": name, "question": q, "better": a,
                        "worse": half if name == "cut" else f"{half} {half}"})
    return out


# ------------------------------------------------------------------------------------------- accuracy

def accuracy_table(pairs: list[dict], measures: tuple[str, ...]) -> dict:
    """{contrast: {measure: {"correct", "ties", "n", "accuracy", "low", "high", "trusted"}}} over the
    pairs that have the measure on both sides (a None score on either side counts as wrong)."""
    table = {}
    for contrast in CONTRASTS:
        group = [p for p in pairs if p["contrast"] == contrast]
        if not group:
            continue
        table[contrast] = {}
        for m in measures:
            scored = [p for p in group if m in p["scores_better"]]
            if not scored:
                continue
            correct = ties = 0
            for p in scored:
                b, w = p["scores_better"][m], p["scores_worse"][m]
                if b is not None and w is not None:
                    correct += b > w
                    ties += b == w
            n = len(scored)
            low, high = wilson(correct, n)
            table[contrast][m] = {"correct": correct, "ties": ties, "n": n, "accuracy": correct / n,
                                  "low": low, "high": high, "trusted": correct / n >= TRUST}
    return table


def markdown(table: dict, measures: tuple[str, ...], note: str = "") -> str:
    contrasts = list(table)
    lines = ["| measure | " + " | ".join(f"{c} (n={next(iter(table[c].values()))['n']})" for c in contrasts) + " |",
             "|---|" + "---|" * len(contrasts)]
    for m in measures:
        cells = []
        for c in contrasts:
            s = table[c].get(m)
            cells.append("-" if s is None else f"{s['accuracy']:.2f} [{s['low']:.2f}, {s['high']:.2f}]"
                         + ("" if s["trusted"] else " ✗"))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", f"Accuracy: the share of pairs where the better answer scores strictly higher (ties count as "
                  f"wrong), with its 95% Wilson interval. ✗: fewer than {TRUST:.0%} of the contrast's pairs "
                  f"ordered right: **not to be trusted** on that contrast." + (f" {note}" if note else "")]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- the command

@dataclass
class ValidateConfig:
    out_dir: str = "out/answer_validity"
    data_root: str = "/work/shared/data/tinyhelen"  # the TinyHelen folder (its validation splits only)
    model: str = "smollm2-135m"      # the scoring model (answer_scores): a short name, .gguf or run
    pairs: int = setting(20, min=1)  # pairs per contrast (a seeded sample; 20: a few minutes on 2 cores)
    seed: int = 0
    generated: str = ""              # a generated {"question", "answer"} JSONL: adds gen_swap
    max_words: int = setting(60, min=8)  # answers keep their first max_words words
    batch_size: int = setting(16, min=1)
    judge: bool = False              # also run the generative judge (llama.cpp server) on every pair
    judge_model: str = ""            # the judge's GGUF ("": SmolLM2-135M), as instruct.py judge
    base_url: str = ""               # or an OpenAI-compatible endpoint, as instruct.py judge
    judge_name: str = ""             # the endpoint's model name
    threads: int = setting(2, min=1)  # llama.cpp threads for the local judge
    device: str = "auto"
    dtype: str = setting("fp32", choices=("auto", "fp32", "bf16"))  # as instruct.py score's: match the scores'


def score_pairs(pairs: list[dict], cfg: ValidateConfig) -> str:
    """Adds scores_better / scores_worse (every answer_scores measure) to each pair; every distinct
    (question, answer) is scored once. Returns the precision they were scored in (bf16 or fp32)."""
    from tinyhelen import machine as machine_lib
    from tinyhelen.answer_scores import load_scorer, score_answers
    machine = machine_lib.setup(cfg.device, cfg.dtype, 0, distributed=False)
    model, prompts = load_scorer(cfg.model, machine.device)
    keys = sorted({(p["question"], p[side]) for p in pairs for side in ("better", "worse")})
    with machine.autocast():
        scores = score_answers(model, prompts, [{"question": q, "answer": a} for q, a in keys], cfg.batch_size,
                               progress=lambda done, total: print(f"scored {done}/{total}", flush=True))
    by_key = dict(zip(keys, scores))
    for p in pairs:
        for side in ("better", "worse"):
            p[f"scores_{side}"] = {m: by_key[(p["question"], p[side])][m] for m in MEASURES}
    return machine.dtype_name


def judge_pairs(pairs: list[dict], cfg: ValidateConfig) -> str:
    """Adds the generative judge's grades (judge_grammar, ..., judge_sum; None where it failed) to each
    pair's scores; returns the judge's name."""
    from tinyhelen.judge import JudgeConfig, judge_model_path, judge_one
    from tinyhelen.llm import MODEL_ALIAS, ChatClient, LocalServer
    jcfg = JudgeConfig(seed=cfg.seed)

    def run(client, name):
        for n, p in enumerate(pairs):
            answers = {"better": {"answer": p["better"]}, "worse": {"answer": p["worse"]}}
            j = judge_one(client, p["question"], f"{p['contrast']}:{n}", answers, 1, jcfg, name)
            for side in ("better", "worse"):
                s = j["scores"][side] if j["status"] == "ok" else None
                p[f"scores_{side}"].update({f"judge_{k}": (s[k] if s else None) for k in GRADES})
                p[f"scores_{side}"]["judge_sum"] = sum(s.values()) if s else None
            print(f"judged {n + 1}/{len(pairs)}: {j['status']}", flush=True)
        return name
    if cfg.base_url:
        return run(ChatClient(cfg.base_url, cfg.judge_name), cfg.judge_name or cfg.base_url)
    model_path = judge_model_path(cfg.judge_model)
    with LocalServer(model_path=model_path, n_threads=cfg.threads) as server:
        return run(ChatClient(server.base_url, MODEL_ALIAS), Path(model_path).name if model_path else "SmolLM2-135M")


def run_validate(cfg: ValidateConfig) -> dict:
    from tinyhelen.atomic import atomic_jsonl, atomic_write_text
    if cfg.generated and not Path(cfg.generated).is_file():
        raise ConfigError(f"--generated={cfg.generated}: no such file")
    pairs = build_contrasts(cfg.data_root, cfg.pairs, cfg.seed, cfg.generated, cfg.max_words)
    dtype = score_pairs(pairs, cfg)
    measures = MEASURES
    note = f"Scoring model: {cfg.model} ({dtype})."
    if cfg.judge:
        name = judge_pairs(pairs, cfg)
        measures = MEASURES + JUDGE_MEASURES
        note += f" Generative judge: {name}, one pass, a failed judgement counts as wrong."
    table = accuracy_table(pairs, measures)
    text = markdown(table, measures, note)
    out = Path(cfg.out_dir)
    with atomic_jsonl(out / "pairs.jsonl") as f:
        for p in pairs:
            f.write(p)
    atomic_write_text(out / "validity.json", json.dumps({"table": table, "pairs_per_contrast": cfg.pairs,
                                                         "seed": cfg.seed, "model": cfg.model,
                                                         "dtype": dtype,
                                                         "trust": TRUST}, indent=2) + "\n")
    atomic_write_text(out / "validity.md", f"# Validity of the answer measures\n\n{text}\n")
    print(text)
    return table
