"""Open-answer instruction rows made here, from leaner *train* documents, by a local LLM.

    python instruct.py make --out=FILE.jsonl [--target=3000] [--base_url=URL --model=NAME | --engine=smollm2-135m]

The paper's Leaner-Instruct was written by an LLM too; its file is not in the local copy. The LLM is
SmolLM2-135M-Instruct on the embedded llama.cpp server by default, any OpenAI-compatible endpoint with
--base_url, or, with --engine, a chat model this engine runs itself (the import of the same GGUF,
answering a batch of prompts at once: 1.7x llama.cpp's rate on 2 cores, bench/bench_instruct_make.py). SmolLM2-135M writes poor
questions about a text (it mostly praises it) but often a usable short answer to a given question
about a given text. So the two halves come from different places:

    questions  templates over what a document is about: a wiki article's title, a textbook lesson's
               subject, one of its sentences or paragraphs. The kinds are those of Leaner-Eval's
               questions: describe ("Tell me about X."), explain ("Explain this in simple words." with a
               sentence), imagine ("Imagine you are telling a friend about X. What would you say?"),
               rewrite ("Say this in a shorter way." with a paragraph), compare ("How are X and Y
               different?", two articles).
    answers    the LLM, shown the document's passage (both, for compare) and asked to answer in one to
               three short sentences with easy words and only the text's facts.

Every answer is checked before its row is accepted; a rejected answer is asked once more with another
seed and a higher temperature, then the row goes to the rejects with its reason:

    empty, refusal, format      simplify/validate.py's parse (also strips "Sure! Here is ...:"); a list,
                                a lesson heading or the request's own words ("young child") are format too
    praise                      a reply about the text instead of an answer ("What a wonderful story!")
    length                      fewer than MIN_WORDS or more than MAX_WORDS words
    restates_question           the answer is the question again (nearly all its words are the question's)
    off_text                    under half of the answer's content words (4+ letters, not function words)
                                are in the text (under 35% for imagine, which may add a friendly frame)
    repetition                  over 15% of its word 3-grams said before in it ("He's talking about a war
                                that happened a long time ago. He's talking about a war..."), or
    repetition, vocabulary, length_ratio, contact_left
                                simplify/validate.py's check: a sentence said twice, a share of words
                                outside the 2,000-word core above the leaner train corpus's own share
                                (measured on the same genres), a rewrite not shorter than its input
    ungrounded                  a word outside the core vocabulary (a name, a hard word) that neither
                                the passage nor the question has: the LLM made it up
    duplicate                   the same answer (normalised) as an accepted row
    leak                        the row shares a hash or text with Leaner-Eval or a test split
                                (tinyhelen/instruct_data.py's check)

Rows whose question has a word outside the core ("Tell me about Grape Juice Making.") or whose passage
has over twice the corpus's share of such words are not asked at all (askable): their answers repeat
those words. Only leaner train documents are read: nothing is seeded from Leaner-Eval or any test split.

Resuming. Every LLM answer is cached under the hash of what produced it (tinyhelen/llm/cache.py), and the
plan (which rows are asked, in which order) is a seeded function of the data, so a run that is
stopped and started again asks for nothing twice; the outputs are rebuilt in plan order on every run
and renamed into place. The plan is worked through until --target rows are accepted (or it runs out).

Written: OUT (accepted rows, the release's instruction format: instruction, input, output, plus source
"generated:KIND", hash and the document they are grounded in), OUT's .rejects.jsonl (every rejected
row with its reason and the last answer) and .report.json (acceptance rate, rejections by reason and
by kind, the core-vocabulary shares, the run's wall time).
"""

from __future__ import annotations

import json
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from tinyhelen.atomic import atomic_jsonl, atomic_write_json
from tinyhelen.config import ConfigError, setting
from tinyhelen.instruct_data import Forbidden, forbidden_texts, leak, normalise, row_hash
from tinyhelen.judge_report import text_measures
from data.corpus import DataError, iter_documents
from simplify.validate import Rejected  # simplify's rejection (reason, detail): one kind for both

KINDS = ("describe", "explain", "imagine", "rewrite", "compare")
GENRES = ("wiki", "textbook")       # the train genres with a subject to ask about
MIN_WORDS, MAX_WORDS = 5, 70
HARD_TEXT = 2.0                     # see askable
PROMPT_VERSION = 1                  # part of every cache key: a changed prompt asks again

SYSTEM = ("You are a kind teacher talking to a young child. Answer in one to three short sentences with "
          "easy words. Use only facts from the text.")

QUESTIONS = {
    "describe": ("Tell me about {s}.", "Describe {s} in a few words.", "What do you know about {s}?"),
    "explain": ("Explain this in simple words.", "What does this mean? Say it with easy words."),
    "imagine": ("Imagine you are telling a friend about {s}. What would you say?",
                "Imagine you are a teacher. How would you tell your class about {s}?"),
    "rewrite": ("Say this in a shorter way.", "Tell this again in fewer words."),
    "compare": ("How are {a} and {b} different?", "What is different about {a} and {b}?"),
}

# What the LLM is asked, per kind, after the passage ("Text: ...").
TASKS = {
    "describe": "Question: {q}",
    "explain": "Explain this sentence from the text to a child: {input}",
    "imagine": "Question: {q}",
    "rewrite": "Say the text again in one or two short sentences.",
    "compare": "Question: {q} Say one thing about each.",
}

_PRAISE = re.compile(r"^\W*(what a|this is a|that's a|that is a|i love|i like|wow|great|thank you)\b", re.I)
# Lists, lesson headings and the request's own words are not an answer to a child.
_NOT_ANSWER = re.compile(r"^\s*(\d+[.)]|[-*])\s|\b(topic \d+|section \d+|question:|text:|title:)|teacher talking|"
                         r"young child|short sentences|easy words|facts from the text|the text (says|is about|talks)",
                         re.I)
_STOP = frozenset("that this with they them their there then than from have what when where which will would "
                  "about also just like very some more most many much into your were been being does each "
                  "other only such well make made because".split())
MAX_REPETITION = 0.15               # share of an answer's word 3-grams it has said before
MIN_OVERLAP = {"imagine": 0.35}     # default 0.5: share of an answer's content words the text has
_LABEL = re.compile(r"^\s*((the )?answer( to (the|this|your) question)?( is)?|a|response)\s*:\s*", re.I)
_TITLE_PREFIX = re.compile(r"^(\d+\s*:|lesson title|lesson|story title|story time|story|title|topic|chapter \d+|unit \d+)\s*\d*\s*:\s*", re.I)
# "Learning About Crocodiles" is about crocodiles
_ABOUT = re.compile(r"^(let's learn about|learning about|learn about|all about|understanding|introduction to|"
                    r"an introduction to|meet|the story of|a story about|the importance of)\s+", re.I)
# Section names that say where in a lesson one is, not what it is about
_GENERIC = re.compile(r"\b(examples?|ideas?|list|practice|questions?|summary|review|activit(y|ies)|exercises?|"
                      r"key|terms|words?|glossary|introduction|conclusion|start|beginning|end|ending|simple|fun|"
                      r"section|part|lesson|what you need to know|thinking|discussion|goal)\b", re.I)
_HEADING = re.compile(r"^\s*(#+\s*)?(section|chapter|part|lesson)\s*\d*\s*:?\s*(.*)$", re.I)
_SENTENCE_END = re.compile(r"[.!?](?:[\"')\]]*)(?=\s|$)")


@dataclass(frozen=True)
class Topic:
    """A subject and the passage that says what it is, from one train document."""
    doc: str        # FILE:LINE of the document
    genre: str
    subject: str
    passage: str


@dataclass(frozen=True)
class Request:
    """One planned row: its question (instruction + input) and what the LLM is shown."""
    kind: str
    instruction: str
    input: str
    context: str    # the passage(s) the answer must be grounded in
    doc: str

    def messages(self) -> list[dict]:
        task = TASKS[self.kind].format(q=self.instruction, input=self.input)
        return [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Text: {self.context}\n\n{task}"}]


# ------------------------------------------------------------------------------------------- topics

def _clip_words(text: str, n: int) -> str:
    """The text's first sentences that fit in n words (at least one sentence, cut at n words)."""
    words = text.split()
    if len(words) <= n:
        return " ".join(words)
    clipped = " ".join(words[:n])
    ends = [m.end() for m in _SENTENCE_END.finditer(clipped)]
    return clipped[:ends[-1]] if ends and ends[-1] > len(clipped) // 3 else clipped


def _subject(line: str) -> str:
    """What a title or heading is about, or "" when it names no subject (a question, a sentence, a
    lesson's "Real Examples")."""
    subject = _TITLE_PREFIX.sub("", line.strip().strip("#").strip()).strip(" :.")
    subject = _ABOUT.sub("", subject)
    if not 1 <= len(subject.split()) <= 7 or subject.endswith("?") or _SENTENCE_END.search(subject):
        return ""
    if re.match(r"(?i)(how|what|why|when|where|who|which|is|are|can|do|does)\b", subject):
        return ""
    return "" if _GENERIC.search(subject) and len(subject.split()) <= 3 else subject


def topics_of(genre: str, text: str, doc: str, max_words: int = 60) -> list[Topic]:
    """A wiki article: its title and its first paragraph(s). A textbook lesson: its title with its
    first section, and each further section's heading with that section. Passages under 20 words
    say too little to ask about."""
    text = text.replace("\\n", "\n")  # some wiki rows carry a literal backslash-n after the title
    lines = [l.strip() for l in text.split("\n") if l.strip()]
    if len(lines) < 2:
        return []
    out = []

    def add(subject: str, body: list[str]):
        passage = _clip_words(" ".join(body), max_words)
        if subject and len(passage.split()) >= 20:
            out.append(Topic(doc, genre, subject, passage))

    if genre == "wiki":
        add(_subject(lines[0]), lines[1:])
        return out
    title, body, subject = _subject(lines[0]), [], None
    for line in lines[1:]:
        heading = _HEADING.match(line)
        if heading and len(line.split()) <= 10 and not _SENTENCE_END.search(line.rstrip("?")):
            if body:
                add(subject if subject is not None else title, body)
            # a lesson's first section is about the lesson's subject unless its heading names another
            subject, body = _subject(heading.group(3)) or ("" if out else title), []
        elif line.endswith(":") and len(line.split()) <= 4:
            continue  # "Introduction:" and the like
        else:
            body.append(line)
    if body:
        add(subject if subject is not None else title, body)
    return out


def read_topics(root: str | Path, genres: tuple[str, ...] = GENRES) -> list[Topic]:
    topics = []
    for doc in iter_documents(root, "leaner", "train", genres):
        topics += topics_of(doc.genre, doc.text, f"{Path(doc.path).name}:{doc.line}")
    return topics


# ------------------------------------------------------------------------------------------- the plan

def _sentence_to_explain(passage: str, rng: random.Random) -> str:
    from simplify.chunk import split_sentences
    candidates = [s.strip() for s in split_sentences(passage)[1:] if 8 <= len(s.split()) <= 30]
    return rng.choice(candidates) if candidates else ""


def plan(topics: list[Topic], seed: int = 0) -> list[Request]:
    """Every row that could be asked, in a seeded order that mixes kinds and documents: each topic in
    turn gets every kind, starting from the next one of a cycle (compare pairs it with another topic of its genre)."""
    rng = random.Random(f"instruct_make:{seed}")
    order = list(range(len(topics)))
    rng.shuffle(order)
    by_genre: dict[str, list[Topic]] = {}
    for t in topics:
        by_genre.setdefault(t.genre, []).append(t)
    requests = []
    for n, i in enumerate(order):
        t = topics[i]
        for kind in (KINDS[(n + k) % len(KINDS)] for k in range(len(KINDS))):
            template = rng.choice(QUESTIONS[kind])
            if kind in ("describe", "imagine"):
                requests.append(Request(kind, template.format(s=t.subject), "", t.passage, t.doc))
            elif kind == "explain":
                sentence = _sentence_to_explain(t.passage, rng)
                if sentence:
                    requests.append(Request(kind, template, sentence, t.passage, t.doc))
            elif kind == "rewrite":
                passage = t.passage
                requests.append(Request(kind, template, passage, passage, t.doc))
            elif t.genre == "wiki":  # two textbook lessons rarely have anything to compare
                other = rng.choice(by_genre[t.genre])
                if other.subject.lower() != t.subject.lower():
                    a, b = _clip_words(t.passage, 40), _clip_words(other.passage, 40)
                    requests.append(Request(kind, template.format(a=t.subject, b=other.subject), "",
                                            f"{t.subject}: {a}\n\n{other.subject}: {b}", f"{t.doc}+{other.doc}"))
    return requests


# ------------------------------------------------------------------------------------------- checks

def _finish(text: str) -> str:
    """The answer without a label and without an unfinished last sentence (max_tokens cut it off)."""
    text = _LABEL.sub("", " ".join(text.split()))
    if text and text[-1] not in ".!?\"')":
        ends = [m.end() for m in _SENTENCE_END.finditer(text)]
        text = text[:ends[-1]] if ends else text
    return text.strip()


def check_answer(request: Request, content: str | None, vocab, max_oov_share: float) -> str:
    """The accepted answer text, or Rejected(reason)."""
    from simplify.validate import Limits, check, parse
    text = _finish(parse("wiki", content, {"text": request.context})["text"])
    if not text:
        raise Rejected("empty", "nothing left after the unfinished sentence was cut")
    if _PRAISE.match(text):
        raise Rejected("praise", text[:60])
    words = text.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        raise Rejected("length", f"{len(words)} words (allowed {MIN_WORDS}-{MAX_WORDS})")
    asked = set(normalise(f"{request.instruction} {request.input}").split())
    said = normalise(text).split()
    if request.kind != "rewrite" and sum(w in asked for w in said) >= 0.8 * len(said):
        raise Rejected("restates_question", text[:60])
    if _NOT_ANSWER.search(text):
        raise Rejected("format", f"a list, heading or the request's words: {text[:60]!r}")
    content = [vocab.lemma(w) for w in re.findall(r"[A-Za-z']+", text) if len(w) >= 4 and w.lower() not in _STOP]
    repetition = text_measures(text)["repetition"]
    if repetition > MAX_REPETITION:
        raise Rejected("repetition", f"{repetition:.0%} of its word 3-grams said before in it")
    known = {vocab.lemma(w) for w in re.findall(r"[A-Za-z']+", f"{request.context} {request.instruction}")}
    overlap = sum(w in known for w in content) / max(1, len(content))
    if overlap < MIN_OVERLAP.get(request.kind, 0.5):
        raise Rejected("off_text", f"{overlap:.0%} of its content words are in the text")
    source = request.input if request.kind == "rewrite" else request.context
    limits = Limits(min_ratio=0.0, max_ratio=0.9 if request.kind == "rewrite" else 100.0,
                    max_oov_share=max_oov_share)
    check("wiki", {"text": source}, {"text": text}, vocab, limits)
    new = sorted({w for w in vocab.oov_words(text) if vocab.lemma(w) not in known})
    if new:
        raise Rejected("ungrounded", f"not in the text: {', '.join(new[:6])}")
    return text


# ------------------------------------------------------------------------------------------- the run

@dataclass
class MakeConfig:
    data_root: str = "/work/shared/data/tinyhelen"
    out: str = "out/instruct/generated.jsonl"
    target: int = setting(3000, min=1)          # stop once this many rows are accepted
    genres: str = "wiki,textbook"
    seed: int = 0
    cache_dir: str = ""                         # default: OUT's folder/make_cache
    base_url: str = ""                          # an OpenAI-compatible endpoint; "" starts the embedded server
    model: str = ""                             # the endpoint's model name
    engine: str = ""                            # instead of a server: a run this engine opens (smollm2-135m)
    threads: int = setting(2, min=1)            # llama.cpp's threads, or torch's with --engine
    batch_size: int = setting(32, min=1)        # rows asked at once (in flight over HTTP, or one engine batch)
    concurrency: int = setting(1, min=1)        # HTTP requests in flight (a hosted endpoint takes several)
    attempts: int = setting(2, min=1, max=5)    # answers asked per row before it is rejected
    max_tokens: int = setting(72, min=16)
    temperature: float = setting(0.3, min=0.0, max=2.0)
    progress: bool = True


def corpus_oov_share(root: str | Path, genres: tuple[str, ...], vocab) -> float:
    """The share of words outside the core vocabulary over the leaner train text of these genres."""
    from simplify.clean import WORD
    words = oov = 0
    for doc in iter_documents(root, "leaner", "train", genres):
        found = WORD.findall(doc.text)
        words += len(found)
        oov += sum(not vocab.is_core(w) for w in found)
    return oov / max(1, words)


class HttpBackend:
    """Answers from an OpenAI-compatible endpoint (tinyhelen/llm's ChatClient: retries, backoff)."""

    def __init__(self, client, concurrency: int = 1):
        from concurrent.futures import ThreadPoolExecutor
        self.client, self.pool = client, ThreadPoolExecutor(max_workers=concurrency)

    def complete_many(self, message_lists: list[list[dict]], settings: dict, on_answer) -> None:
        """on_answer(i, answer) as each answer arrives, so that a run killed mid-batch keeps them."""
        from concurrent.futures import as_completed
        futures = {self.pool.submit(self.client.complete, m, **settings): i for i, m in enumerate(message_lists)}
        for future in as_completed(futures):
            on_answer(futures[future], future.result())

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class EngineBackend:
    """Answers from a model this engine runs in-process (an imported SmolLM2: tinyhelen/pretrained.py),
    a batch of prompts at a time, left-padded (model_common.generate). On 2 CPU cores it answers 1.7x
    as fast as llama.cpp's server answering one request at a time (bench/bench_instruct_make.py:
    0.455 against 0.792 s per answer, 64 requests of the plan, batches of 32)."""

    def __init__(self, spec: str, threads: int, bf16: bool = True):
        import torch
        self.bf16 = bf16  # bf16 autocast: faster on CPUs that have it; fp32 when exactness matters
        from tinyhelen.runs import load_run
        torch.set_num_threads(threads)
        self.model, self.tokenizer, _ = load_run(spec, "cpu")
        self.model.eval()
        if not getattr(self.tokenizer, "chat_template", ""):
            raise ConfigError(f"--engine={spec}: the run's tokenizer has no chat template (use a chat model "
                              f"such as smollm2-135m)")

    def complete_many(self, message_lists: list[list[dict]], settings: dict, on_answer) -> None:
        import torch
        from model_common import pad_left
        tok = self.tokenizer
        prompts = [tok.encode_chat(m) for m in message_lists]
        idx, left_pad = pad_left(prompts, tok.eot_id, "cpu")
        generator = torch.Generator().manual_seed(int(settings.get("seed", 0)))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model.generate(idx, settings["max_tokens"], temperature=settings["temperature"],
                                      eot_id=tok.stop_ids, generator=generator, left_pad=left_pad)
        for i, row in enumerate(out[:, idx.shape[1]:].tolist()):
            ends = [k for k, t in enumerate(row) if t in tok.stop_ids]
            on_answer(i, tok.decode(row[:ends[0]] if ends else row))

    def close(self) -> None:
        pass


def _settings(cfg: MakeConfig, attempt: int) -> dict:
    # asking a model the same thing twice gives the same wrong answer: a new seed, a higher temperature
    return {"temperature": cfg.temperature if attempt == 0 else max(0.7, cfg.temperature),
            "max_tokens": cfg.max_tokens, "seed": attempt}


def ask(backend, cache, model: str, requests: list[Request], settings: dict, batch_size: int) -> list[str]:
    """Each request's answer under settings: from the cache, else from the backend, batch_size at a
    time, prompts of similar length together (a batch is as long as its longest prompt), each answer
    stored as soon as it comes back."""
    from tinyhelen.llm import cache_key
    keys = [cache_key(version=PROMPT_VERSION, model=model, messages=r.messages(), settings=settings)
            for r in requests]
    answers = [(cache.get(k) or {}).get("answer") for k in keys]
    missing = [i for i, a in enumerate(answers) if a is None]
    missing.sort(key=lambda i: len(json.dumps(requests[i].messages())))
    for first in range(0, len(missing), batch_size):
        chunk = missing[first:first + batch_size]
        last = [time.perf_counter()]

        def store(j: int, answer: str) -> None:
            # the seconds since the previous answer came back: they add up to the batch's wall time
            now, i = time.perf_counter(), chunk[j]
            cache.put(keys[i], {"answer": answer, "model": model, "seconds": round(now - last[0], 3)})
            last[0] = now
            answers[i] = answer
        backend.complete_many([requests[i].messages() for i in chunk], settings, store)
    return answers


def answer_rows(backend, cache, model: str, requests: list[Request], cfg: MakeConfig, vocab, max_oov: float,
                forbidden: Forbidden) -> list[dict]:
    """Per request, {"row": accepted row} or {"reason", "detail", "answer"} after up to cfg.attempts
    answers (each attempt asks the still-rejected rows together)."""
    results: list[dict] = [{} for _ in requests]
    pending = list(range(len(requests)))
    for attempt in range(cfg.attempts):
        if not pending:
            break
        answers = ask(backend, cache, model, [requests[i] for i in pending], _settings(cfg, attempt),
                      cfg.batch_size)
        still = []
        for i, answer in zip(pending, answers):
            request = requests[i]
            try:
                text = check_answer(request, answer, vocab, max_oov)
                row = {"instruction": request.instruction, "input": request.input, "output": text,
                       "source": f"generated:{request.kind}",
                       "hash": row_hash(request.instruction, request.input, text), "grounded_in": request.doc}
                where = leak(row, forbidden)
                if where:
                    raise Rejected("leak", where)
                results[i] = {"row": row, "attempt": attempt + 1}
            except Rejected as e:
                results[i] = {"reason": e.reason, "detail": e.detail, "answer": answer}
                still.append(i)
        pending = still
    return results


def _paths(out: str) -> tuple[Path, Path, Path]:
    out = Path(out)
    stem = out.name[:-len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out, out.with_name(f"{stem}.rejects.jsonl"), out.with_name(f"{stem}.report.json")


def make(cfg: MakeConfig, backend, model: str) -> dict:
    """Work the plan through the backend until cfg.target rows are accepted; write OUT, rejects, report."""
    from simplify.clean import WORD
    from simplify.vocab import core_vocab
    from tinyhelen.llm import AnswerCache
    genres = tuple(g for g in cfg.genres.split(",") if g)
    unknown = [g for g in genres if g not in GENRES]
    if unknown or not genres:
        raise ConfigError(f"genres must be a comma list of {', '.join(GENRES)} (got {cfg.genres!r})")
    started = time.perf_counter()
    vocab = core_vocab()
    max_oov = corpus_oov_share(cfg.data_root, genres, vocab)
    forbidden = forbidden_texts(cfg.data_root)
    planned = plan(read_topics(cfg.data_root, genres), cfg.seed)
    requests = [r for r in planned if askable(r, vocab, max_oov)]
    out_path, rejects_path, report_path = _paths(cfg.out)
    cache = AnswerCache(cfg.cache_dir or out_path.parent / "make_cache")
    accepted, reasons, by_kind, on_attempt = [], Counter(), Counter(), Counter()
    seen: set[str] = set()
    asked = 0
    bar = tqdm(total=cfg.target, desc="accepted rows", unit="row", disable=not cfg.progress, file=sys.stderr)
    with atomic_jsonl(rejects_path) as rejects:
        window = 4 * cfg.batch_size  # asked together, so that batches can group prompts by length
        for start in range(0, len(requests), window):
            if len(accepted) >= cfg.target:
                break
            batch = requests[start:start + window]
            # Duplicates and the target are decided here, in plan order, so the output does not depend
            # on the batch size or on which answer came back first.
            for request, result in zip(batch, answer_rows(backend, cache, model, batch, cfg, vocab, max_oov,
                                                          forbidden)):
                if len(accepted) >= cfg.target:
                    break
                asked += 1
                by_kind[(request.kind, "asked")] += 1
                if "row" in result and normalise(result["row"]["output"]) in seen:
                    result = {"reason": "duplicate", "detail": result["row"]["output"][:60],
                              "answer": result["row"]["output"]}
                if "row" in result:
                    accepted.append(result["row"])
                    on_attempt[result["attempt"]] += 1
                    seen.add(normalise(result["row"]["output"]))
                    by_kind[(request.kind, "accepted")] += 1
                    bar.update(1)
                else:
                    reasons[result["reason"]] += 1
                    rejects.write({"kind": request.kind, "instruction": request.instruction,
                                   "input": request.input, "grounded_in": request.doc, **result})
            bar.set_postfix(asked=asked, cached=cache.hits)
    bar.close()
    with atomic_jsonl(out_path) as f:
        for row in accepted:
            f.write(row)
    answer_words = [w for r in accepted for w in WORD.findall(r["output"])]
    report = {
        "rows_accepted": len(accepted), "rows_asked": asked, "target": cfg.target,
        "acceptance_rate": round(len(accepted) / max(1, asked), 4), "plan_rows": len(planned),
        "plan_rows_not_asked_hard_words": len(planned) - len(requests),
        "accepted_on_attempt": {str(k): on_attempt[k] for k in sorted(on_attempt)},
        "rejected_by_reason": dict(reasons.most_common()),
        "by_kind": {k: {"asked": by_kind[(k, "asked")], "accepted": by_kind[(k, "accepted")]} for k in KINDS},
        "oov_share_limit": round(max_oov, 4),
        "oov_share_accepted": round(sum(not vocab.is_core(w) for w in answer_words) / max(1, len(answer_words)), 4),
        "mean_answer_words": round(len(answer_words) / max(1, len(accepted)), 1),
        "answers_from_cache": cache.hits, "answers_asked": cache.misses,
        "wall_seconds_this_run": round(time.perf_counter() - started, 1),
        "model": model, "seed": cfg.seed, "genres": list(genres), "attempts": cfg.attempts,
        "max_tokens": cfg.max_tokens, "temperature": cfg.temperature,
    }
    atomic_write_json(report_path, report)
    if len(accepted) < cfg.target:
        print(f"warning: the plan ran out at {len(accepted)} accepted rows (target {cfg.target})", file=sys.stderr)
    return report


def askable(request: Request, vocab, max_oov: float) -> bool:
    """Whether a row can be answered within the vocabulary limit at all: a question with a hard word
    ("Tell me about Grape Juice Making.": grape and juice are outside the core) gets answers that
    repeat it, and a passage with over HARD_TEXT times the corpus's share of hard words gets answers
    that copy them. Such rows are not asked (counted in the report)."""
    return (not vocab.oov_words(f"{request.instruction} {request.input}")
            and vocab.oov_share(request.context) <= HARD_TEXT * max_oov)


def run_make(cfg: MakeConfig) -> dict:
    from tinyhelen.llm import MODEL_ALIAS, ChatClient, LocalServer
    if not Path(cfg.data_root).is_dir():
        raise DataError(f"data_root {cfg.data_root}: no such folder (the TinyHelen data folder)")
    if cfg.engine and cfg.base_url:
        raise ConfigError("give --engine (a model run in this process) or --base_url (an endpoint), not both")
    if cfg.engine:
        report = make(cfg, EngineBackend(cfg.engine, cfg.threads), f"engine:{cfg.engine}")
    elif cfg.base_url:
        backend = HttpBackend(ChatClient(cfg.base_url, cfg.model), cfg.concurrency)
        try:
            report = make(cfg, backend, cfg.model or cfg.base_url)
        finally:
            backend.close()
    else:
        with LocalServer(n_threads=cfg.threads) as server:
            backend = HttpBackend(ChatClient(server.base_url, MODEL_ALIAS), 1)
            try:
                report = make(cfg, backend, "SmolLM2-135M-Instruct Q4_1")
            finally:
                backend.close()
    print(f"accepted {report['rows_accepted']} of {report['rows_asked']} rows asked "
          f"({report['acceptance_rate']:.0%}); rejected by reason {report['rejected_by_reason']}; "
          f"{report['wall_seconds_this_run']:.0f} s this run; rows in {cfg.out}", file=sys.stderr)
    return report
