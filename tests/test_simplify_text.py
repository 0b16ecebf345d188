"""Reading every layout, cleaning and chunking (simplify/io.py, clean.py, chunk.py)."""

import json
from pathlib import Path

import pytest

from simplify.chunk import BUDGETS, chunk_document, chunk_text, count_tokens, join_chunks, split_sentences
from simplify.clean import Cleaner, clean_text, looks_english, normalize_unicode, replace_contacts
from simplify.io import DataError, Document, genre_of_path, iter_documents, iter_rows

FIXTURES = Path(__file__).parent / "fixtures" / "simplify"
CORPUS = FIXTURES / "corpus"
TINYHELEN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyhelen"


def test_genre_from_file_names():
    assert genre_of_path("x/book0000.jsonl.zst") == "book"
    assert genre_of_path("conversation0001.json.zst") == "conversation"
    assert genre_of_path("mnli_validation_matched.jsonl") == "glue"
    assert genre_of_path("notes.jsonl") is None


def test_reads_every_fixture_layout():
    docs = {}
    for d in iter_documents(CORPUS):
        docs.setdefault(d.genre, d)  # the first of each genre
    assert set(docs) == {"wiki", "conversation", "code", "math", "instruction", "glue", "web"}
    wiki = docs["wiki"]
    assert wiki.meta["idx"] == int(wiki.id) and "\n" in wiki.fields["text"]  # {"<idx>": text}
    assert docs["conversation"].fields["text"].startswith('"Where')            # JSON array of strings
    assert set(docs["code"].fields) == {"prompt", "response"} and docs["code"].meta["idx"] == "42"
    assert docs["math"].meta["hints"] == ["$= 6 + 8$", "$= 14$"]               # list kept for output
    assert docs["math"].train_text().startswith("### MATH INPUT:\n")
    assert set(docs["glue"].fields) == {"sentence1", "sentence2"} and docs["glue"].meta["label"] == 0
    assert docs["instruction"].train_text().startswith("### TASK INPUT:\n")


def test_split_and_genre_filters():
    assert {d.genre for d in iter_documents(CORPUS, split="validation", genres=["wiki"])} == {"wiki"}
    with pytest.raises(DataError, match="in a 'train' folder"):
        list(iter_documents(CORPUS, split="train"))


def test_bad_rows_name_file_and_line(tmp_path):
    bad = tmp_path / "web0000.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"web0000.jsonl:2: not valid JSON"):
        list(iter_rows(bad))
    notext = tmp_path / "book0000.jsonl"
    notext.write_text('{"body": "no text field"}\n')
    with pytest.raises(DataError, match=r"book0000.jsonl:1: a book row needs a text field"):
        list(iter_documents(notext))


@pytest.mark.skipif(not TINYHELEN.is_dir(), reason="real TinyHelen data not present")
def test_reads_the_real_original_files():
    counts = {}
    for doc in iter_documents(TINYHELEN / "ori" / "10M", split="validation"):
        counts[doc.genre] = counts.get(doc.genre, 0) + 1
    assert counts["wiki"] == 65 and counts["conversation"] == 1 and counts["web"] == 180


def test_unicode_markup_boilerplate_and_contacts():
    assert normalize_unicode("don\u00e2\u20ac\u2122t \ufb01ne\u00a0caf\u00e9 \u266a") == "don't fine caf\u00e9 "
    text = clean_text("<p>Tag Archives: x</p>\n<b>Hello</b> &amp; [welcome](http://a.b/c) to "
                      "[[Paris|the city]].\nMail me: a.b@c.org, call (555) 123-4567.\n"
                      "Copyright 2020, all rights reserved.", "web")
    assert text == "Hello & welcome to the city.\nMail me: [email], call [phone]."
    assert replace_contacts("scores 1998 1999 2000 and 2015-07-26") == "scores 1998 1999 2000 and 2015-07-26"
    code = "```python\nx = '<b>'  # keep\n```"
    assert clean_text(code, "code") == code  # markup in code is content


def test_language_check():
    assert looks_english("The cat sat on the mat and it was happy with the warm sun in the garden today.")
    assert not looks_english("El gobierno anunció hoy una nueva ley sobre la educación pública que "
                             "entrará en vigor el próximo año en todas las escuelas del país.")
    assert not looks_english("Это очень простой текст на русском языке для проверки.")


def test_cleaner_drops_with_reasons():
    cleaner = Cleaner()
    results = [cleaner(d)[1] for d in iter_documents(CORPUS / "validation" / "web0001.jsonl")]
    assert results == ["", "duplicate", "not_english", "too_short"]


def test_sentences_and_chunks_respect_budget():
    text = ("Dr. Smith went to Washington on Jan. 5. He met the U.S. team there! Did they agree? "
            "Yes.\nA title line\n\nA new paragraph starts here.")
    assert split_sentences(text) == ["Dr. Smith went to Washington on Jan. 5.", "He met the U.S. team there!",
                                     "Did they agree?", "Yes.", "A title line", "A new paragraph starts here."]
    long = " ".join(f"Sentence number {i} says something rather ordinary about the weather." for i in range(200))
    chunks = chunk_text(long, 50)
    assert len(chunks) > 10 and all(count_tokens(c) <= 50 for c, _ in chunks)
    assert join_chunks([c for c, _ in chunks], [s for _, s in chunks]) == long  # nothing lost
    giant = "word " * 500  # one "sentence" over the budget is cut between words
    assert all(count_tokens(c) <= 60 for c, _ in chunk_text(giant.strip(), 60))


def test_chunk_document_per_genre():
    wiki = Document("1", "wiki", {"text": "Title\n" + "An ordinary sentence about a river. " * 80})
    chunks = chunk_document(wiki)
    assert len(chunks) > 1 and all(c.tokens() <= BUDGETS["wiki"] for c in chunks)
    assert chunks[0].sep == " " or chunks[0].sep == "\n"
    code = Document("2", "code", {"prompt": "p " * 2000, "response": "r"})
    assert len(chunk_document(code)) == 1  # structured genres are never split


def test_fixture_files_are_small_and_json():
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 100_000
    for path in (CORPUS / "validation").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            json.loads(line)


def test_zstandard_frames_and_truncation(tmp_path):
    import zstandard

    cctx = zstandard.ZstdCompressor()
    rows = [json.dumps({"text": f"row {i}"}) + "\n" for i in range(4)]
    multi = tmp_path / "web0000.jsonl.zst"  # two frames back to back, as concatenated files are
    multi.write_bytes(cctx.compress("".join(rows[:2]).encode()) + cctx.compress("".join(rows[2:]).encode()))
    assert [r["text"] for _, r in iter_rows(multi)] == ["row 0", "row 1", "row 2", "row 3"]
    data = (CORPUS / "validation" / "wiki0001.jsonl.zst").read_bytes()
    cut = tmp_path / "wiki0000.jsonl.zst"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated file"):
        list(iter_rows(cut))
