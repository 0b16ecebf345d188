"""curriculum.py and tinyhelen/scoring.py: the patience rule, each strategy's order against a plain-Python oracle
on real documents, per-document scores against the model's own loss, exp(loss) sampling against the
exact probabilities of successive draws, and exact resume after SIGKILL mid-curriculum."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyhelen import config as config_lib
from conftest import REPO, run_script
from tinyhelen.metrics import read_metrics

TINY = ["--model.n_layer=2", "--model.n_embd=64", "--model.n_head=4", "--model.n_kv_head=2",
        "--model.ffn_hidden=176", "--model.max_seq_len=64", "--seq_len=64", "--batch_size=4",
        "--compile=false", "--dtype=fp32", "--threads=1", "--peak_flops=1e10", "--sample_tokens=0",
        "--warmup_steps=5", "--lr=3e-3", "--min_lr=3e-4"]


def parse(leaner_small, *flags):
    from curriculum import CurriculumConfig
    return config_lib.parse_args(CurriculumConfig(), [*TINY, f"--data_dir={leaner_small}", *flags])


@pytest.fixture(scope="module")
def docs(leaner_small):
    from data.documents import Documents
    return Documents.open(leaner_small, "train")


@pytest.fixture(scope="module")
def few_docs(docs):
    """300 real documents of every genre (a few long ones among them), as their own Documents table."""
    from data.documents import Documents
    pick = np.sort(np.random.default_rng(0).choice(len(docs), 300, replace=False))
    return Documents(docs.tokens, docs.starts[pick], docs.ends[pick], docs.genre_ids[pick], docs.genres, docs.eot_id)


@pytest.fixture(scope="module")
def model():
    from model_llama import Llama, LlamaConfig
    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=2000, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, ffn_hidden=176,
                             max_seq_len=64)).eval()


def oracle_order(scores, reverse=False) -> list[int]:
    """Easy first: ascending score, ties by index (descending score when reversed)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i] if reverse else scores[i], i))


# ------------------------------------------------------------------ the patience rule

# (losses, patience, threshold, reset_best, evaluations after which the subset grows)
SCRIPTS = [
    ([5.0, 4.0, 4.5, 3.9, 3.95, 3.95, 3.0, 3.0], 1, 0.0, False, [2, 4, 5, 7]),
    ([5.0, 4.0, 4.5, 3.9, 3.95, 3.95, 3.0, 3.0], 2, 0.0, False, [5]),
    ([5.0, 4.0, 4.5, 3.9, 3.95, 3.95, 3.0, 3.0], 1, 0.2, False, [2, 3, 4, 5, 7]),
    # after a growth with the best forgotten, the next evaluation always counts as an improvement
    ([5.0, 4.0, 4.5, 4.6, 4.7, 3.0, 3.5, 3.6], 1, 0.0, True, [2, 4, 6]),
    ([5.0, 4.0, 4.5, 4.6, 4.7, 3.0, 3.5, 3.6], 1, 0.0, False, [2, 3, 4, 6, 7]),
]


@pytest.mark.parametrize("losses, patience, threshold, reset, expected", SCRIPTS)
def test_growth_happens_exactly_when_the_patience_rule_says(few_docs, leaner_small, losses, patience,
                                                            threshold, reset, expected):
    from curriculum import Curriculum
    cfg = parse(leaner_small, "--strategy=random", f"--patience={patience}", f"--threshold={threshold}",
                f"--reset_best_on_growth={reset}", "--init_fraction=0.2", "--grow_fraction=0.3", "--max_steps=1000")
    cur = Curriculum(cfg, few_docs)
    cur.next_batch()
    grew, fractions = [], []
    for i, loss in enumerate(losses):
        epoch = cur.source.epoch
        metrics = {"val_loss": loss}
        cur.on_evaluation(10 * (i + 1), metrics)
        if cur.source.epoch != epoch:  # a trigger starts a new pass, also at 100%
            grew.append(i)
            fractions.append(metrics.get("grew_to"))
        n = len(cur.source.documents)
        assert list(cur.source.documents) == list(cur.order[:n])
    assert grew == expected
    # 20% -> 50% -> 80% -> 100%, then triggers at 100% only start new passes
    assert fractions == [0.5, 0.8, 1.0, None, None][:len(expected)]
    assert cur.growths == min(3, len(expected))


def test_no_growth_at_the_last_evaluation(few_docs, leaner_small):
    from curriculum import Curriculum
    cur = Curriculum(parse(leaner_small, "--strategy=random", "--max_steps=20"), few_docs)
    cur.next_batch()
    cur.on_evaluation(10, {"val_loss": 3.0})
    cur.on_evaluation(20, {"val_loss": 4.0})  # no improvement, but nothing is trained after it
    assert cur.growths == 0 and cur.source.epoch == 0


# ------------------------------------------------------------------ orders

def test_random_order_is_one_seeded_shuffle_with_nested_subsets(few_docs, leaner_small):
    from curriculum import Curriculum
    subsets = []
    cur = Curriculum(parse(leaner_small, "--strategy=random", "--seed=3", "--max_steps=1000"), few_docs)
    cur.next_batch()
    cur.on_evaluation(5, {"val_loss": 4.0})  # the first evaluation always improves on no loss at all
    for step in range(10, 60, 10):
        subsets.append(set(cur.source.documents.tolist()))
        cur.on_evaluation(step, {"val_loss": 5.0})  # never improves: grows every time
    assert sorted(cur.order.tolist()) == list(range(len(few_docs)))
    assert all(a < b for a, b in zip(subsets, subsets[1:]))  # strictly nested
    again = Curriculum(parse(leaner_small, "--strategy=random", "--seed=3"), few_docs)
    other = Curriculum(parse(leaner_small, "--strategy=random", "--seed=4"), few_docs)
    again.next_batch(), other.next_batch()
    assert list(again.order) == list(cur.order) and list(other.order) != list(cur.order)


@pytest.mark.parametrize("reverse", [False, True])
def test_sentence_length_order(few_docs, leaner_small, reverse):
    from curriculum import Curriculum
    from data.tokenizer import load_tokenizer
    from simplify.chunk import split_sentences
    tokenizer = load_tokenizer(str(leaner_small / "tokenizer.json"))
    cur = Curriculum(parse(leaner_small, "--strategy=sentence_length", f"--reverse={reverse}"), few_docs, tokenizer)
    cur.next_batch()
    scores = []
    for i in range(len(few_docs)):
        ids = [int(t) for t in few_docs.tokens[few_docs.starts[i]:few_docs.ends[i]]]
        scores.append(len(ids) / max(1, len(split_sentences(tokenizer.decode(ids)))))
    assert cur.order.tolist() == oracle_order(scores, reverse)
    n = len(cur.source.documents)
    assert cur.source.documents.tolist() == oracle_order(scores, reverse)[:n]


def loss_of_document(model, docs, i: int, max_len: int) -> float:
    """Plain oracle: the model's mean loss over [eot] + tokens + [eot], every target after the first
    eot, in consecutive pieces of at most max_len targets each read on its own."""
    seq = [docs.eot_id] + [int(t) for t in docs.tokens[docs.starts[i]:docs.ends[i]]] + [docs.eot_id]
    total, count = 0.0, 0
    for a in range(1, len(seq), max_len):
        b = min(len(seq), a + max_len)
        x, y = torch.tensor([seq[a - 1:b - 1]]), torch.tensor([seq[a:b]])
        with torch.no_grad():
            total += model(x, y)[1].item() * (b - a)
        count += b - a
    return total / count


def test_document_scores_equal_the_models_own_loss(model, docs):
    from data.documents import pad_documents
    from tinyhelen.scoring import score_documents, score_documents_plainly
    long_docs = np.flatnonzero(docs.lengths > 200)[:3]
    short = np.flatnonzero(docs.lengths < 60)[:20]
    pick = np.concatenate([short, long_docs, [0]])
    fast = score_documents(model, docs, pick, max_len=64, batch_tokens=300)
    for j, i in enumerate(pick):
        assert fast[j] == pytest.approx(loss_of_document(model, docs, i, 64), abs=2e-5), i
    for j, i in enumerate(short):  # the rows pre-training's document padding builds
        x, y = pad_documents(docs, np.array([i]), 64)
        with torch.no_grad():
            assert fast[j] == pytest.approx(model(x, y)[1].item(), abs=2e-5)
    np.testing.assert_allclose(score_documents_plainly(model, docs, pick, max_len=64), fast, atol=2e-5)


def assert_ordered(scores, reverse=False, tol=1e-5):
    """Ascending (descending) up to float noise between two ways of summing the same losses."""
    steps = np.diff(scores) * (-1 if reverse else 1)
    assert (steps >= -tol).all() and steps.max() > 0


def test_self_loss_orders_by_the_current_models_scores_and_rescores_at_growth(few_docs, leaner_small, model):
    from curriculum import Curriculum
    for reverse in (False, True):
        cur = Curriculum(parse(leaner_small, "--strategy=self_loss", f"--reverse={reverse}", "--max_steps=1000"),
                         few_docs)
        cur.model = model
        cur.next_batch()
        scores = [loss_of_document(model, few_docs, i, 64) for i in range(len(few_docs))]
        assert_ordered([scores[i] for i in cur.order], reverse)
    with torch.no_grad():  # another model: a growth reorders the whole split by its losses
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cur.on_evaluation(10, {"val_loss": 5.0})
    cur.on_evaluation(20, {"val_loss": 5.0})
    scores = [loss_of_document(model, few_docs, i, 64) for i in range(len(few_docs))]
    assert_ordered([scores[i] for i in cur.order], reverse=True)
    assert cur.source.documents.tolist() == cur.order[:len(cur.source.documents)].tolist()


def test_reference_loss_orders_by_the_given_checkpoint(few_docs, leaner_small, model, tmp_path):
    from tinyhelen import machine as machine_lib
    from curriculum import Curriculum
    torch.save({"model": model.state_dict(), "config": {"model": {"__class__": "LlamaConfig",
               **{k: getattr(model.config, k) for k in model.config.__dataclass_fields__}}}}, tmp_path / "ckpt.pt")
    cur = Curriculum(parse(leaner_small, "--strategy=reference_loss", f"--reference={tmp_path}"), few_docs)
    cur.machine = machine_lib.Machine(torch.device("cpu"), torch.float32)
    cur.next_batch()
    scores = [loss_of_document(model, few_docs, i, 64) for i in range(len(few_docs))]
    assert_ordered([scores[i] for i in cur.order])


def test_baselines(few_docs, leaner_small):
    from curriculum import Curriculum
    rep = Curriculum(parse(leaner_small, "--strategy=full_repeated"), few_docs)
    rep.next_batch()
    assert rep.source.documents.tolist() == list(range(len(few_docs))) and rep.fraction == 1.0
    rnd = Curriculum(parse(leaner_small, "--strategy=full_random"), few_docs)
    orders = []
    while len(orders) < 3:
        rnd.next_batch()
        if not orders or rnd.source.documents.tolist() != orders[-1]:
            orders.append(rnd.source.documents.tolist())
    assert all(sorted(o) == list(range(len(few_docs))) for o in orders)
    assert orders[0] != orders[1] != orders[2] and rnd.source.epoch == 2


# ------------------------------------------------------------------ multiple rounds

def successive_draw_probability(weights, draw) -> float:
    """P(the ordered draw) when each draw picks among the remaining items in proportion to weight."""
    left, p = list(range(len(weights))), 1.0
    for i in draw:
        p *= weights[i] / sum(weights[j] for j in left)
        left.remove(i)
    return p


def test_sampled_windows_follow_exp_loss():
    from scipy.stats import chisquare
    from curriculum import sample_windows
    losses = np.array([0.5, 1.0, 1.5, 2.0, 3.0])
    pairs = list(itertools.permutations(range(5), 2))
    counts = dict.fromkeys(pairs, 0)
    draws = 20000
    for seed in range(draws):
        counts[tuple(sample_windows(losses, 2, seed).tolist())] += 1
    observed = np.array([counts[p] for p in pairs])
    expected = np.array([successive_draw_probability(np.exp(losses), p) for p in pairs]) * draws
    assert chisquare(observed, expected).pvalue > 1e-3
    wrong = np.array([successive_draw_probability(losses, p) for p in pairs]) * draws  # weights = loss
    assert chisquare(observed, wrong).pvalue < 1e-6  # the test can tell the two apart
    assert sample_windows(losses, 3, 7).tolist() == sample_windows(losses, 3, 7).tolist()


def test_multi_round_trains_the_next_round_on_the_sampled_windows(docs, leaner_small, model):
    from curriculum import MultiRound, sample_windows
    from data.documents import Documents
    from tinyhelen.scoring import score_windows, window_batch
    cut = int(docs.ends[400]) + 1  # the first 401 documents, to keep the scoring short
    small = Documents(docs.tokens[:cut], docs.starts[:401], docs.ends[:401], docs.genre_ids[:401], docs.genres,
                      docs.eot_id)
    src = MultiRound(parse(leaner_small, "--strategy=multi_round", "--max_steps=10", "--rounds=2",
                           "--keep_fraction=0.25"), small)
    src.model = model
    first = [src.next_batch() for _ in range(5)]  # round 0: every window, a shuffled pass
    assert src.round == 0
    x, _ = src.next_batch()
    assert src.round == 1
    losses = score_windows(model, small.tokens, 64)
    kept = sample_windows(losses, round(0.25 * len(losses)), 1337 * 1000 + 1)
    assert sorted(src.windows.tolist()) == sorted(kept.tolist())
    pool = {tuple(window_batch(small.tokens, np.array([w]), 64)[0][0].tolist()) for w in kept}
    batches = [x] + [src.next_batch()[0] for _ in range(4)]
    assert all(tuple(row.tolist()) in pool for b in batches for row in b)
    assert sum(len(b[0]) for b in first) == 20  # round 0 gave 5 batches of 4 windows


# ------------------------------------------------------------------ the entry point and resume

def run_args(leaner_small, out, *flags):
    return ["curriculum.py", *TINY, f"--data_dir={leaner_small}", f"--out_dir={out}", "--max_steps=30",
            "--log_every=1", "--eval_every=5", "--eval_steps=2", "--ckpt_every=3", *flags]


def kill_after_growth(args, out: Path, min_rows: int) -> None:
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            metrics = out / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= min_rows:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()


KEYS = ("step", "loss", "lr", "val_loss", "fraction", "growths", "grew_to", "unique_documents", "unique_tokens",
        "round")


@pytest.mark.slow  # two runs and a resume, about a minute each on a busy 2-core machine
@pytest.mark.parametrize("strategy", ["random", "full_random"])
def test_killed_mid_curriculum_and_resumed_continues_identically(leaner_small, tmp_path, strategy):
    flags = [f"--strategy={strategy}", "--threshold=0.5", "--restart_schedule_on_growth=true"]
    run_script(*run_args(leaner_small, tmp_path / "straight", *flags))
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    grown = [r["step"] for r in straight if "grew_to" in r]
    if strategy == "random":
        assert grown, "never grew: the test would not cover a change mid-run"
    killed = tmp_path / "killed"
    kill_after_growth(run_args(leaner_small, killed, *flags), killed, (grown[0] if grown else 10) + 4)
    state = torch.load(killed / "ckpt.pt", weights_only=True)
    assert 0 < state["step"] < 30 and state["data"]["started"]
    run_script(*run_args(leaner_small, killed, *flags, "--resume"))
    resumed = read_metrics(killed / "metrics.jsonl")
    assert [[r.get(k) for k in KEYS] for r in resumed] == [[r.get(k) for k in KEYS] for r in straight]


def test_growth_rows_and_the_restarted_schedule(leaner_small, tmp_path):
    out = tmp_path / "run"
    run_script(*run_args(leaner_small, out, "--strategy=random", "--threshold=0.5",
                         "--restart_schedule_on_growth=true", "--max_steps=20"))
    rows = read_metrics(out / "metrics.jsonl")
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [5, 10, 15, 20]
    assert all(a["unique_tokens"] < b["unique_tokens"] for a, b in zip(evals, evals[1:]))
    assert all(r["unique_tokens"] <= r["tokens"] + r["step"] * 4 for r in evals)  # 65 tokens per 64-token row
    grown = [r for r in evals if "grew_to" in r]
    assert grown, "no growth in 20 steps at threshold 0.5"
    g = grown[0]["step"]
    lr = {r["step"]: r["lr"] for r in rows if "lr" in r}
    assert lr[g + 1] == pytest.approx(3e-3 / 5)  # warmup again from the growth (the row's lr is step-1's)


def test_bad_settings_exit_2_before_compute(tmp_path):
    for flag, message in [("--strategy=perplexity", "strategy must be one of random"),
                          ("--strategy=reference_loss", "needs --reference"),
                          ("--strategy=full_random --reverse", "no order to reverse"),
                          ("--init_fraction=0", "init_fraction must be in (0, 1]")]:
        bad = run_script("curriculum.py", f"--data_dir={tmp_path / 'none'}", *flag.split(), check=False)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, (flag, bad.stderr)
