"""Cleaning before the LLM sees anything: plain Unicode, no markup, no boilerplate, no duplicates.

Every token sent to the model costs money and every stray tag or cookie banner teaches the tiny
model noise, so cleaning happens first and deterministically. Links, e-mail addresses and phone
numbers become placeholders here, not only in the prompt: a model that ignores an instruction then
still cannot leak them. Code and math keep their text byte for byte apart from Unicode
normalisation, because markup stripping would break code. Each dropped document gets a reason.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from dataclasses import replace

from data.corpus import Document
from simplify.vocab import WORD

PLAIN_GENRES = ("web", "book", "wiki", "textbook", "conversation", "instruction", "glue")
MIN_WORDS = {"glue": 1, "instruction": 2, "conversation": 3}  # default 5

_PUNCT = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"', "\u00ab": '"',
                        "\u00bb": '"', "\u2013": "-", "\u2014": " - ", "\u2212": "-", "\u2022": "-",
                        "\u00a0": " ", "\u00ad": None, "\u200b": None, "\u200c": None,
                        "\u200d": None, "\ufeff": None})
_MOJIBAKE = re.compile("[\u00c2\u00c3][\u0080-\u00bf]|\u00e2\u20ac")
# Characters that cp1252 maps to single bytes above 0x7f: the alphabet of mojibake.
_CP1252_RUN = re.compile("[\u0080-\u00ff\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
                         "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]+")

_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"')\]]+|\b[\w-]+(?:\.[\w-]+)*\.(?:com|org|net|edu|gov|io|"
                  r"info|biz|co\.uk|uk|de|ca|au)\b(?:/[^\s<>\"')\]]*)?", re.I)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)|\d{2,4})[\s.-]\d{3,4}[\s.-]\d{3,4}(?!\w)")

_TAG_BLOCK = re.compile(r"<(script|style)\b.*?</\1\s*>", re.I | re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_WIKI_LINK = re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]")
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_EMPHASIS = re.compile(r"'''?|\*\*|__")
_HEADING = re.compile(r"^#{1,6}\s+", re.M)
_BOILERPLATE = re.compile(
    r"^\s*(?:tag archives?|category:|categories:|posted (?:by|on|in)|filed under|share this|share on|"
    r"click here|read more|continue reading|subscribe|sign up|log ?in|cookies?\b|follow us|"
    r"leave a (?:reply|comment)|related posts?|advertisement|skip to content|print this|"
    r"copyright|\(c\) \d{4}|all rights reserved)", re.I)
_ALL_RIGHTS = re.compile(r"all rights reserved", re.I)

# Function words: a share of them in running text says "English" without any language model.
_EN_STOPWORDS = set("""the of and to a in is it that was for on are as with he she they i you be at by
this had not but from or have an were which his her their we there been has will would can if what all
do so no one when out up about into than them then its who these my me our your more some could did
does just very also only other""".split())


def _fix_mojibake(text: str) -> str:
    """Undo UTF-8 text that was decoded as cp1252 ("donâ€™t" -> "don't"), run by run of such
    characters, where the bytes decode cleanly; otherwise leave the run alone rather than guess."""
    if not _MOJIBAKE.search(text):
        return text

    def fix(m: re.Match) -> str:
        try:
            return m.group().encode("cp1252").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return m.group()

    return _CP1252_RUN.sub(fix, text)


def normalize_unicode(text: str) -> str:
    """Plain text: mojibake undone, symbols (emoji, music notes, trademark signs) and control
    characters dropped, NFKC compatibility forms folded, typographic punctuation made ASCII."""
    try:  # ftfy (installed with wordfreq) knows far more mojibake than the fallback below
        import ftfy

        text = ftfy.fix_text(text, normalization="NFC")
    except ImportError:
        pass
    text = _fix_mojibake(text)
    text = text.translate(_PUNCT)
    # Symbols first: NFKC would otherwise turn a trademark sign into the letters "TM".
    text = "".join(c for c in text if unicodedata.category(c) != "So")
    text = unicodedata.normalize("NFKC", text)
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c)[0] != "C")


def replace_contacts(text: str) -> str:
    """Links, e-mail addresses and phone numbers become harmless placeholders."""
    text = _EMAIL.sub("[email]", text)  # before links: an address ends in a domain name
    text = _URL.sub("[link]", text)

    def phone(m: re.Match) -> str:
        # Runs of plain numbers separated by spaces (years, scores) are not phone numbers.
        return "[phone]" if re.search(r"[+()\-.]", m.group()) else m.group()

    return _PHONE.sub(phone, text)


def strip_markup(text: str) -> str:
    text = _COMMENT.sub(" ", _TAG_BLOCK.sub(" ", text))
    text = _TAG.sub(" ", text)
    text = html.unescape(text)
    text = _MD_IMAGE.sub(r"\1", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _WIKI_LINK.sub(r"\1", text)
    text = _TEMPLATE.sub(" ", text)
    text = _EMPHASIS.sub("", text)
    return _HEADING.sub("", text)


def drop_boilerplate(text: str) -> str:
    keep = [line for line in text.split("\n")
            if not (_BOILERPLATE.match(line) or _ALL_RIGHTS.search(line))]
    return "\n".join(keep)


def tidy_whitespace(text: str) -> str:
    text = re.sub(r"[ \t\f\v]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def clean_text(text: str, genre: str) -> str:
    if genre not in PLAIN_GENRES:  # code and math: markup is content
        return unicodedata.normalize("NFC", text).strip()
    text = normalize_unicode(text)
    text = strip_markup(text)
    text = replace_contacts(text)
    text = drop_boilerplate(text)
    return tidy_whitespace(text)


def looks_english(text: str) -> bool:
    """Latin letters and a normal share of English function words (long texts only)."""
    letters = [c for c in text if c.isalpha()]
    if letters and sum(c.isascii() for c in letters) / len(letters) < 0.8:
        return False
    words = [w.lower() for w in WORD.findall(text)]
    if len(words) < 20:
        return True
    return sum(w in _EN_STOPWORDS for w in words) / len(words) >= 0.12


def content_hash(doc: Document) -> str:
    """Hash of the text with case and spacing ignored, so trivially reformatted copies collide."""
    text = "\x1f".join(" ".join(v.lower().split()) for v in doc.fields.values())
    return hashlib.sha256(f"{doc.genre}\x1e{text}".encode()).hexdigest()


class Cleaner:
    """Cleans documents one by one and remembers content hashes to drop duplicates."""

    def __init__(self, min_words: int = 5):
        self.min_words = min_words
        self.seen: set[str] = set()

    def __call__(self, doc: Document) -> tuple[Document | None, str]:
        """(cleaned document, "") or (None, reason) with reason too_short/not_english/duplicate."""
        if doc.genre == "code":
            fields = {"prompt": clean_text(doc.fields.get("prompt", ""), "instruction")}
            if "response" in doc.fields:
                fields["response"] = clean_text(doc.fields["response"], "code")
        else:
            fields = {k: clean_text(v, doc.genre) for k, v in doc.fields.items()}
        doc = replace(doc, fields=fields)
        prose = " ".join(v for k, v in fields.items() if not (doc.genre == "code" and k == "response"))
        if len(WORD.findall(prose)) < MIN_WORDS.get(doc.genre, self.min_words):
            return None, "too_short"
        if doc.genre not in ("code", "math") and not looks_english(prose):
            return None, "not_english"
        digest = content_hash(doc)
        if digest in self.seen:
            return None, "duplicate"
        self.seen.add(digest)
        return doc, ""
