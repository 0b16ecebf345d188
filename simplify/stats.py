"""How simple is a corpus? Vocabulary, sentence length, diversity and a readability grade.

The measures, all over words (runs of letters, with an apostrophe part: "don't"):
  vocab_size           distinct words, lower-cased
  oov_share            share of word tokens whose lemma is outside the 2,000-word core (vocab.py)
  mean_sentence_words  words per sentence (nupunkt sentences; a line break ends one too)
  type_token_ratio     vocab_size / words (falls with corpus size, hence also:)
  msttr_1000           mean type-token ratio of consecutive 1,000-word segments, comparable
                       across corpora of different sizes
  unigram_entropy_bits entropy of the word distribution, in bits
  fk_grade             Flesch-Kincaid grade, 0.39 * words/sentences + 11.8 * syllables/words - 15.59
Syllables come from pyphen's hyphenation dictionary (hyphenation points + 1) because textstat's
cmudict cannot be had offline; a word pyphen does not split is counted by its vowel groups.
The leaner wiki files hold a literal backslash-n where a line break was meant; it is read as one.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable

from simplify.chunk import sentence_spans
from simplify.clean import WORD
from simplify.vocab import CoreVocab, core_vocab

MEASURES = ("docs", "words", "sentences", "vocab_size", "oov_share", "mean_sentence_words",
            "type_token_ratio", "msttr_1000", "unigram_entropy_bits", "syllables_per_word", "fk_grade")


@lru_cache(maxsize=1)
def _pyphen():
    try:
        import pyphen

        return pyphen.Pyphen(lang="en_US")
    except Exception:  # without pyphen every word is counted by vowel groups
        return None


def _vowel_groups(word: str) -> int:
    w = word.lower()
    groups = len(re.findall(r"[aeiouy]+", w))
    if w.endswith("e") and not w.endswith(("le", "ee", "ye")) and groups > 1:
        groups -= 1  # silent final e: "make", "stone"
    return max(groups, 1)


@lru_cache(maxsize=200_000)
def syllables(word: str) -> int:
    dic = _pyphen()
    if dic is not None:
        points = dic.positions(word.lower())
        if points:
            return len(points) + 1
    return _vowel_groups(word)


@dataclass
class Tally:
    """Running counts for one corpus (or one genre of it)."""
    docs: int = 0
    sentences: int = 0
    syllables: int = 0
    oov: int = 0
    counts: Counter = field(default_factory=Counter)
    segment_ttrs: list = field(default_factory=list)
    _segment: set = field(default_factory=set)
    _segment_len: int = 0

    def add(self, text: str, vocab: CoreVocab) -> None:
        text = text.replace("\\n", "\n")
        words = WORD.findall(text)
        self.docs += 1
        self.sentences += len(sentence_spans(text))
        for w in words:
            lower = w.lower()
            self.counts[lower] += 1
            self.syllables += syllables(w)
            self.oov += not vocab.is_core(w)
            self._segment.add(lower)
            self._segment_len += 1
            if self._segment_len == 1000:
                self.segment_ttrs.append(len(self._segment) / 1000)
                self._segment, self._segment_len = set(), 0

    def measures(self) -> dict:
        words = sum(self.counts.values())
        if not words:
            return {"docs": self.docs, "words": 0}
        sentences = max(self.sentences, 1)
        entropy = -sum(c / words * math.log2(c / words) for c in self.counts.values())
        out = {"docs": self.docs, "words": words, "sentences": self.sentences,
               "vocab_size": len(self.counts), "oov_share": self.oov / words,
               "mean_sentence_words": words / sentences, "type_token_ratio": len(self.counts) / words,
               "msttr_1000": (sum(self.segment_ttrs) / len(self.segment_ttrs)) if self.segment_ttrs else None,
               "unigram_entropy_bits": entropy, "syllables_per_word": self.syllables / words,
               "fk_grade": 0.39 * words / sentences + 11.8 * self.syllables / words - 15.59}
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def measure_texts(texts: Iterable[str], vocab: CoreVocab | None = None) -> dict:
    tally = Tally()
    for text in texts:
        tally.add(text, vocab or core_vocab())
    return tally.measures()


def measure_documents(docs, vocab: CoreVocab | None = None, progress=None) -> tuple[dict, dict[str, dict]]:
    """(measures of everything, {genre: measures}) over Documents' training text."""
    vocab = vocab or core_vocab()
    total, by_genre = Tally(), {}
    for doc in docs:
        text = doc.train_text()
        total.add(text, vocab)
        by_genre.setdefault(doc.genre, Tally()).add(text, vocab)
        if progress is not None:
            progress.update(1)
    return total.measures(), {g: t.measures() for g, t in sorted(by_genre.items())}


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.3f}"


def markdown_table(by_genre: dict[str, dict], compare: dict[str, dict] | None = None,
                   names: tuple[str, str] = ("a", "b")) -> str:
    """One row per genre (and measure pair when comparing)."""
    keys = [k for k in MEASURES if k != "docs"]
    if compare is None:
        rows = ["| genre | docs | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
        for genre, m in by_genre.items():
            rows.append(f"| {genre} | {_fmt(m.get('docs'))} | " + " | ".join(_fmt(m.get(k)) for k in keys) + " |")
        return "\n".join(rows)
    rows = ["| genre | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for genre in by_genre:
        a, b = by_genre[genre], compare.get(genre, {})
        rows.append(f"| {genre} | " + " | ".join(f"{_fmt(a.get(k))} → {_fmt(b.get(k))}" for k in keys) + " |")
    return "\n".join(rows) + f"\n\n(each cell: {names[0]} → {names[1]})"
