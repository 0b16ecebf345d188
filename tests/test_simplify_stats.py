"""Simplicity measures (simplify/stats.py, vocab.py) checked against independent computations."""

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from simplify.stats import measure_texts, syllables
from simplify.vocab import VOCAB_FILE, CoreVocab, core_vocab

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "simplify"


def test_core_vocabulary_file():
    data = json.loads(VOCAB_FILE.read_text())
    assert len(data["lemmas"]) == 2000 == len(set(data["lemmas"]))
    vocab = core_vocab()
    for word in ("the", "children", "went", "running", "don't", "happiest", "Zoe", "Quentin", "FR"):
        assert vocab.is_core(word), word
    for word in ("photosynthesis", "decarboxylase", "suprachiasmatic", "verifiable", "Roald"):
        assert not vocab.is_core(word), word


def test_suffix_fallback_only_reaches_core_lemmas():
    vocab = CoreVocab(["jump", "happy"], {})
    assert vocab.lemma("jumping") == "jump" and vocab.lemma("happier") == "happy"
    assert vocab.lemma("jumpers") == "jumpers" and not vocab.is_core("zebras")


def test_measures_match_a_hand_calculation():
    texts = ["The cat sat. The cat ran!", "A zebra sat."]
    m = measure_texts(texts)
    words = "the cat sat the cat ran a zebra sat".split()
    counts = Counter(words)
    n = len(words)
    try:
        from scipy.stats import entropy

        expected_entropy = entropy(list(counts.values()), base=2)
    except ImportError:  # the same sum, written out independently
        expected_entropy = -sum(c / n * math.log2(c / n) for c in counts.values())
    assert m["words"] == 9 and m["sentences"] == 3 and m["vocab_size"] == 6
    assert m["mean_sentence_words"] == 3.0
    assert m["type_token_ratio"] == round(6 / 9, 4)
    assert m["oov_share"] == round(1 / 9, 4)  # zebra is not among the 2,000 lemmas
    assert m["unigram_entropy_bits"] == pytest.approx(expected_entropy, abs=1e-4)
    # every word has one syllable except ze-bra: 10 syllables over 9 words
    assert m["fk_grade"] == pytest.approx(0.39 * 9 / 3 + 11.8 * 10 / 9 - 15.59, abs=1e-4)
    assert m["msttr_1000"] is None


def test_syllables_by_hyphenation_with_fallback():
    expected = {"cat": 1, "water": 2, "beautiful": 3, "education": 4, "table": 2, "about": 2, "make": 1,
                "stone": 1}
    assert {w: syllables(w) for w in expected} == expected


def test_msttr_over_segments():
    text = " ".join("q" + chr(97 + i % 26) for i in range(2500))  # 26 types, 2500 words
    m = measure_texts([text])
    assert m["msttr_1000"] == pytest.approx(26 / 1000)


def test_stats_cli_on_jsonl_ends_with_one_json_line(tmp_path):
    rows = tmp_path / "tiny.jsonl"
    rows.write_text("\n".join(json.dumps({"text": t}) for t in ["The cat sat. The cat ran!", "A zebra sat."]))
    out = subprocess.run([sys.executable, "-m", "simplify", "stats", f"--path={rows}", "--progress=false"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["oov_share"] == round(1 / 9, 4) and last["mean_sentence_words"] == 3.0
    assert "| web |" in out.stdout  # plain rows default to the web genre


def test_stats_cli_compares_by_genre():
    corpus = FIXTURES / "corpus"
    out = subprocess.run([sys.executable, "-m", "simplify", "stats", f"--path={corpus}", f"--compare={corpus}",
                          "--genres=wiki,glue", "--progress=false"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(last["by_genre"]) == {"wiki", "glue"}
    assert last["compare"]["oov_share"] == last["oov_share"]
    assert " → " in out.stdout


def test_cli_errors_name_the_bad_flag():
    out = subprocess.run([sys.executable, "-m", "simplify", "stats", "--pth=x"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown config key 'pth'" in out.stderr and "path" in out.stderr
    out = subprocess.run([sys.executable, "-m", "simplify", "run", "--concurrency=many"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "concurrency must be int" in out.stderr
    out = subprocess.run([sys.executable, "-m", "simplify", "stats", "--path=/no/such/dir"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "/no/such/dir: no such file or folder" in out.stderr
