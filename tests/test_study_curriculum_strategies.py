"""The curriculum experiment (studies/curriculum_strategies.py): every run trains, a restart trains
nothing, the table and plot come from the runs' results, Leaner-Glue fine-tunes the finished runs, and
every training and fine-tuning step is timed in times.jsonl."""

from __future__ import annotations

import json

import pytest

from conftest import run_script
from studies import curriculum_strategies as experiment


def test_table_of_a_summary():
    """mean ± sd over the seeds that reached the target, the mean alone for one seed, "not reached"
    for a run that never did."""
    summary = {"target_val_loss": 3.5, "baseline": "full_repeated", "rows": {
        "full_repeated": {"seeds": 2, "reached": 2, "final_val_loss": (3.5, 0.01), "final_unique_tokens": (900, 10),
                          "steps": (6, 0), "unique_tokens": (900, 10)},
        "random": {"seeds": 1, "reached": 0, "final_val_loss": (3.6, None), "final_unique_tokens": (1200, None)}}}
    lines = experiment.table(summary).splitlines()
    assert lines[2:] == [
        "| run | seeds reaching target | steps to target | unique tokens to target | final val loss | "
        "unique tokens at the end |",
        "|---|---|---|---|---|---|",
        "| full_repeated | 2/2 | 6 ± 0 | 900 ± 10 | 3.5000 ± 0.0100 | 900 ± 10 |",
        "| random | 0/1 | not reached | not reached | 3.6000 | 1,200 |"]


@pytest.mark.slow  # six tiny runs, two of them scoring every window
def test_experiment_is_resumable_and_reports(leaner_small, tmp_path):
    cfg_file = tmp_path / "tiny.py"
    cfg_file.write_text("from model_llama import LlamaConfig\n"
                        f"data_dir = {str(leaner_small)!r}\n"
                        "model = LlamaConfig(vocab_size=2000, n_layer=1, n_embd=32, n_head=2, n_kv_head=2, "
                        "ffn_hidden=64, max_seq_len=32)\n"
                        "seq_len = 32\nbatch_size = 2\nmax_steps = 6\neval_every = 3\neval_steps = 1\n"
                        "log_every = 3\nckpt_every = 3\nwarmup_steps = 2\ncompile = False\ndtype = 'fp32'\n"
                        "threads = 1\npeak_flops = 1e10\nsample_tokens = 0\nlr = 3e-3\nmin_lr = 3e-4\n"
                        "score_batch_tokens = 4096\n")
    out = tmp_path / "exp"
    args = ["studies/curriculum_strategies.py", f"--run_config={cfg_file}", f"--out_dir={out}", "--seeds=1,2",
            "--runs=full_repeated,random,multi_round"]
    first = run_script(*args)
    assert first.stdout.count("=== ") == 6
    for name in ("full_repeated", "random", "multi_round"):
        result = json.loads((out / name / "seed2" / "result.json").read_text())
        assert result["seed"] == 2 and [e["step"] for e in result["evals"]] == [3, 6]
    times = [json.loads(line) for line in (out / "times.jsonl").read_text().splitlines()]
    assert [(t["step"], t["rc"]) for t in times] == [("runs", 0)] * 6
    assert times[0]["command"].startswith("full_repeated seed 1: python curriculum.py ")  # the baseline first
    again = run_script(*args)
    assert "=== " not in again.stdout  # every run is done: skipped
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["rows"]) == {"full_repeated", "random", "multi_round"}
    assert summary["rows"]["full_repeated"]["reached"] >= 1
    assert (out / "curves.png").stat().st_size > 1000 and "| full_repeated |" in (out / "summary.md").read_text()
    assert not (out / "glue").exists()  # no --glue_tasks, no glue step

    # Leaner-Glue of the final checkpoints: one row per run, spread over the two pre-training seeds
    tiny_glue = ["--glue_tasks=rte", "--glue_flags=--epochs=1,--max_train=32,--batch_size=16,--lrs=1e-3,"
                 "--seeds=1,--seq_len=32,--threads=1,--peak_flops=1e10"]
    scored = run_script(*args, "--steps=glue,report", *tiny_glue)
    assert "=== " not in scored.stdout.replace("=== glue", "")  # nothing pre-trained again
    assert scored.stdout.count("=== glue") == 6
    for name in ("full_repeated", "random", "multi_round"):
        for seed in (1, 2):
            result = json.loads((out / "glue" / name / f"seed{seed}" / "rte" / "lr0.001_seed1" / "result.json")
                                .read_text())
            assert result["model"] == name and str(out / name / f"seed{seed}") in result["settings"]["init_from"]
    table = (out / "glue_summary.md").read_text()
    assert "| random |" in table and " ± " in table  # two pre-training seeds give a spread
    assert (out / "glue_summary.png").stat().st_size > 1000
    assert len((out / "times.jsonl").read_text().splitlines()) == 6 + 6
    again = run_script(*args, "--steps=glue", *tiny_glue)
    assert "done earlier" in again.stdout and again.stdout.count("done earlier") == 6


def test_bad_settings_exit_2_before_compute(tmp_path):
    bad = run_script("studies/curriculum_strategies.py", "--runs=random", f"--out_dir={tmp_path}", check=False)
    assert bad.returncode == 2 and "must include full_repeated" in bad.stderr
    bad = run_script("studies/curriculum_strategies.py", "--seeds=", f"--out_dir={tmp_path}", check=False)
    assert bad.returncode == 2 and "seeds must list at least one value" in bad.stderr
    bad = run_script("studies/curriculum_strategies.py", "--seeds=1,two", f"--out_dir={tmp_path}", check=False)
    assert bad.returncode == 2 and "seeds must be int" in bad.stderr
    assert not list(tmp_path.iterdir())  # nothing ran
