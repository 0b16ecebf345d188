"""The compact tokenizer (data/compact_tokenizer.py): cut from cl100k_base on real leaner text, it keeps
every kept token reachable, encodes any text losslessly, and encodes texts made of kept tokens
exactly as cl100k_base does (ids mapped). tiktoken's Rust BPE is the oracle throughout."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from data.compact_tokenizer import bpe, build_compact, count_tokens, embedding_share, merge_tree, report
from data.corpus import iter_documents
from data.tokenizer import Tokenizer, load_tokenizer

from conftest import run_script


@pytest.fixture(scope="module")
def base():
    return Tokenizer.cl100k()


@pytest.fixture(scope="module")
def texts(shared_data):
    return [d.text for d in iter_documents(shared_data, "leaner", "validation", ["wiki", "conversation"])]


@pytest.fixture(scope="module")
def counts(base, texts):
    return count_tokens(base, texts)


@pytest.fixture(scope="module")
def compact(base, counts):
    return build_compact(base, counts, 3000)


def to_base(compact: Tokenizer, ids: list[int]) -> list[int]:
    base_ids = compact.compact["base_ids"]
    return [base_ids[i] for i in ids]


def test_python_bpe_is_tiktokens(base, texts):
    """Our merge loop (used to find merge trees) against tiktoken's on real pieces that are not
    whole tokens (tiktoken shortcuts those)."""
    import regex
    ranks = base._enc._mergeable_ranks
    pieces = {p.encode() for t in texts[:300] for p in regex.findall(base._enc._pat_str, t)}
    checked = 0
    for piece in pieces:
        if piece in ranks:
            continue
        assert [ranks[p] for p in bpe(piece, ranks)[0]] == base._enc._encode_single_piece(piece), piece
        checked += 1
    assert checked > 100


def test_counts_are_the_base_encoding(base, texts, counts):
    ids = [i for t in texts[:50] for i in base.encode(t)]
    assert (count_tokens(base, texts[:50]) == np.bincount(ids, minlength=base.vocab_size)).all()
    assert counts.sum() == sum(len(base.encode(t)) for t in texts)


def test_kept_set_is_the_most_used_and_closed_under_merges(base, counts, compact):
    ranks = base._enc._mergeable_ranks
    assert compact.vocab_size == 3000
    kept = set(compact.compact["base_ids"])
    kept_bytes = {compact.token_bytes(i) for i in range(compact.vocab_size - 5)}
    assert all(bytes([b]) in kept_bytes for b in range(256))
    for t in kept_bytes:
        assert set(merge_tree(t, ranks)) <= kept_bytes, t
    # the specials are kept; the eot maps to cl100k's eot
    assert compact.compact["base_ids"][compact.eot_id] == base.eot_id
    assert {base.eot_id, 100276} <= kept
    # the ten most used tokens are in; a kept multi-byte token is used, or is on the way to one that is
    assert set(np.argsort(-counts)[:10].tolist()) <= kept
    regular = compact.compact["base_ids"][:-5]
    needed = {t for i in regular if counts[i] > 0 for t in merge_tree(base.token_bytes(i), ranks)}
    multi_byte = [i for i in regular if len(base.token_bytes(i)) > 1]
    assert all(counts[i] > 0 or base.token_bytes(i) in needed for i in multi_byte)
    # ids follow the base ranks, so BPE merge priorities are the base's
    assert regular == sorted(regular)


def test_every_kept_token_encodes_to_itself(base, compact):
    checked = 0
    for i in range(compact.vocab_size - 5):
        try:
            text = compact.token_bytes(i).decode("utf-8")
        except UnicodeDecodeError:
            continue  # a byte or a piece of a character: not a text on its own
        if base.encode(text) == [compact.compact["base_ids"][i]]:
            assert compact.encode(text) == [i], text
            checked += 1
    assert checked > 2000


def random_texts(seed: int, n: int = 200) -> list[str]:
    rng = random.Random(seed)
    out = ["", "Once upon a time 🐱🐶 said ¿qué? 中文字符 and \u200b\x00\t\r\n  end",
           "👩‍👩‍👧‍👦" * 3]
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:  # random bytes read as Latin-1 text: every byte value appears
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))).decode("latin-1"))
        elif kind == 1:  # random code points, surrogates excluded
            out.append("".join(chr(rng.choice([rng.randrange(0x20, 0x7f), rng.randrange(0x80, 0xd800),
                                               rng.randrange(0xe000, 0x110000)]))
                               for _ in range(rng.randrange(1, 30))))
        else:  # invalid UTF-8 bytes replaced, mixed with words
            junk = bytes(rng.randrange(256) for _ in range(20)).decode("utf-8", errors="replace")
            out.append(junk + " the cat")
    return out


def test_any_text_round_trips(compact, texts):
    for text in random_texts(0) + texts[:100]:
        ids = compact.encode(text)
        assert all(0 <= i < compact.eot_id for i in ids)
        assert compact.decode(ids) == text


def test_texts_of_kept_tokens_encode_as_the_base_does(base, compact, texts):
    """Every document (and every random concatenation of kept tokens) whose cl100k encoding uses only
    kept tokens, and every line and word of those documents likewise, encodes to the same tokens
    under the compact tokenizer."""
    import regex
    kept = set(compact.compact["base_ids"])
    rng = random.Random(1)
    made = []
    for _ in range(300):
        ids = rng.sample(range(compact.vocab_size - 5), 12)
        made.append(compact.decode(ids))
    lines = [line for t in texts[:300] for line in t.split("\n")]
    words = list({w for t in texts[:300] for w in regex.findall(base._enc._pat_str, t)})
    same = 0
    for text in texts + made + lines + words:
        big = base.encode(text)
        if set(big) <= kept:
            assert to_base(compact, compact.encode(text)) == big
            same += 1
    assert same > 1500


def test_without_closure_the_property_fails(base, counts, texts, monkeypatch):
    """The closure is what makes the previous test pass: cut by frequency alone, some texts of kept
    tokens encode differently (a kept token is unreachable when its intermediate tokens are gone)."""
    import data.compact_tokenizer as ct
    monkeypatch.setattr(ct, "merge_tree", lambda token, ranks: [token])
    loose = ct.build_compact(base, counts, 3000)
    kept = set(loose.compact["base_ids"])
    differ = 0
    for text in texts:
        big = base.encode(text)
        if set(big) <= kept and to_base(loose, loose.encode(text)) != big:
            differ += 1
    assert differ > 0


def test_save_and_load(compact, tmp_path):
    path = tmp_path / "compact.json"
    compact.save(path)
    again = load_tokenizer(path)
    assert json.loads(path.read_text())["kind"] == "compact"
    assert (again.vocab_size, again.eot_id, again.name) == (compact.vocab_size, compact.eot_id, compact.name)
    assert again.compact["base_ids"] == compact.compact["base_ids"]
    for text in random_texts(2, 50):
        assert again.encode(text) == compact.encode(text)


def test_too_small_is_an_error(base, counts):
    with pytest.raises(ValueError, match="at least 261"):
        build_compact(base, counts, 200)


def test_report_figures(base, texts, counts):
    half = len(texts) // 2
    r = report(base, texts[:half], texts[half:], [1000, 3000])
    small, large = r["sizes"]
    assert 0 < small["coverage"] < large["coverage"] <= 1
    assert large["tokens_per_byte"] < small["tokens_per_byte"]
    assert r["base_tokens_per_byte"] <= large["tokens_per_byte"]
    # the 14M Llama at 2,000 ids: 2 x 2000 x 336 embedding + head against 14,456,400 other parameters
    assert embedding_share(2000) == pytest.approx(1_344_000 / 15_800_400)


def test_prepare_with_a_compact_tokenizer(shared_data, tmp_path):
    from data.prepare import PrepareConfig, prepare, tokenizer_of
    out = tmp_path / "data"
    meta = prepare(PrepareConfig(data_root=str(shared_data), genres="conversation",
                                 tokenizer="compact:1000", out_dir=str(out), progress=False))
    assert meta["vocab_size"] == 1000 and meta["tokenizer_name"] == "compact-1K"
    tok = tokenizer_of(out)
    tokens = np.fromfile(out / "validation.bin", dtype=np.uint16)
    docs = np.load(out / "validation.docs.npy")
    first = [d.text for d in iter_documents(shared_data, "leaner", "validation", ["conversation"])][0]
    start, end, _ = docs[0]
    assert tok.decode(tokens[start:end].tolist()) == first and tokens[end] == tok.eot_id


def test_bad_compact_flag_exits_2(tmp_path):
    result = run_script("data/prepare.py", "--tokenizer=compact:lots", f"--out_dir={tmp_path}",
                        "--genres=math", check=False)
    assert result.returncode == 2 and "compact:N" in result.stderr
