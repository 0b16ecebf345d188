"""The training loop on the real leaner data: learning, exact resume after a kill, DDP equivalence,
the sample/evaluate/export commands, and clear errors."""

from __future__ import annotations

import json
import math
import os
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


def tiny_cfg(data_dir, out_dir, *flags):
    import train
    return config_lib.parse_args(train.TrainConfig(), [f"--data_dir={data_dir}", f"--out_dir={out_dir}",
                                                       *TINY, *flags])


def losses(out_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(Path(out_dir) / "metrics.jsonl") if "loss" in r}


def test_learning_rate_schedule():
    import train
    cfg = train.TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert train.learning_rate(0, cfg) == pytest.approx(0.1)
    assert train.learning_rate(9, cfg) == pytest.approx(1.0)
    assert train.learning_rate(60, cfg) == pytest.approx(0.55)  # cosine midpoint
    assert train.learning_rate(110, cfg) == pytest.approx(0.1)
    linear = train.TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=100, decay="linear")
    assert train.learning_rate(25, linear) == pytest.approx(0.75)


def test_batches_split_across_ranks_and_resume():
    from data.tokens import TokenBatches
    tokens = np.arange(10_001, dtype=np.uint16)
    whole = TokenBatches(tokens, batch_size=4, seq_len=10, seed=3)
    halves = [TokenBatches(tokens, batch_size=2, seq_len=10, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(300):  # crosses several epochs
        x, y = whole.next_batch()
        parts = [h.next_batch() for h in halves]
        assert torch.equal(x, torch.cat([p[0] for p in parts])) and torch.equal(y, torch.cat([p[1] for p in parts]))
        assert torch.equal(x[:, 1:], y[:, :-1])
    state = whole.state_dict()
    expected = [whole.next_batch()[0] for _ in range(5)]
    again = TokenBatches(tokens, batch_size=4, seq_len=10, seed=3)
    again.load_state_dict(state)
    assert all(torch.equal(e, again.next_batch()[0]) for e in expected)


def test_training_lowers_the_loss_on_real_data(leaner_small, tmp_path):
    import train
    cfg = tiny_cfg(leaner_small, tmp_path / "run", "--max_steps=60", "--log_every=5", "--eval_every=60",
                   "--eval_steps=4", "--ckpt_every=1000")
    train.pretrain(cfg)
    curve = losses(tmp_path / "run")
    first, last = curve[5], curve[60]
    assert last < first - 1.0, curve
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert rows[-1]["val_loss"] < first
    assert (tmp_path / "run" / "loss.png").stat().st_size > 10_000
    assert (tmp_path / "run" / "ckpt.pt").is_file() and (tmp_path / "run" / "tokenizer.json").is_file()


def test_resume_after_kill_gives_identical_losses(leaner_small, tmp_path):
    common = [f"--data_dir={leaner_small}", *TINY, "--max_steps=24", "--log_every=1", "--eval_every=8",
              "--eval_steps=2", "--ckpt_every=4"]
    run_script("train.py", f"--out_dir={tmp_path / 'straight'}", *common)

    interrupted = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "train.py", f"--out_dir={interrupted}", *common], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # kill it somewhere after its second checkpoint
            metrics = interrupted / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 11:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    ckpt_step = torch.load(interrupted / "ckpt.pt", weights_only=True)["step"]
    assert 4 <= ckpt_step < 24
    run_script("train.py", f"--out_dir={interrupted}", *common, "--resume")

    straight, resumed = losses(tmp_path / "straight"), losses(interrupted)
    assert sorted(resumed) == list(range(1, 25))
    assert resumed == straight  # exactly equal floats, not approximately
    val = lambda d: [r["val_loss"] for r in read_metrics(d / "metrics.jsonl") if "val_loss" in r]  # noqa: E731
    assert val(interrupted) == val(tmp_path / "straight")


def test_two_process_torchrun_matches_one_process(leaner_small, tmp_path):
    common = [f"--data_dir={leaner_small}", *TINY, "--max_steps=3", "--log_every=1", "--eval_every=3",
              "--eval_steps=2", "--ckpt_every=3", "--warmup_steps=1"]
    run_script("train.py", f"--out_dir={tmp_path / 'one'}", *common, "--batch_size=4", "--grad_accum=2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train.py", f"--out_dir={tmp_path / 'two'}", *common, "--batch_size=4",
                             "--grad_accum=1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    one = torch.load(tmp_path / "one" / "ckpt.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "ckpt.pt", weights_only=True)
    assert two["world_size"] == 2
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, atol=2e-6, rtol=1e-5, msg=name)
    # the weights moved: the comparison is not between two untouched initialisations
    cfg = tiny_cfg(leaner_small, tmp_path / "x")
    torch.manual_seed(cfg.seed)
    from tinyhelen.checkpoint import build_model
    init = build_model(cfg.model).state_dict()
    assert any(not torch.allclose(init[k], v) for k, v in one["model"].items())
    l1 = losses(tmp_path / "one")
    l2 = losses(tmp_path / "two")
    assert l1.keys() == l2.keys() and all(math.isclose(l1[k], l2[k], rel_tol=1e-5) for k in l1)


@pytest.fixture(scope="module")
def trained_run(leaner_small, tmp_path_factory):
    import train
    out = tmp_path_factory.mktemp("trained")
    train.pretrain(tiny_cfg(leaner_small, out, "--max_steps=40", "--eval_every=40", "--eval_steps=2",
                           "--log_every=10"))
    return out


def test_sample_command(trained_run):
    result = run_script("sample.py", f"--out_dir={trained_run}", "--prompt=The cat", "--num_samples=2",
                        "--max_new_tokens=20", "--temperature=0.8", "--top_k=20", "--top_p=0.9")
    assert result.stdout.count("--- sample") == 2 and result.stdout.count("The cat") >= 2
    greedy = [run_script("sample.py", f"--out_dir={trained_run}", "--temperature=0", "--num_samples=1",
                         "--max_new_tokens=15").stdout for _ in range(2)]
    assert greedy[0] == greedy[1]


def test_evaluate_reports_consistent_numbers(trained_run, shared_data, tmp_path):
    result = run_script("evaluate.py", f"--out_dir={trained_run}", f"--data={shared_data}", "--split=validation",
                        "--genres=wiki,math", "--max_tokens_per_genre=3000")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary["genres"]) == {"wiki", "math"}
    assert summary["perplexity"] == pytest.approx(math.exp(summary["loss"]))
    assert summary["bits_per_byte"] == pytest.approx(summary["loss"] * summary["tokens"] / math.log(2)
                                                     / summary["bytes"])
    assert 0 < summary["bits_per_byte"] < 8
    # A JSONL file of {"text": ...} rows works too, and reproduces the model's own loss on that text.
    rows = tmp_path / "texts.jsonl"
    rows.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["The sun is hot.", "I like my dog."]))
    result = run_script("evaluate.py", f"--out_dir={trained_run}", f"--data={rows}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    from tinyhelen.checkpoint import load_model
    from tinyhelen.runs import load_tokenizer_from
    model, ckpt = load_model(trained_run)
    tok = load_tokenizer_from(trained_run)
    stream = [tok.eot_id]
    for t in ["The sun is hot.", "I like my dog."]:
        stream += tok.encode(t) + [tok.eot_id]
    with torch.no_grad():
        _, loss = model(torch.tensor([stream[:-1]]), torch.tensor([stream[1:]]))
    assert summary["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert summary["bytes"] == len("The sun is hot.") + len("I like my dog.") + 2


def test_end_of_run_bits_per_byte_match_evaluate(leaner_small, tmp_path):
    """--bpb_genres scores the final model on the raw held-out text: the same numbers as evaluate.py
    on the saved checkpoint (an independent path: the model is reloaded from disk)."""
    import train
    run = tmp_path / "run"
    trainer = train.pretrain(tiny_cfg(leaner_small, run, "--max_steps=12", "--eval_every=12", "--eval_steps=1",
                                      "--bpb_genres=wiki,conversation"))
    report = json.loads((run / "bits_per_byte.json").read_text())
    assert report["step"] == 12 and set(report) == {"step", "validation", "test"}
    data_root = json.loads((leaner_small / "meta.json").read_text())["data_root"]
    for split in ("validation", "test"):
        result = run_script("evaluate.py", f"--out_dir={run}", f"--data={data_root}", f"--split={split}",
                            "--genres=wiki,conversation", "--batch_size=4")
        expected = json.loads(result.stdout.strip().splitlines()[-1])
        assert report[split]["bits_per_byte"] == pytest.approx(expected["bits_per_byte"], rel=1e-5)
        assert report[split]["tokens"] == expected["tokens"] and report[split]["bytes"] == expected["bytes"]
        assert set(report[split]["genres"]) == {"wiki", "conversation"}
    # The unigram baseline beside it, recomputed here by counting in plain Python.
    from collections import Counter
    from data.corpus import load_texts
    from tinyhelen.runs import load_tokenizer_from
    tok = load_tokenizer_from(run)
    train_ids = np.fromfile(leaner_small / "train.bin", dtype=np.uint16).tolist()
    counts, vocab = Counter(train_ids), trainer.cfg.model.vocab_size
    docs = load_texts(data_root, "leaner", "test", ["wiki", "conversation"])
    ids = [i for d in docs for i in tok.encode(d.text) + [tok.eot_id]]
    bits = -sum(math.log2((counts[i] + 1) / (len(train_ids) + vocab)) for i in ids)
    n_bytes = sum(len(d.text.encode("utf-8")) + 1 for d in docs)
    assert report["test"]["unigram_bits_per_byte"] == pytest.approx(bits / n_bytes, rel=1e-6)
    rows = read_metrics(run / "metrics.jsonl")
    assert 0 < rows[-1]["train_s"] < 600 and rows[-1]["tokens"] == 12 * 4 * 64


def test_bad_bpb_genres_stop_before_training(leaner_small, tmp_path):
    bad = run_script("train.py", f"--data_dir={leaner_small}", f"--out_dir={tmp_path / 'a'}", *TINY,
                     "--bpb_genres=wiki,poetry", check=False)
    assert bad.returncode == 2 and "poetry" in bad.stderr and "conversation" in bad.stderr
    moved = tmp_path / "moved"  # prepared data whose raw corpus is gone: said before any step runs
    moved.mkdir()
    for f in leaner_small.iterdir():
        (moved / f.name).symlink_to(f)
    (moved / "meta.json").unlink()
    meta = json.loads((leaner_small / "meta.json").read_text())
    (moved / "meta.json").write_text(json.dumps({**meta, "data_root": str(tmp_path / "nowhere")}))
    gone = run_script("train.py", f"--data_dir={moved}", f"--out_dir={tmp_path / 'b'}", *TINY,
                      "--bpb_genres=wiki", check=False)
    assert gone.returncode == 2 and "--bpb_genres" in gone.stderr and "nowhere" in gone.stderr
    assert not (tmp_path / "b" / "metrics.jsonl").exists()


def test_export_loads_in_transformers(trained_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    run_script("export.py", f"--out_dir={trained_run}", f"--hf_dir={tmp_path / 'hf'}")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    from tinyhelen.checkpoint import load_model
    model, _ = load_model(trained_run)
    idx = torch.randint(0, 2000, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ clear errors for bad input

def test_unknown_key_and_wrong_type_are_errors():
    bad = run_script("train.py", "configs/demo_llama.py", "--learning_rate=1", check=False)
    assert bad.returncode == 2 and "unknown config key 'learning_rate'" in bad.stderr and "lr" in bad.stderr
    bad = run_script("train.py", "configs/demo_llama.py", "--max_steps=lots", check=False)
    assert bad.returncode == 2 and "max_steps must be int" in bad.stderr


def test_missing_data_folder_is_explained(tmp_path):
    bad = run_script("train.py", f"--data_dir={tmp_path / 'nothing'}", f"--out_dir={tmp_path / 'o'}", *TINY,
                     check=False)
    assert bad.returncode == 2 and "data/prepare.py" in bad.stderr and "Traceback" not in bad.stderr


def test_truncated_checkpoint_is_explained(trained_run, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    data = (trained_run / "ckpt.pt").read_bytes()
    (broken / "ckpt.pt").write_bytes(data[: len(data) // 2])
    for cmd in (["sample.py", f"--out_dir={broken}"], ["export.py", f"--out_dir={broken}"]):
        bad = run_script(*cmd, check=False)
        assert bad.returncode == 2 and "truncated or corrupt" in bad.stderr and "Traceback" not in bad.stderr
    data_dir = torch.load(trained_run / "ckpt.pt", weights_only=True)["config"]["data_dir"]
    bad = run_script("train.py", f"--data_dir={data_dir}", f"--out_dir={broken}", *TINY, "--resume", check=False)
    assert bad.returncode == 2 and "truncated or corrupt" in bad.stderr
