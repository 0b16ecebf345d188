"""The Leaner-Glue study (studies/glue.py): the commands of each step, the flags that reach them, the
refusal to fine-tune an unfinished run, the report step in-process over finished sweeps, and (slow)
every step for real on tiny settings, then again with nothing redone."""

from __future__ import annotations

import json

import pytest

from conftest import run_script
from studies import glue as glue_study


def commands(out: str) -> list[str]:
    return [line[2:] for line in out.splitlines() if line.startswith("$ ")]


def test_study_commands(tmp_path):
    """studies/glue.py prints the commands of each step: the shared tokenizer, both corpora, four
    pre-trainings, six fine-tuning sweeps (the four and a from-scratch model of each architecture),
    then the report, which runs in-process."""
    out = run_script("studies/glue.py", f"--out_dir={tmp_path}", "--dry_run").stdout
    cmds = commands(out)
    assert f"--corpus=ori --data_root=../shared/data/tinyhelen --genres=book,wiki,textbook,conversation " \
           f"--tokenizer={tmp_path}/data/leaner/tokenizer.json" in cmds[1]
    assert [c.split()[1] for c in cmds] == ["data/prepare.py"] * 2 + ["train.py"] * 4 + ["finetune_glue.py"] * 6
    assert f"--init_from=scratch:{tmp_path}/leaner_mamba --name=scratch_mamba" in cmds[-1]
    assert out.rstrip().splitlines()[-1] == f"=== the Leaner-Glue table, chart and claims in {tmp_path}/glue"
    assert not (tmp_path / "times.jsonl").exists() and not (tmp_path / "glue").exists()


def test_study_flags_and_model_order(tmp_path):
    """--pretrain_flags and --finetune_flags reach the commands (a flag whose value is a comma list
    too); --models picks and orders the sweeps; an unknown model and a pre-training run that has not
    finished are refused before any compute."""
    out = run_script("studies/glue.py", f"--out_dir={tmp_path}", "--dry_run", "--step=pretrain",
                     "--pretrain_flags=--dtype=fp32,--threads=1").stdout
    assert len(commands(out)) == 4 and all(c.endswith(" --dtype=fp32 --threads=1") for c in commands(out))
    out = run_script("studies/glue.py", f"--out_dir={tmp_path}", "--dry_run", "--step=finetune",
                     "--models=scratch_mamba,ori_llama", "--finetune_flags=--lrs=1e-3,3e-3,--epochs=2").stdout
    cmds = commands(out)
    assert [c.split("--name=")[1].split()[0] for c in cmds] == ["scratch_mamba", "ori_llama"]
    assert all(c.endswith(" --lrs=1e-3,3e-3 --epochs=2") for c in cmds)
    bad = run_script("studies/glue.py", f"--out_dir={tmp_path}", "--step=finetune", "--models=llama", check=False)
    assert bad.returncode != 0 and "unknown llama; valid: leaner_llama, ori_llama" in bad.stderr
    early = run_script("studies/glue.py", f"--out_dir={tmp_path}", "--step=finetune", "--models=ori_llama",
                       check=False)
    assert early.returncode != 0 and f"{tmp_path}/ori_llama has not finished" in early.stderr
    assert "no checkpoint, or one before its last step" in early.stderr
    assert "run python studies/glue.py --step=pretrain first" in early.stderr
    assert not (tmp_path / "glue").exists()


def write_sweep(folder, model: str, devs: dict[int, float]) -> None:
    """A finished finetune_glue.py sweep of one task: one result.json per seed, as it writes them."""
    for seed, dev in devs.items():
        path = folder / model / "rte" / f"lr0.001_seed{seed}" / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"model": model, "task": "rte", "lr": 1e-3, "seed": seed, "dev": dev,
                                    "majority_dev": 0.5}))


def test_report_step_runs_in_process_and_is_timed(tmp_path):
    """The report step reads every sweep, writes the table, chart and the claims' gaps (the gap of the
    means over seeds), and records its wall time in times.jsonl; a missing sweep exits 2, named."""
    models = [name for _, name in glue_study.sweeps(glue_study.StudyConfig(out_dir=str(tmp_path)))]
    for i, model in enumerate(models):
        write_sweep(tmp_path / "glue", model, {1: 0.50 + 0.01 * i, 2: 0.52 + 0.01 * i})
    run_script("studies/glue.py", f"--out_dir={tmp_path}", "--step=report")
    glue = tmp_path / "glue"
    table = (glue / "summary.md").read_text()
    for model in models:
        assert f"| {model} |" in table
    assert (glue / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # leaner_llama is model 0 and leaner_mamba model 2: a gap of -2.0 points
    assert "| leaner_llama - leaner_mamba | -2.0 ± " in (glue / "summary_gaps.md").read_text()
    (row,) = [json.loads(line) for line in (tmp_path / "times.jsonl").read_text().splitlines()]
    assert row["step"] == "report" and row["rc"] == 0 and row["seconds"] >= 0
    assert not (tmp_path / "pretrain.md").exists()  # no pre-training run has finished

    missing = tmp_path / "missing"
    write_sweep(missing / "glue", "leaner_llama", {1: 0.5})
    bad = run_script("studies/glue.py", f"--out_dir={missing}", "--step=report", check=False)
    assert bad.returncode == 2 and f"no sweep folder {missing}/glue/ori_llama" in bad.stderr
    assert "Traceback" not in bad.stderr
    (row,) = [json.loads(line) for line in (missing / "times.jsonl").read_text().splitlines()]
    assert row["step"] == "report" and row["rc"] == 1  # a failed step is on record too


@pytest.mark.slow
def test_the_whole_study_on_tiny_settings_and_its_resume(tmp_path):
    """Every step for real on tiny settings; run again, nothing is redone."""
    run_script("studies/glue.py", "--tiny", f"--out_dir={tmp_path}")
    table = (tmp_path / "glue" / "summary.md").read_text()
    for name in ("leaner_llama", "ori_llama", "leaner_mamba", "ori_mamba", "scratch_llama", "scratch_mamba"):
        assert f"| {name} |" in table
    assert "| model | cola (MCC) | mrpc (F1/acc) | stsb (P/S corr) | rte (acc) | wnli (acc) | average |" in table
    assert "| leaner_llama - leaner_mamba |" in (tmp_path / "glue" / "summary_gaps.md").read_text()
    pretraining = (tmp_path / "pretrain.md").read_text()
    for name in ("leaner_llama", "ori_llama", "leaner_mamba", "ori_mamba"):
        assert f"| {name} | 8 | 2,048 |" in pretraining
    assert (tmp_path / "pretrain.png").stat().st_size > 1000
    times = (tmp_path / "times.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in times] == ["prepare"] * 2 + ["pretrain"] * 4 + \
        ["finetune"] * 6 + ["report"]
    again = run_script("studies/glue.py", "--tiny", f"--out_dir={tmp_path}").stdout
    assert "prepared earlier" in again and "trained earlier" in again and "0 of 5 runs to do" in again
    assert len((tmp_path / "times.jsonl").read_text().splitlines()) == len(times) + 7  # 6 sweeps + report
