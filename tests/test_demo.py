"""The README's main job, end to end and shortened: prepare the real leaner data, train the demo
Llama, sample from it. Marked slow (a few minutes); CI runs it after the default suite."""

from __future__ import annotations

import re

import pytest

from conftest import run_script
from tinyhelen.metrics import read_metrics


@pytest.mark.slow
def test_readme_main_job_shortened(shared_data, tmp_path):
    data, run = tmp_path / "data", tmp_path / "demo"
    run_script("data/prepare.py", f"--data_root={shared_data}", "--corpus=leaner", f"--out_dir={data}",
               "--progress=false")
    out = run_script("train.py", "configs/demo_llama.py", f"--data_dir={data}", f"--out_dir={run}",
                     "--max_steps=120", "--warmup_steps=12", "--eval_every=60", "--ckpt_every=60",
                     "--compile=false").stdout
    baseline = float(re.search(r"unigram baseline validation loss: ([\d.]+)", out).group(1))
    val = [r["val_loss"] for r in read_metrics(run / "metrics.jsonl") if "val_loss" in r]
    assert val[-1] < baseline - 0.5, (val, baseline)  # clearly better than counting words
    assert "sample:" in out
    sample = run_script("sample.py", f"--out_dir={run}", "--num_samples=1", "--max_new_tokens=40").stdout
    words = re.findall(r"[A-Za-z]+", sample)
    assert len(words) >= 10


@pytest.mark.slow
def test_inherited_demo_shortened(shared_data, smollm2, tmp_path):
    """configs/demo_smollm2.py's commands as its docstring gives them, shortened: prepare with SmolLM2's
    cut vocabulary, inherit, train from the cut (it starts far below noise, ln 4000 = 8.3 nats, and
    improves), sample."""
    cache, _ = smollm2
    env = {"TINYHELEN_PRETRAINED_DIR": str(cache)}
    data, init, run = tmp_path / "data", tmp_path / "init", tmp_path / "demo"
    run_script("data/prepare.py", f"--data_root={shared_data}", "--corpus=leaner", "--tokenizer=compact-smollm2:4000",
               f"--out_dir={data}", "--progress=false", env=env)
    run_script("inherit.py", "--from=smollm2-135m", "--to=configs/demo_smollm2.py", f"--out_dir={init}",
               f"--tokenizer={data / 'tokenizer.json'}", "--criterion=taylor", f"--data_root={shared_data}",
               "--batches=1", env=env)
    out = run_script("train.py", "configs/demo_smollm2.py", f"--data_dir={data}", f"--out_dir={run}",
                     f"--init_from={init}", "--max_steps=100", "--warmup_steps=10", "--eval_every=50",
                     "--ckpt_every=50", "--compile=false", "--bpb_genres=", env=env).stdout
    assert "init_from" in out and " 0 new" in out and " 0 dropped" in out
    baseline = float(re.search(r"unigram baseline validation loss: ([\d.]+)", out).group(1))
    val = [r["val_loss"] for r in read_metrics(run / "metrics.jsonl") if "val_loss" in r]
    assert val[-1] < baseline - 0.5, (val, baseline)
    sample = run_script("sample.py", f"--out_dir={run}", "--num_samples=1", "--max_new_tokens=40").stdout
    assert len(re.findall(r"[A-Za-z]+", sample)) >= 10
