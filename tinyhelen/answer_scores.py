"""Answer measures that score each answer alone, with an imported LLM run by the engine's own Llama.

    python instruct.py score --rows=ROWS.jsonl --out=SCORES.jsonl [--model=smollm2-135m] [--batch_size=16]

ROWS.jsonl holds {"question", "answer"} rows (instruct.py generate's files are such rows); SCORES.jsonl
gets one row per input row, in the same order. No labels, no positions, nothing parsed from generated
text, so nothing can fail to parse. Per answer, under the scoring model (SmolLM2-135M-Instruct by
default; --model takes any run this engine opens: a short name, a .gguf file, a run folder):

    fluency      mean log-probability (nats per token) of the answer's tokens after an empty question:
                 the answer judged as text, whatever it was asked
    relevance    log P(answer | question) - log P(answer | empty question), per token: how much this
                 question raises the answer's probability (0: the question did not help)
    grammar, coherence, specificity
                 the paper's rubric as expected grades on a 1-5 scale: after the answer, a user turn asks
                 for one grade as one digit and the assistant's reply is begun with "Grade: ", so the next
                 token is the digit; grade = sum_k k·p(k) / sum_k p(k) over the digits k = 1..5 (the
                 renormalised probabilities; digit_mass, their unnormalised sum averaged over the three
                 grades, says how sure the model was that a digit comes at all)

The conditioning text. For a chat model (a tokenizer with a chat template) the answer is the
assistant's turn after a user turn that holds the question, as the model was tuned; P(answer) is the
same with an empty user turn, so that the template, its system prompt and the end-of-turn token are
the same in both and cancel in relevance, and only the question differs. The answer's tokens are
scored together with the end-of-turn token that closes them (a cut-off answer is less likely to end
there). A model without a chat template (this engine's own runs) gets instruct.py's format:
[eot] + task_prompt(question), the answer, then eot.

Empty answers (nothing but whitespace) are not run through the model: they score the worst,
fluency and relevance EMPTY_FLOOR (-100 nats per token: a softmax puts a real token 100 nats below
the most likely one only in a model broken beyond use, so no real answer comes near it) and every
grade 1. Answers longer than max_answer_tokens are scored on their first max_answer_tokens tokens,
without the end-of-turn token, and marked truncated; questions keep their last max_question_tokens.

Speed. Rows are sorted by length and run max batch_size at a time, left-padded (model_common.pad_left;
no real token sees the padding, every row keeps its own positions). Per batch: one forward over
question + answer that also fills a KV cache, continued by the three short grade requests (only
their tokens are computed), and one forward over the answer after the empty question. The LM head
runs only where it is read: at the answer's positions, and for the grades at the last position
(the five digit rows of the head, plus the whole row once for digit_mass). bench/bench_answer_scores.py
measures it against transformers scoring the same rows one at a time.

Shapes: B rows in a batch, T padded length, S KV-cache slots (T + the longest grade request),
D width, V vocabulary, N answer tokens in a batch, G = 5 grade digits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tinyhelen.config import ConfigError, setting
from data.corpus import DataError, get_field, iter_json_lines, task_prompt
from model_common import pad_left

EMPTY_FLOOR = -100.0          # fluency and relevance of an empty answer, nats per token
GRADES = ("grammar", "coherence", "specificity")
DIGITS = (1, 2, 3, 4, 5)      # the grade scale; a grade is an expected value in [1, 5]
MEASURES = ("fluency", "relevance") + GRADES
PASSED_THROUGH = ("hash", "id", "model", "source")  # input fields copied to the score row

# One request per grade, asked in a new user turn after the answer (the paper's rubric, one digit).
GRADE_REQUESTS = {
    "grammar": "Grade the grammar of the answer above: are its sentences correct English?",
    "coherence": "Grade the coherence of the answer above: does it make sense and stay on the question?",
    "specificity": "Grade the specificity of the answer above: does it answer this question with real "
                   "detail, not vague words?",
}
SCALE = " Reply with one digit from 1 (worst) to 5 (best)."
GRADE_PREFILL = "Grade: "     # the assistant's reply begun, so that the next token is the digit


# ------------------------------------------------------------------------------------------- prompts

@dataclass
class Prompts:
    """Token ids of every fixed piece of the scoring prompts, for one tokenizer.

    A conditional sequence is question_prompt(q) + answer + after_answer; the grade requests continue
    it; the unconditional sequence is question_prompt("") + answer."""
    tokenizer: object
    chat: bool
    pad_id: int
    answer_end: int                       # the token that closes an answer (chat: <|im_end|>)
    after_answer: list[int]               # tokens between answer_end and a grade request (chat: "\n")
    grade_requests: dict[str, list[int]]  # grade -> the tokens asking for it, up to the digit's position
    digit_ids: list[int]                  # the token of each digit of DIGITS
    _head: list[int] = field(default_factory=list)  # chat: the template up to the question
    _mid: list[int] = field(default_factory=list)   # chat: between the question and the answer

    def question_prompt(self, question: str) -> list[int]:
        if not self.chat:
            return [self.tokenizer.eot_id] + self.tokenizer.encode(task_prompt(question))
        return self._head + self.tokenizer.encode(question) + self._mid

    def answer_ids(self, answer: str, limit: int) -> tuple[list[int], bool]:
        """(the answer's tokens then answer_end, truncated): a longer answer keeps its first `limit`
        tokens and no end token."""
        ids = self.tokenizer.encode(answer)
        if len(ids) > limit:
            return ids[:limit], True
        return ids + [self.answer_end], False


Q_MARK, A_MARK, G_MARK = "\x00Q\x00", "\x00A\x00", "\x00G\x00"  # placeholders found in the rendered template


def encode_marked(tokenizer, text: str) -> list[int]:
    """Template text -> ids: its special-token markers (<|im_start|>...) as their own ids, the text
    between them encoded as usual (PretrainedTokenizer.encode_chat's rule)."""
    markers = sorted(tokenizer.special_tokens, key=len, reverse=True)  # longest first: no prefix wins
    ids = []
    for piece in re.split("(" + "|".join(map(re.escape, markers)) + ")", text) if markers else [text]:
        ids += [tokenizer.special_tokens[piece]] if piece in tokenizer.special_tokens else tokenizer.encode(piece)
    return ids


def build_prompts(tokenizer) -> Prompts:
    """The scoring prompts of a tokenizer: its chat template when it has one, else instruct.py's format.

    For a chat model the template is rendered once with placeholders for the question, the answer and
    the grade request, and cut at them, so the pieces are exactly what the template writes around
    each (its system prompt included)."""
    digit_ids = []
    for k in DIGITS:
        ids = tokenizer.encode(str(k))
        if len(ids) != 1:
            raise ValueError(f"{tokenizer.name}: the digit {k} is {len(ids)} tokens; grades need one token each")
        digit_ids += ids
    if not getattr(tokenizer, "chat_template", ""):
        eot = tokenizer.eot_id
        requests = {g: [eot] + tokenizer.encode(task_prompt(GRADE_REQUESTS[g] + SCALE) + GRADE_PREFILL)
                    for g in GRADES}
        return Prompts(tokenizer, False, eot, eot, [], requests, digit_ids)
    text = tokenizer.chat_prompt([{"role": "user", "content": Q_MARK}, {"role": "assistant", "content": A_MARK},
                                  {"role": "user", "content": G_MARK}], add_generation_prompt=True)
    if any(text.count(m) != 1 for m in (Q_MARK, A_MARK, G_MARK)):
        raise ValueError(f"{tokenizer.name}'s chat template does not write each message once as given")
    head, rest = text.split(Q_MARK)
    mid, rest = rest.split(A_MARK)
    between, tail = rest.split(G_MARK)   # between: end of the answer's turn, start of the grade's turn
    between_ids = encode_marked(tokenizer, between)
    answer_end = between_ids[0]
    if answer_end not in tokenizer.stop_ids:
        raise ValueError(f"{tokenizer.name}'s chat template does not close a turn with a stop token")
    # after_answer: what follows the end token before the next turn's first special token (SmolLM2: "\n")
    first_special = next((i for i, t in enumerate(between_ids[1:], 1) if t in tokenizer.special_tokens.values()),
                         len(between_ids))
    after, turn_open = between_ids[1:first_special], between_ids[first_special:]
    requests = {g: turn_open + encode_marked(tokenizer, GRADE_REQUESTS[g] + SCALE + tail + GRADE_PREFILL)
                for g in GRADES}
    return Prompts(tokenizer, True, tokenizer.eot_id, answer_end, after, requests, digit_ids,
                   encode_marked(tokenizer, head), encode_marked(tokenizer, mid))


# ------------------------------------------------------------------------------------------- scoring

@dataclass
class Encoded:
    """One answer's sequences."""
    conditional: list[int]   # question_prompt(q) + answer + after_answer
    unconditional: list[int]  # question_prompt("") + answer
    n_cond_prompt: int       # where the answer starts in each
    n_uncond_prompt: int
    n_answer: int            # scored tokens (the answer, and its end token unless truncated)
    truncated: bool


def encode_row(prompts: Prompts, question: str, answer: str, max_question_tokens: int,
               max_answer_tokens: int) -> Encoded:
    q_prompt = prompts.question_prompt(question)
    q_ids = prompts.tokenizer.encode(question)
    if len(q_ids) > max_question_tokens:  # a long question keeps its end, where the asking usually is
        q_prompt = prompts.question_prompt(prompts.tokenizer.decode(q_ids[-max_question_tokens:]))
    a_ids, truncated = prompts.answer_ids(answer, max_answer_tokens)
    u_prompt = prompts.question_prompt("")
    return Encoded(q_prompt + a_ids + prompts.after_answer, u_prompt + a_ids, len(q_prompt), len(u_prompt),
                   len(a_ids), truncated)


def empty_scores() -> dict:
    return {"fluency": EMPTY_FLOOR, "relevance": EMPTY_FLOOR, **{g: float(DIGITS[0]) for g in GRADES},
            "digit_mass": None, "answer_tokens": 0, "truncated": False, "empty": True}


def _answer_logprob_sums(model, h: torch.Tensor, left_pad: torch.Tensor, starts: list[int], counts: list[int],
                         seqs: list[list[int]], chunk: int = 256) -> torch.Tensor:
    """Sum of log P(token) over each row's answer tokens (float64, (B,)).

    h (B, T, D) are the hidden states of the left-padded batch; row b's answer is seqs[b][starts[b]:
    starts[b] + counts[b]], sitting at slots left_pad[b] + starts[b].., each predicted by the slot
    before it. The head runs on those N positions only, `chunk` at a time ((chunk, V) logits)."""
    rows, slots, targets = [], [], []
    for b, (start, n, seq) in enumerate(zip(starts, counts, seqs)):
        first = int(left_pad[b]) + start
        rows += [b] * n
        slots += range(first - 1, first - 1 + n)
        targets += seq[start:start + n]
    rows_t = torch.tensor(rows, device=h.device)
    picked = h[rows_t, torch.tensor(slots, device=h.device)]          # (N, D)
    targets_t = torch.tensor(targets, device=h.device)
    logp = torch.empty(len(rows), dtype=torch.float64, device=h.device)
    for i in range(0, len(rows), chunk):
        logits = model.lm_head(picked[i:i + chunk]).float()            # (chunk, V)
        logp[i:i + chunk] = logits.log_softmax(-1).gather(1, targets_t[i:i + chunk, None])[:, 0].double()
    return torch.zeros(len(seqs), dtype=torch.float64, device=h.device).index_add_(0, rows_t, logp)


def _grade_batch(model, prompts: Prompts, cache, start_pos: int, left_pad: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Each grade's expected value (B,) from the cache of the conditional sequences, and the digits'
    unnormalised probability mass averaged over the grades (B,)."""
    B = left_pad.shape[0]
    digits = model.lm_head.weight[prompts.digit_ids]                   # (G, D)
    scale = torch.tensor(DIGITS, dtype=torch.float64, device=left_pad.device)
    grades, mass = {}, torch.zeros(B, dtype=torch.float64, device=left_pad.device)
    for g in GRADES:
        request = torch.tensor(prompts.grade_requests[g], device=left_pad.device).expand(B, -1)
        # the request's tokens fill the slots after the conditional sequence; an earlier grade's
        # request written there is simply overwritten
        last = model.hidden_states(request, cache, start_pos, left_pad)[:, -1]   # (B, D)
        digit_logits = (last @ digits.T).double()                                 # (B, G)
        grades[g] = (digit_logits.softmax(-1) * scale).sum(-1)
        full = model.lm_head(last).double().logsumexp(-1)                         # (B,)
        mass += (digit_logits.logsumexp(-1) - full).exp() / len(GRADES)
    return grades, mass


@torch.inference_mode()
def score_answers(model, prompts: Prompts, rows: list[dict], batch_size: int = 16,
                  max_question_tokens: int = 256, max_answer_tokens: int = 512, progress=None) -> list[dict]:
    """One dict of scores per {"question", "answer"} row, in the rows' order (see the module docstring).

    model: a Llama of this engine (model_llama.Llama), in the precision it was loaded in."""
    from model_llama import KVCache
    if not hasattr(model, "rope_table"):
        raise ValueError("answer scores need a Llama (the left-padded KV-cache continuation is the Llama's)")
    was_training = model.training
    model.eval()
    device = model.lm_head.weight.device
    cfg = model.config
    out: list[dict | None] = [None] * len(rows)
    encoded = {}
    for i, row in enumerate(rows):
        question, answer = row["question"].strip(), row["answer"].strip()
        if not answer:
            out[i] = empty_scores()
            continue
        encoded[i] = encode_row(prompts, question, answer, max_question_tokens, max_answer_tokens)
    longest_request = max(len(r) for r in prompts.grade_requests.values())
    for i, e in encoded.items():
        if len(e.conditional) + longest_request > cfg.max_seq_len:
            raise ValueError(f"row {i + 1}: {len(e.conditional) + longest_request} tokens exceed the model's "
                             f"{cfg.max_seq_len}: lower max_answer_tokens or max_question_tokens")
    # longest first: the first batch shows at once whether memory suffices, and similar lengths share
    # a batch, so little is padding
    order = sorted(encoded, key=lambda i: -len(encoded[i].conditional))
    try:
        for start in range(0, len(order), batch_size):
            batch = [encoded[i] for i in order[start:start + batch_size]]
            counts = [e.n_answer for e in batch]
            # the question, the answer, then the grade requests in the same KV cache
            seqs = [e.conditional for e in batch]
            idx, left_pad = pad_left(seqs, prompts.pad_id, device)
            cache = KVCache(cfg.n_layer, len(batch), cfg.n_kv_head, idx.shape[1] + longest_request,
                            cfg.n_embd // cfg.n_head)
            h = model.hidden_states(idx, cache, 0, left_pad)                        # (B, T, D)
            cond = _answer_logprob_sums(model, h, left_pad, [e.n_cond_prompt for e in batch], counts, seqs)
            del h
            grades, mass = _grade_batch(model, prompts, cache, idx.shape[1], left_pad)
            del cache
            # the answer after an empty question
            seqs = [e.unconditional for e in batch]
            idx, left_pad = pad_left(seqs, prompts.pad_id, device)
            h = model.hidden_states(idx, left_pad=left_pad)
            uncond = _answer_logprob_sums(model, h, left_pad, [e.n_uncond_prompt for e in batch], counts, seqs)
            del h
            for b, i in enumerate(order[start:start + batch_size]):
                n = counts[b]
                out[i] = {"fluency": float(uncond[b]) / n, "relevance": float(cond[b] - uncond[b]) / n,
                          **{g: float(grades[g][b]) for g in GRADES}, "digit_mass": float(mass[b]),
                          "answer_tokens": n, "truncated": batch[b].truncated, "empty": False}
            if progress:
                progress(min(start + batch_size, len(order)), len(order))
    finally:
        model.train(was_training)
    return out


# ------------------------------------------------------------------------------------------- the command

def read_score_rows(path: str | Path) -> list[dict]:
    """Every {"question", "answer"} row of a JSONL file, checked: a row without either (or with one
    that is not text) stops with the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"rows file not found: {path} (expected JSON lines of {{\"question\": ..., \"answer\": ...}})")
    rows = []
    for line, row in iter_json_lines(path):
        where = f"{path}:{line}"
        question = get_field(row, "question", where, "question-and-answer row")
        answer = get_field(row, "answer", where, "question-and-answer row")
        rows.append({"question": question, "answer": answer, "line": line,
                     **{k: row[k] for k in PASSED_THROUGH if k in row}})
    if not rows:
        raise DataError(f"{path} holds no rows")
    return rows


def load_scorer(spec: str, device=None):
    """(model, Prompts) for a run this engine opens (tinyhelen/runs.load_run: short names and .gguf
    files are imported once)."""
    from tinyhelen.runs import load_run
    model, tokenizer, _ = load_run(spec, device)
    return model.eval(), build_prompts(tokenizer)


@dataclass
class ScoreConfig:
    rows: str = ""                   # JSONL of {"question", "answer"} rows (instruct.py generate writes such)
    out: str = "out/answer_scores.jsonl"
    model: str = "smollm2-135m"      # the scoring model: a short name, a .gguf file, a run folder
    batch_size: int = setting(16, min=1)
    max_question_tokens: int = setting(256, min=1)
    max_answer_tokens: int = setting(512, min=1)
    device: str = "auto"
    # bf16 runs the matmuls under autocast (norms, softmax and the sums stay fp32/fp64): about 1.8x
    # faster on a CPU with native bf16, scores within a few hundredths of fp32's (docs/results.md);
    # validate under the same dtype as the scores it vouches for; auto: bf16 only where it is native
    dtype: str = setting("fp32", choices=("auto", "fp32", "bf16"))
    threads: int = setting(0, min=0)


def run_score(cfg: ScoreConfig) -> list[dict]:
    """Scores every row of cfg.rows into cfg.out (written atomically), one row per input row, in order:
    the input's line and PASSED_THROUGH fields, then the measures."""
    import time

    from tinyhelen import machine as machine_lib
    from tinyhelen.atomic import atomic_jsonl
    if not cfg.rows:
        raise ConfigError("--rows=FILE.jsonl is required (rows of {\"question\": ..., \"answer\": ...})")
    rows = read_score_rows(cfg.rows)  # bad input stops here, before the model is loaded
    machine = machine_lib.setup(cfg.device, cfg.dtype, cfg.threads, distributed=False)
    model, prompts = load_scorer(cfg.model, machine.device)
    start = time.perf_counter()
    with machine.autocast():
        scores = score_answers(model, prompts, rows, cfg.batch_size, cfg.max_question_tokens,
                               cfg.max_answer_tokens,
                               progress=lambda done, total: print(f"scored {done}/{total}", flush=True))
    out = [{"line": r["line"], **{k: r[k] for k in PASSED_THROUGH if k in r}, **s} for r, s in zip(rows, scores)]
    with atomic_jsonl(cfg.out) as f:
        for row in out:
            f.write(row)
    print(f"wrote {len(out)} score rows to {cfg.out} ({time.perf_counter() - start:.1f}s, model {cfg.model}, "
          f"{machine.dtype_name})")
    return out
