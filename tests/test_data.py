"""Data preparation and tokenizer tests, checked against independent oracles.

Oracles: the `tokenizers` object that trained gpt-2K (ids must match ours), Python's json module on the
raw files (quirks), numpy on the written files (offsets, eot positions, counts), sha256 (determinism).
Tests that need the real release at ../shared/data/tinyhelen skip when it is absent; the rest use the
few-KB excerpts in tests/fixtures/tinyhelen_mini. Download tests run against a local HTTP server only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests
import zstandard

from data.corpus import (GENRES, SUFFIXES, DataError, available_genres, iter_documents, iter_jsonl_texts, iter_rows,
                         load_texts)
from data.download import MANIFEST, DownloadError, download_file, download_release, release_files, sha256_of
from data.prepare import PrepareConfig, load_meta, prepare, tokenizer_of
from data.tokenizer import EOT, Tokenizer, gpt2_byte_to_unicode, load_tokenizer, train_bpe
from simplify.io import iter_documents as simplify_documents
from tests.fixtures.local_http import serve_folder

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "tinyhelen"
FIXTURES = REPO / "tests" / "fixtures"
MINI = FIXTURES / "tinyhelen_mini"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real TinyHelen data not found at {REAL}")


def read_raw(path: Path) -> str:
    data = path.read_bytes()
    if path.name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().stream_reader(data).read()
    return data.decode("utf-8")


def sha256_files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# ---- tokenizer ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    """gpt-2K trained on the full leaner 10M train split, and the `tokenizers` object that trained it."""
    if not REAL.is_dir():
        pytest.skip(f"real TinyHelen data not found at {REAL}")
    return train_bpe(d.text for d in iter_documents(REAL, "leaner", "train"))


def test_gpt2k_vocabulary_layout(trained):
    tok, _ = trained
    assert (tok.vocab_size, tok.eot_id, len(tok.merges)) == (2000, 1999, 1743)
    assert [tok.token_bytes(i) for i in range(256)] == [bytes([i]) for i in range(256)]
    for i, (a, b) in enumerate(tok.merges):
        assert tok.token_bytes(256 + i) == tok.token_bytes(a) + tok.token_bytes(b)
    assert tok.decode([tok.eot_id]) == EOT
    assert tok.eot_id not in tok.encode(f"a{EOT}b") and tok.decode(tok.encode(f"a{EOT}b")) == f"a{EOT}b"


def test_byte_table_matches_tokenizers_byte_level():
    """Our bytes<->printable table is what `tokenizers` applies, for every byte UTF-8 text can contain."""
    from tokenizers import pre_tokenizers
    table = gpt2_byte_to_unicode()
    assert sorted(table.values()) == sorted(pre_tokenizers.ByteLevel.alphabet())
    points = [*range(128), *range(0x80, 0x800, 7), *range(0x800, 0x10000, 97),
              *range(0x10000, 0x110000, 4093)]
    text = "".join(chr(p) for p in points if not 0xD800 <= p < 0xE000)
    assert len(set(text.encode("utf-8"))) == 256 - 13  # all bytes but C0, C1, F5..FF (never in UTF-8)
    (mapped, _), = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)
    assert mapped == "".join(table[b] for b in text.encode("utf-8"))


def oracle_ids(tok: Tokenizer, hf, text: str) -> list[int]:
    """Our ids for the tokens the trained `tokenizers` object produces (mapped through their bytes)."""
    to_byte = {ch: b for b, ch in gpt2_byte_to_unicode().items()}
    return [tok._enc.encode_single_token(bytes(to_byte[c] for c in t)) for t in hf.encode(text).tokens]


@needs_real
def test_ids_match_the_tokenizers_oracle_on_real_text(trained):
    tok, hf = trained
    texts = []
    for corpus, split in [("leaner", "train"), ("leaner", "validation"), ("ori", "test")]:
        docs = list(iter_documents(REAL, corpus, split))
        texts += [d.text[:20_000] for d in docs[::7]]  # every genre, code and web included
    assert len(texts) > 500
    mismatched = [t[:60] for t in texts if tok.encode(t) != oracle_ids(tok, hf, t)]
    assert not mismatched
    assert tok.encode_batch(texts[:50], num_threads=2) == [tok.encode(t) for t in texts[:50]]


def random_unicode(rng: random.Random) -> str:
    pools = ["abc XYZ 123 ,.!?'s 've", " \t\n\r\x00\x0b\x0c\u00a0\u2028\u3000", "éüßøñçÆŒ",
             "\u0301\u0308\u20dd", "漢字かなカナ한국어", "😀👋🏽🇫🇷👨‍👩‍👧", "Ωπж\u05d0\u0627\u0e01"]
    parts = []
    for _ in range(rng.randrange(1, 40)):
        if rng.random() < 0.2:  # any scalar value at all, surrogates excepted (not encodable as UTF-8)
            cp = rng.randrange(0x110000)
            parts.append(chr(cp) if not 0xD800 <= cp < 0xE000 else "x")
        else:
            parts.append(rng.choice(rng.choice(pools)) * rng.choice([1, 1, 2, 5]))
    return "".join(parts)


@pytest.mark.parametrize("which", ["small", "cl100k"])
def test_round_trip_on_random_unicode(which):
    rng = random.Random(1234)
    texts = [random_unicode(rng) for _ in range(1500)] + ["", "\n", " \n \n\n", "\x00", "e\u0301", EOT]
    tok = Tokenizer.train(texts[:300], vocab_size=600) if which == "small" else Tokenizer.cl100k()
    for text, ids in zip(texts, tok.encode_batch(texts)):
        assert tok.decode(ids) == text


def test_decode_never_raises_and_replaces_bad_bytes():
    tok = Tokenizer.train(["hello world, hello there"] * 20, vocab_size=300)
    assert tok.vocab_size < 300  # the tiny text supports few merges: vocabulary shrinks, eot stays last
    assert tok.eot_id == tok.vocab_size - 1 and tok.decode(tok.encode("hello")) == "hello"
    assert tok.decode([0xE6, 0xBC]) == "\ufffd"  # a cut multi-byte character
    assert tok.decode([104, tok.vocab_size + 5, -1, 105]) == "h\ufffd\ufffdi"  # ids outside the vocabulary
    rng = np.random.default_rng(0)
    for _ in range(200):
        assert isinstance(tok.decode(rng.integers(0, tok.vocab_size, size=20)), str)


def test_save_load_and_hf_export(tmp_path):
    tok = Tokenizer.train([random_unicode(random.Random(i)) for i in range(400)], vocab_size=700)
    path = tmp_path / "tok.json"
    tok.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]  # no temp file left behind
    loaded = load_tokenizer(path)
    text = "The cat sat. 猫が座った 🐈\n\n  end"
    assert loaded.encode(text) == tok.encode(text) and loaded.merges == tok.merges
    assert tok.to_hf().encode(text).ids == tok.encode(text)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a tinyhelen tokenizer"):
        Tokenizer.load(bad)


def test_cl100k_loads_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("cl100k_base must load without network access")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    tok = load_tokenizer("cl100k_base")
    assert (tok.vocab_size, tok.eot_id) == (100277, 100257)
    assert tok.encode("hello world") == [15339, 1917] and 100257 not in tok.encode(EOT)


# ---- reading the release --------------------------------------------------------------------------

def test_mini_release_layout_and_templates():
    assert available_genres(MINI, "leaner", "train") == ["wiki", "conversation", "math"]
    docs = list(iter_documents(MINI, "leaner", "validation"))
    assert [d.genre for d in docs] == ["wiki", "wiki", "code", "code"]
    raw = json.loads(read_raw(MINI / "leaner/10M/validation/code0000.jsonl").splitlines()[1])
    want = f"### CODING INPUT:\n{raw['prompt']}\n\n### RESPONSE:\n{raw['response']}"
    assert (docs[3].genre, docs[3].text, docs[3].path, docs[3].line) == (
        "code", want, str(MINI / "leaner/10M/validation/code0000.jsonl"), 2)
    assert docs[3].fields == {"prompt": raw["prompt"], "response": raw["response"]}
    assert docs[3].meta == {k: v for k, v in raw.items() if k not in ("prompt", "response")}
    conv = list(iter_documents(MINI, "ori", "train", ["conversation"]))
    assert [d.text for d in conv] == json.loads(read_raw(MINI / "ori/10M/train/conversation0000.json.zst"))


@needs_real
@pytest.mark.parametrize("corpus,split", [("leaner", "train"), ("ori", "train"), ("ori", "validation")])
def test_real_quirks_against_independent_json_parse(corpus, split):
    folder = REAL / corpus / "10M" / split
    docs = {}
    for d in iter_documents(REAL, corpus, split):
        docs.setdefault(d.genre, []).append(d)
    assert list(docs) == [g for g in GENRES if g in docs]  # genres come in GENRES order
    for genre, ds in docs.items():
        (path,) = folder.glob(f"{genre}*")
        assert all(d.path == str(path) for d in ds)
        raw = read_raw(path)
        if path.name.endswith(".json.zst"):  # ori conversation: one JSON array of strings
            assert [d.text for d in ds] == json.loads(raw) and ds[-1].line == len(ds)
            continue
        rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
        assert len(ds) == len(rows) and [d.line for d in ds[:3]] == [1, 2, 3][:len(ds)]
        for d, row in list(zip(ds, rows))[:5] + [(ds[-1], rows[-1])]:
            if genre == "math":
                want = "### MATH INPUT:\n" + row["problem"] + "\n\n### RESPONSE:\n" + "\n".join(row["hints"])
            elif genre == "code":
                want = "### CODING INPUT:\n" + row["prompt"] + "\n\n### RESPONSE:\n" + row["response"]
            elif genre == "wiki" and corpus == "ori":  # {"<idx>": text}
                (want,) = row.values()
            else:
                want = row["text"]
            assert d.text == want


def readme_text(genre: str, row) -> str:
    """The text to train on, by the table in ../shared/data/tinyhelen/README.md."""
    if isinstance(row, str):
        return row
    if genre == "math":
        return "### MATH INPUT:\n" + row["problem"] + "\n\n### RESPONSE:\n" + "\n".join(row["hints"])
    if genre == "code":
        return "### CODING INPUT:\n" + row["prompt"] + "\n\n### RESPONSE:\n" + row["response"]
    return row["text"] if "text" in row else next(iter(row.values()))  # ori wiki: {"<idx>": text}


@needs_real
def test_the_one_reader_reads_every_shared_file():
    """Every file of the shared release, row for row against json: the pre-training splits through the
    layout reader (all rows, every corpus and split), Glue and Eval through the same row reader."""
    files = [p for p in sorted(REAL.rglob("*")) if p.is_file() and p.name.endswith(SUFFIXES)]
    assert len(files) == 60  # all but README.md, LICENSE and the statistics.txt files
    raw = {}
    for path in files:
        text = read_raw(path)
        if path.name.removesuffix(".zst").endswith(".json"):  # one array: rows are numbered by position
            raw[path] = dict(enumerate(json.loads(text), 1))
        else:
            raw[path] = {n: json.loads(line) for n, line in enumerate(text.split("\n"), 1) if line.strip()}
        assert dict(iter_rows(path)) == raw[path], path
    seen = Counter()
    for corpus in ("leaner", "ori"):
        for split in ("train", "validation", "test"):
            for d in iter_documents(REAL, corpus, split):
                path = Path(d.path)
                seen[path] += 1
                assert d.text == readme_text(d.genre, raw[path][d.line])
    assert seen == {p: len(raw[p]) for p in files if "10M" in p.parts}  # every row once
    for path in (p for p in files if "glue" in p.parts):  # simplify reads Glue rows as documents
        docs = list(simplify_documents(path))
        assert [{**d.fields, **d.meta} for d in docs] == list(raw[path].values())
        assert all(set(d.meta) == {"label", "idx"} for d in docs)


def test_error_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"expected .*nowhere.leaner.10M.train") as e:
        next(iter_documents(tmp_path / "nowhere"))
    assert "--" not in str(e.value)  # the reader names no flag: each command has its own way to say where
    with pytest.raises(DataError, match=r"nowhere.leaner.10M.train.*--data_root=PATH"):
        prepare(PrepareConfig(data_root=str(tmp_path / "nowhere"), out_dir=str(tmp_path / "out")))


def test_error_malformed_line_names_file_and_line():
    with pytest.raises(DataError, match=r"malformed\.jsonl:2: not valid JSON .*a second row"):
        list(iter_jsonl_texts(FIXTURES / "malformed.jsonl"))


def test_error_row_without_text_lists_its_fields():
    with pytest.raises(DataError, match=r"missing_text\.jsonl:2: a text row needs a text field 'text' .*'body', 'id'"):
        list(iter_jsonl_texts(FIXTURES / "missing_text.jsonl"))


def test_error_unknown_absent_and_empty_genres(tmp_path):
    with pytest.raises(DataError, match="unknown genre 'poetry'"):
        list(iter_documents(MINI, "leaner", "train", ["poetry"]))
    with pytest.raises(DataError, match=r"'book' has no file .*in this split: wiki, conversation, math"):
        list(iter_documents(MINI, "leaner", "train", ["book"]))
    root = tmp_path / "root"
    shutil.copytree(MINI, root)
    (root / "leaner/10M/train/wiki0000.jsonl").write_text("\n")
    with pytest.raises(DataError, match="'wiki' has files .* but no documents"):
        list(iter_documents(root, "leaner", "train", ["wiki"]))


def test_error_truncated_zst_is_not_silently_short(tmp_path):
    # The release's .zst files carry no size or checksum: a cut file must still be detected.
    root = tmp_path / "root"
    shutil.copytree(MINI, root)
    path = root / "ori/10M/train/wiki0000.jsonl.zst"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"wiki0000\.jsonl\.zst: the zstd data stops .* truncated"):
        list(iter_documents(root, "ori", "train", ["wiki"]))


def test_jsonl_texts_and_load_texts():
    docs = load_texts(FIXTURES / "texts.jsonl")
    assert [(d.genre, d.line) for d in docs] == [("text", 1), ("text", 2), ("text", 4)]  # line 3 is blank
    assert docs[2].text == "Tab\tand\nnewline <|endoftext|> stay ordinary text."
    assert load_texts(MINI, "leaner", "test") == list(iter_documents(MINI, "leaner", "test"))


# ---- prepare ----------------------------------------------------------------------------------------

def prepare_cfg(out_dir: Path, **kw) -> PrepareConfig:
    return PrepareConfig(**{"data_root": str(REAL), "out_dir": str(out_dir), "progress": False, **kw})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    if not REAL.is_dir():
        pytest.skip(f"real TinyHelen data not found at {REAL}")
    out = tmp_path_factory.mktemp("prepared")
    return out, prepare(prepare_cfg(out, genres="wiki,math,conversation"))


def test_prepared_files_agree_with_meta(prepared):
    out, meta = prepared
    assert meta == load_meta(out) and meta["genres"] == ["wiki", "conversation", "math"]
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_id"], meta["dtype"]) == (
        "tokenizer.json", 2000, 1999, "uint16")
    for split, counts in meta["splits"].items():
        tokens = np.fromfile(out / f"{split}.bin", dtype=np.uint16)
        docs = np.load(out / f"{split}.docs.npy")
        assert len(tokens) == counts["tokens"] and docs.shape == (counts["documents"], 3)
        assert docs[0, 0] == 0 and (docs[1:, 0] == docs[:-1, 1] + 1).all() and docs[-1, 1] + 1 == len(tokens)
        assert (tokens[docs[:, 1]] == 1999).all() and (tokens == 1999).sum() == len(docs)  # eot only at ends
        assert sum(g["tokens"] for g in counts["genres"].values()) == counts["tokens"]
        assert sum(g["documents"] for g in counts["genres"].values()) == counts["documents"]
        for i, genre in enumerate(meta["genres"]):
            mine = docs[docs[:, 2] == i]
            assert (mine[:, 1] - mine[:, 0] + 1).sum() == counts["genres"][genre]["tokens"]


def test_prepared_tokens_reencode(prepared):
    out, meta = prepared
    tok = tokenizer_of(out)
    tokens = np.fromfile(out / "validation.bin", dtype=np.uint16)
    docs = np.load(out / "validation.docs.npy")
    sources = list(iter_documents(REAL, "leaner", "validation", meta["genres"]))
    assert len(sources) == len(docs)
    for i in [0, 1, len(docs) // 2, len(docs) - 1]:
        start, end, genre = docs[i]
        assert meta["genres"][genre] == sources[i].genre
        assert tokens[start:end].tolist() == tok.encode(sources[i].text)
        assert tok.decode(tokens[start:end]) == sources[i].text


def test_prepare_is_deterministic(prepared, tmp_path):
    out, _ = prepared
    prepare(prepare_cfg(tmp_path, genres="wiki,math,conversation"))
    assert sha256_files(out) == sha256_files(tmp_path)


@needs_real
def test_full_leaner_prepare(tmp_path):
    meta = prepare(prepare_cfg(tmp_path))
    assert meta["genres"] == list(GENRES)  # web and code only in validation/test
    assert set(meta["splits"]["train"]["genres"]) == {"book", "wiki", "textbook", "conversation", "math"}
    assert set(meta["splits"]["test"]["genres"]) == set(GENRES)
    assert meta["splits"]["train"]["tokens"] > 1_500_000
    assert Tokenizer.load(tmp_path / "tokenizer.json").vocab_size == 2000


def test_prepare_missing_genres_and_cl100k(tmp_path, capsys):
    meta = prepare(PrepareConfig(data_root=str(MINI), out_dir=str(tmp_path), tokenizer="cl100k_base",
                                 progress=False))
    assert "note: no code file in leaner/10M/{train,test}" in capsys.readouterr().out
    assert (meta["tokenizer"], meta["dtype"], meta["eot_id"]) == ("cl100k_base", "uint32", 100257)
    tokens = np.fromfile(tmp_path / "train.bin", dtype=np.uint32)
    assert len(tokens) == meta["splits"]["train"]["tokens"] and tokens[-1] == 100257
    with pytest.raises(DataError, match="genre 'book' has no data in any split"):
        prepare(PrepareConfig(data_root=str(MINI), out_dir=str(tmp_path), genres="wiki,book", progress=False))
    assert load_meta(tmp_path) == meta  # input errors are found before the prepared folder is touched


def test_load_meta_detects_truncated_bin(tmp_path):
    prepare(PrepareConfig(data_root=str(MINI), out_dir=str(tmp_path), vocab_size=300, progress=False))
    with open(tmp_path / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(DataError, match=r"train\.bin is missing or does not hold"):
        load_meta(tmp_path)
    with pytest.raises(DataError, match="run python data/prepare.py --out_dir="):
        load_meta(tmp_path / "absent")


@pytest.mark.parametrize("launch", [["data/prepare.py"], ["-m", "data.prepare"]])
def test_prepare_runs_as_a_script(tmp_path, launch):
    args = [sys.executable, *launch, f"--data_root={MINI}", f"--out_dir={tmp_path}", "--vocab_size=300",
            "--progress=false", "--corpus=ori"]
    run = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "conversation" in run.stdout and load_meta(tmp_path)["corpus"] == "ori"
    bad = subprocess.run([sys.executable, *launch, f"--data_root={MINI}", "--genres=poetry",
                          f"--out_dir={tmp_path / 'bad'}"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown genre 'poetry'" in bad.stderr


# ---- download, against a local HTTP server ----------------------------------------------------------

@pytest.fixture
def server(tmp_path):
    """A local HTTP server over a temp copy of the mini release plus one 300 KB file (over 4 chunks)."""
    root = tmp_path / "served"
    shutil.copytree(MINI, root)
    (root / "blob.bin").write_bytes(np.random.default_rng(0).bytes(300_000))
    session = requests.Session()
    session.trust_env = False  # never route 127.0.0.1 through a proxy from the environment
    with serve_folder(root) as (url, httpd):
        yield url, httpd, session


def fetch(server, name, dest, **kw):
    url, httpd, session = server
    blob = httpd.root / name
    return download_file(f"{url}/{name}", dest, blob.stat().st_size, sha256_of(blob), session=session,
                         backoff=0.01, timeout=10, progress=False, **kw)


def test_download_resumes_after_a_dropped_connection(server, tmp_path):
    _, httpd, _ = server
    httpd.script["drop_after"] = 150_000
    dest = fetch(server, "blob.bin", tmp_path / "out" / "blob.bin")
    assert dest.read_bytes() == (httpd.root / "blob.bin").read_bytes()
    (first, no_range), (second, resumed) = httpd.script["log"]
    assert no_range is None and 0 < int(resumed.removeprefix("bytes=").rstrip("-")) <= 150_000
    assert not (tmp_path / "out" / "blob.bin.part").exists()


def test_download_retries_503_then_succeeds(server, tmp_path):
    _, httpd, _ = server
    httpd.script["fail_503"] = 2
    fetch(server, "blob.bin", tmp_path / "blob.bin")
    assert len(httpd.script["log"]) == 3
    assert sha256_of(tmp_path / "blob.bin") == sha256_of(httpd.root / "blob.bin")


def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    _, httpd, _ = server
    httpd.script.update(drop_after=100_000, ignore_range=True)
    fetch(server, "blob.bin", tmp_path / "blob.bin")
    assert httpd.script["log"][1][1] is not None  # it asked to resume, got the whole file, started over
    assert (tmp_path / "blob.bin").read_bytes() == (httpd.root / "blob.bin").read_bytes()


def test_download_failures_are_clear(server, tmp_path):
    url, httpd, session = server
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{url}/nope.jsonl", out / "nope.jsonl", session=session, progress=False)
    with pytest.raises(DownloadError, match="sha256 differs"):
        download_file(f"{url}/blob.bin", out / "blob.bin", sha256="0" * 64, session=session, progress=False)
    assert list(out.iterdir()) == []  # nothing that looks complete, no stale .part
    httpd.script["fail_503"] = 10
    with pytest.raises(DownloadError, match="gave up after 2 retries"):
        fetch(server, "blob.bin", out / "blob.bin", retries=2)


def served_manifest(root: Path) -> dict:
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and "10M" in p.parts]
    return {p.relative_to(root).as_posix(): (p.stat().st_size, sha256_of(p)) for p in files}


def test_download_release_mirrors_the_layout(server, tmp_path):
    url, httpd, session = server
    manifest = served_manifest(httpd.root)
    dest = download_release(tmp_path / "got", "ori", ["wiki", "conversation", "code"], manifest=manifest,
                            base_url=url, session=session, progress=False, backoff=0.01)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "ori/10M/test/code0002.jsonl.zst", "ori/10M/train/conversation0000.json.zst",
        "ori/10M/train/wiki0000.jsonl.zst"]
    got, want = iter_documents(dest, "ori", "train"), iter_documents(MINI, "ori", "train")
    assert [d.text for d in got] == [d.text for d in want]


@needs_real
def test_download_release_checks_the_real_manifest(server, tmp_path):
    url, httpd, session = server
    wanted = ["leaner/10M/validation/wiki0000.jsonl", "leaner/10M/validation/conversation0000.jsonl"]
    for rel in wanted:
        shutil.copyfile(REAL / rel, httpd.root / rel)
    assert release_files("leaner", ["wiki", "conversation"], ["validation"]) == sorted(wanted)
    dest = download_release(tmp_path / "got", "leaner", ["wiki", "conversation"], ["validation"],
                            base_url=url, session=session, progress=False)
    assert all(sha256_of(dest / rel) == MANIFEST[rel][1] for rel in wanted)


def test_prepare_downloads_when_there_is_no_local_copy(server, tmp_path, monkeypatch):
    import data.prepare
    url, httpd, session = server
    monkeypatch.setattr(data.prepare, "SHARED_DATA", tmp_path / "absent")
    monkeypatch.setattr(data.prepare, "download_release", functools.partial(
        download_release, base_url=url, manifest=served_manifest(httpd.root), session=session))
    meta = prepare(PrepareConfig(out_dir=str(tmp_path / "out"), download_dir=str(tmp_path / "dl"),
                                 genres="wiki,math", vocab_size=300, progress=False))
    assert meta["data_root"] == str(tmp_path / "dl") and meta["splits"]["train"]["documents"] == 6
    assert (tmp_path / "dl/leaner/10M/train/wiki0000.jsonl").read_bytes() == (
        MINI / "leaner/10M/train/wiki0000.jsonl").read_bytes()
