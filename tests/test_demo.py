"""The README's main job, end to end and shortened: prepare the real leaner data, train the demo
Llama, sample from it. Marked slow (a few minutes); CI runs it after the default suite."""

from __future__ import annotations

import re
import sys

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


def test_demo_sweep_candidates_are_valid_configs_and_unknown_names_are_refused(tmp_path):
    """The sweep that chose the demo: every candidate parses as a training config (settings checked
    before any run), keeps head_dim 32, and a misspelt --only names the real candidates."""
    import importlib.util
    from conftest import REPO
    spec = importlib.util.spec_from_file_location("demo_sweep", REPO / "studies" / "demo_sweep.py")
    demo_sweep = importlib.util.module_from_spec(spec)
    sys.modules["demo_sweep"] = demo_sweep  # its dataclass looks its module up there
    spec.loader.exec_module(demo_sweep)
    for name in demo_sweep.CANDIDATES:
        cfg = demo_sweep.candidate_config(name, 0, tmp_path)
        assert cfg.model.n_embd // cfg.model.n_head == 32 and cfg.compile and cfg.bpb_genres
        assert cfg.out_dir == str(tmp_path / name)
    bad = run_script("studies/demo_sweep.py", "--only=w256_l4,huge", f"--out_dir={tmp_path}", check=False)
    assert bad.returncode == 2 and "huge" in bad.stderr and "w256_l4" in bad.stderr
