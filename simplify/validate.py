"""Parsing and checking every answer before it is accepted.

A model answer is accepted only when it has the expected shape (the same ### sections, a
DIFFICULTY line for math, prose without a refusal), a length in a sane ratio to the input, few
words outside the 2,000-word core, no links, e-mail addresses or phone numbers left, and for code
the same number of code blocks with Python blocks that still compile. Every failure has a short
reason (format, refusal, repetition, length_ratio, vocabulary, contact_left, code_broken) that the pipeline
retries on and finally writes to the rejects file; nothing is dropped without one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from simplify.chunk import split_sentences
from simplify.clean import WORD, replace_contacts
from simplify.prompts import GENRE_INSTRUCTIONS, REWRITE, section_name
from simplify.vocab import CoreVocab


@dataclass(frozen=True)
class Limits:
    min_ratio: float = 0.3        # output words / input words
    max_ratio: float = 3.0        # simple text is often longer: explanations replace hard words
    max_oov_share: float = 0.25   # the leaner corpus sits near 0.12, original text near 0.28
    min_words_for_checks: int = 8  # ratios and shares of a handful of words mean nothing


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


_REFUSAL = re.compile(r"^\W*(i'?m sorry|i am sorry|sorry,|i cannot|i can't|i can not|as an ai\b|i'm unable)", re.I)
_PREAMBLE = re.compile(r"^\s*(?:(?:sure|okay|ok)[^\n]{0,40}[.!]\s*)?(?:here(?:'s| is| are)[^\n]{0,80}:|"
                       r"(?:the )?(?:rewritten|simplified|simple) (?:text|version)[^\n]{0,40}:)[ \t]*\n*", re.I)
_FENCE_ALL = re.compile(r"^```[\w-]*\n(.*?)\n?```\s*$", re.S)
_HEADING = re.compile(r"^[ \t]*###[ \t]*([A-Za-z0-9 _-]+?)[ \t]*:[ \t]*", re.M)
_CODE_BLOCK = re.compile(r"```([\w+#-]*)[^\n]*\n(.*?)```", re.S)
_INDENTED = re.compile(r"^(?: {4}|\t).*$", re.M)
_MATH = re.compile(r"difficulty\W*(\d+)", re.I)


def parse(genre: str, content: str | None, in_fields: dict[str, str]) -> dict:
    """The answer's fields, or Rejected('format' | 'refusal' | 'empty', why)."""
    content = (content or "").strip()
    if not content:
        raise Rejected("empty", "the answer has no text")
    if genre == "math":
        m = _MATH.search(content) or re.fullmatch(r"(\d+)", content)
        if not m or not 1 <= int(m.group(1)) <= 10:
            raise Rejected("format", f"expected 'DIFFICULTY: N' with N from 1 to 10, got {content[:60]!r}")
        return {"difficulty": int(m.group(1))}
    if _REFUSAL.match(content):
        raise Rejected("refusal", content[:80])
    if _echoes_prompt(content):
        raise Rejected("format", "the answer repeats the request instead of only answering it")
    if set(in_fields) == {"text"}:
        fenced = _FENCE_ALL.match(content)
        text = _PREAMBLE.sub("", fenced.group(1) if fenced else content, count=1).strip()
        if not text or _HEADING.search(text) or text[:1] in "{[" and text[-1:] in "}]":
            raise Rejected("format", f"expected plain rewritten text, got {content[:60]!r}")
        return {"text": text}
    return _parse_sections(genre, content, in_fields)


def _echoes_prompt(content: str) -> bool:
    """Small models sometimes copy the request into the answer: the closing request, or a whole
    sentence of a genre instruction. Starting like one ("This is part of an encyclopedia article
    about trees.") is a harmless opening and passes."""
    lower = " ".join(content.lower().split())
    if REWRITE.lower()[:30] in lower:
        return True
    return any(s in lower for s in _INSTRUCTION_SENTENCES)


_INSTRUCTION_SENTENCES = {s.strip().lower() + "." for text in GENRE_INSTRUCTIONS.values()
                          for s in text.split(".") if len(s.split()) >= 6}


def _repeated_sentence(before: str, after: str) -> str:
    """A sentence of five or more words that the answer says twice and the input did not: small
    models fall into loops."""
    def repeats(text: str) -> set[str]:
        seen, twice = set(), set()
        for sentence in split_sentences(text):
            key = " ".join(sentence.lower().split())
            if len(WORD.findall(sentence)) >= 5:
                (twice if key in seen else seen).add(key)
        return twice

    new = repeats(after) - repeats(before)
    return min(new) if new else ""


def _parse_sections(genre: str, content: str, in_fields: dict[str, str]) -> dict:
    found = list(_HEADING.finditer(content))
    names = [m.group(1).strip().upper() for m in found]
    expected = [section_name(genre, k) for k in in_fields]
    if names != expected:
        raise Rejected("format", f"expected sections {expected}, got {names}")
    out = {}
    for field, m, nxt in zip(in_fields, found, found[1:] + [None]):
        value = content[m.end(): nxt.start() if nxt else len(content)].strip()
        if in_fields[field].strip() and not value:
            raise Rejected("format", f"section {section_name(genre, field)} is empty")
        out[field] = value
    return out


def _prose(genre: str, fields: dict[str, str]) -> str:
    """The natural-language part of the fields: code blocks carry identifiers, not vocabulary."""
    text = "\n".join(fields.values())
    if genre != "code":
        return text
    return _INDENTED.sub(" ", _CODE_BLOCK.sub(" ", text))  # fenced or indented code


def _python_compiles(code: str) -> bool:
    try:
        compile(code, "<answer>", "exec")
        return True
    except (SyntaxError, ValueError):
        return False


def check(genre: str, in_fields: dict[str, str], out: dict, vocab: CoreVocab, limits: Limits) -> None:
    """Raise Rejected when a parsed answer breaks a rule; return None when it passes."""
    if genre == "math":
        return
    text = "\n".join(str(v) for v in out.values())
    if replace_contacts(text) != text:
        raise Rejected("contact_left", "a link, e-mail address or phone number is still there")
    if genre == "code":
        _check_code(in_fields.get("response", ""), out.get("response", ""))
    looped = _repeated_sentence("\n".join(in_fields.values()), text)
    if looped:
        raise Rejected("repetition", f"said twice: {looped[:80]!r}")
    n_in, out_prose = len(WORD.findall(_prose(genre, in_fields))), _prose(genre, out)
    n_out = len(WORD.findall(out_prose))
    if n_in >= limits.min_words_for_checks and not limits.min_ratio <= n_out / n_in <= limits.max_ratio:
        raise Rejected("length_ratio", f"{n_out} words for {n_in} (allowed ratio "
                                       f"{limits.min_ratio}-{limits.max_ratio})")
    if n_out >= limits.min_words_for_checks:
        share = vocab.oov_share(out_prose)
        if share > limits.max_oov_share:
            hard = sorted(set(vocab.oov_words(out_prose)))[:8]
            raise Rejected("vocabulary", f"{share:.2f} of words outside the core (max "
                                         f"{limits.max_oov_share}), e.g. {', '.join(hard)}")


def _check_code(before: str, after: str) -> None:
    blocks_in, blocks_out = _CODE_BLOCK.findall(before), _CODE_BLOCK.findall(after)
    if len(blocks_in) != len(blocks_out):
        raise Rejected("code_broken", f"{len(blocks_out)} code blocks for {len(blocks_in)}")
    for (lang, old), (_, new) in zip(blocks_in, blocks_out):
        if lang.lower() in ("python", "py") and _python_compiles(old) and not _python_compiles(new):
            raise Rejected("code_broken", "a Python block no longer compiles")


def validate(genre: str, in_fields: dict[str, str], content: str | None, vocab: CoreVocab,
             limits: Limits = Limits()) -> dict:
    """Parse and check one answer: its fields, or Rejected with a reason."""
    out = parse(genre, content, in_fields)
    check(genre, in_fields, out, vocab, limits)
    return out
