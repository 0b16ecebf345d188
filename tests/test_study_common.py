"""studies/common.py, the harness every study shares: when a run is finished (real checkpoints), the
step runner (real subprocesses and their times.jsonl rows), flag lists, mean ± sd against the
statistics module, the exact text of a Markdown table, and figures written as PNG files."""

from __future__ import annotations

import json
import statistics
import typing

import pytest
import torch

from conftest import REPO
from studies import common


def checkpoint(run_dir, step: int, max_steps: int) -> None:
    """A checkpoint shaped like the Trainer's (weights, step, config), written with torch.save."""
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(4, 4)}, "step": step, "config": {"max_steps": max_steps, "lr": 1e-3}},
               run_dir / "ckpt.pt")


# ----------------------------------------------------------------------------- run_state

def test_run_state_from_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert common.run_state(run) == "absent"  # no folder at all
    run.mkdir()
    assert common.run_state(run) == "absent"
    checkpoint(run, step=3, max_steps=6)
    assert common.run_state(run) == "stopped"
    checkpoint(run, step=6, max_steps=6)
    assert common.run_state(run) == "finished"
    checkpoint(run, step=7, max_steps=6)  # a run resumed with a lower max_steps is past its end
    assert common.run_state(run) == "finished"


def test_run_state_with_a_result_file(tmp_path):
    """Where a study writes a result, the result is what counts: a checkpoint at its last step without
    it is a run stopped between training and writing."""
    run = tmp_path / "run"
    assert common.run_state(run, result="result.json") == "absent"
    checkpoint(run, step=6, max_steps=6)
    assert common.run_state(run, result="result.json") == "stopped"
    (run / "result.json").write_text("{}")
    assert common.run_state(run, result="result.json") == "finished"
    # a result beside the run folder, as tokenizer_choice and inheritance keep it
    beside = tmp_path / "arm_seed1"
    checkpoint(beside / "run", step=2, max_steps=6)
    assert common.run_state(beside / "run", result=beside / "result.json") == "stopped"
    (beside / "result.json").write_text("{}")
    assert common.run_state(beside / "run", result=beside / "result.json") == "finished"


def test_require_finished(tmp_path, capsys):
    run = tmp_path / "run"
    checkpoint(run, step=3, max_steps=6)
    with pytest.raises(SystemExit) as e:
        common.require_finished(run, "python studies/x.py --step=pretrain")
    assert str(e.value) == (f"error: {run} has not finished (no checkpoint, or one before its last step); "
                            f"run python studies/x.py --step=pretrain first (it resumes), then this step again")
    common.require_finished(run, "...", dry_run=True)  # a dry run only prints commands: it goes on
    checkpoint(run, step=6, max_steps=6)
    common.require_finished(run, "...")


# ----------------------------------------------------------------------------- the runner

def rows(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "times.jsonl").read_text().splitlines()]


def test_a_command_runs_from_the_repo_root_and_is_timed(tmp_path, capfd):
    marker = tmp_path / "cwd.txt"
    code = f"import os, time; time.sleep(0.3); open({str(marker)!r}, 'w').write(os.getcwd())"
    common.Runner(tmp_path / "out").command("probe", ["-c", code])
    assert marker.read_text() == str(REPO)
    assert capfd.readouterr().out.startswith(f"$ python -c {code}\n")
    (row,) = rows(tmp_path / "out")
    assert row["step"] == "probe" and row["command"] == f"-c {code}" and row["rc"] == 0
    assert 0.3 <= row["seconds"] < 30
    common.Runner(tmp_path / "out").command("probe", ["-c", "pass"])
    assert len(rows(tmp_path / "out")) == 2  # appended, not rewritten


def test_a_dry_run_prints_and_does_nothing(tmp_path, capfd):
    marker = tmp_path / "ran.txt"
    runner = common.Runner(tmp_path / "out", dry_run=True)
    runner.command("probe", ["-c", f"open({str(marker)!r}, 'w')"])
    assert runner.call("step", "in process", lambda: marker.write_text("x")) is None
    assert not marker.exists() and not (tmp_path / "out").exists()
    out = capfd.readouterr().out
    assert out.splitlines() == [f"$ python -c open({str(marker)!r}, 'w')", "=== in process"]


def test_a_failing_command_exits_with_its_code(tmp_path, capfd):
    with pytest.raises(SystemExit) as e:
        common.Runner(tmp_path).command("probe", ["-c", "import sys; print('bad input'); sys.exit(3)"])
    assert e.value.code == 3
    captured = capfd.readouterr()
    assert "bad input" in captured.out
    assert "error: that command failed (exit 3); fix what it says" in captured.err
    (row,) = rows(tmp_path)
    assert row["rc"] == 3


def test_in_process_steps_are_timed_too(tmp_path, capsys):
    runner = common.Runner(tmp_path)
    assert runner.call("train", "a run", lambda x, y=0: x + y, 2, y=3) == 5
    assert capsys.readouterr().out == "=== a run\n"

    def fails():
        raise ValueError("broken")
    with pytest.raises(ValueError, match="broken"):
        runner.call("train", "a failing run", fails)

    def exits():
        raise SystemExit(2)
    with pytest.raises(SystemExit):
        runner.call("report", "an exit", exits)
    assert [(r["step"], r["command"], r["rc"]) for r in rows(tmp_path)] == [
        ("train", "a run", 0), ("train", "a failing run", 1), ("report", "an exit", 2)]


# ----------------------------------------------------------------------------- flags and seeds

def test_flag_list():
    assert common.flag_list(()) == []
    assert common.flag_list(("--dtype=fp32", "--threads=1")) == ["--dtype=fp32", "--threads=1"]
    # the config split a value that is itself a comma list: joined back
    assert common.flag_list(("--lrs=1e-3", "3e-3", "--epochs=2")) == ["--lrs=1e-3,3e-3", "--epochs=2"]
    # several flags in one item, as a shell would split them
    assert common.flag_list(("--max_steps=400 --lr=1e-3", "--prompt='a b'")) == \
        ["--max_steps=400", "--lr=1e-3", "--prompt=a b"]


def test_every_study_reads_seeds_and_flags_the_same_way():
    """Seeds are tuple[int, ...] and extra flags tuple[str, ...] in every study's config, and a flag on
    the command line reaches the study as the flags a user meant."""
    from studies import (curriculum_strategies, demo_sweep, depth_width, glue, inheritance,
                         instruction_following, tokenizer_choice)
    from tinyhelen import config as config_lib
    configs = [curriculum_strategies.ExperimentConfig, demo_sweep.DemoSweepConfig, depth_width.SweepConfig,
               glue.StudyConfig, inheritance.StudyConfig, instruction_following.StudyConfig,
               tokenizer_choice.TokenizerStudyConfig]
    seen = set()
    for cls in configs:
        for name, tp in typing.get_type_hints(cls).items():
            if name == "seeds" or name.endswith("_seeds"):
                assert tp == tuple[int, ...], (cls.__name__, name)
                seen.add("seeds")
            if name == "flags" or name.endswith("_flags") or name == "train_args":
                assert tp == tuple[str, ...], (cls.__name__, name)
                seen.add("flags")
    assert seen == {"seeds", "flags"}
    cfg = config_lib.parse_args(depth_width.SweepConfig(), ["--seeds=2,3", "--train_args=--lrs=1e-3,3e-3,--lr=1"])
    assert cfg.seeds == (2, 3) and common.flag_list(cfg.train_args) == ["--lrs=1e-3,3e-3", "--lr=1"]
    with pytest.raises(config_lib.ConfigError, match="seeds must list at least one value"):
        config_lib.parse_args(inheritance.StudyConfig(), ["--seeds="])


# ----------------------------------------------------------------------------- numbers and tables

@pytest.mark.parametrize("values", [[1.5, 2.0, 4.25], [3, 3], [0.1, 0.7]])
def test_mean_sd_against_statistics(values):
    mean, sd = common.mean_sd(values)
    assert mean == pytest.approx(statistics.fmean(values))
    assert sd == pytest.approx(statistics.stdev(values))  # the sample deviation (n - 1)


def test_one_value_has_no_spread():
    assert common.mean_sd([2.5]) == (2.5, None)
    assert common.mean_sd(iter([1.0, 3.0]))[1] == pytest.approx(2 ** 0.5)  # any iterable
    assert common.format_mean_sd(2.5, None) == "2.5000"
    assert common.format_mean_sd(1234.5, 10.25, ",.1f") == "1,234.5 ± 10.2"


def test_markdown_table_text():
    assert common.markdown_table(["run", "steps", "loss"], [["a", 10, "3.50"], ["b", 20, "3.25"]]) == (
        "| run | steps | loss |\n"
        "|---|---:|---:|\n"
        "| a | 10 | 3.50 |\n"
        "| b | 20 | 3.25 |")
    assert common.markdown_table(["x", "y"], [], align="ll") == "| x | y |\n|---|---|"
    with pytest.raises(ValueError, match="2 letters for 3 columns"):
        common.markdown_table(["a", "b", "c"], [], align="lr")


# ----------------------------------------------------------------------------- figures

def test_figure_is_written_as_a_png_of_its_size(tmp_path):
    import matplotlib.pyplot as plt
    path = tmp_path / "plots" / "curve.png"
    with common.figure(path, 1, 2, figsize=(4, 2), dpi=50) as (fig, axes):
        axes[0].plot([1, 2, 3], [3, 2, 1])
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (200, 100)
    assert plt.get_fignums() == []  # closed after saving


def test_a_failed_figure_writes_nothing(tmp_path):
    import matplotlib.pyplot as plt
    with pytest.raises(RuntimeError):
        with common.figure(tmp_path / "bad.png") as (fig, ax):
            raise RuntimeError("no data")
    assert not (tmp_path / "bad.png").exists() and plt.get_fignums() == []
