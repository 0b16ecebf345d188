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
