"""The inheritance ablation driver (studies/inheritance.py): every arm trains through train.py, inherited arms
start from inherit.py's cut, the table reads the runs' own metrics, and a restarted study trains nothing."""

from __future__ import annotations

import json

import pytest

from tinyhelen import config as config_lib
from studies import inheritance as inherit_study


@pytest.fixture(scope="module")
def setup(leaner_small, tmp_path_factory):
    import train
    root = tmp_path_factory.mktemp("study")
    common = ["--compile=false", "--dtype=fp32", "--threads=1", "--peak_flops=1e10", "--sample_tokens=0"]
    train.pretrain(config_lib.parse_args(train.TrainConfig(), [
        f"--data_dir={leaner_small}", f"--out_dir={root / 'big'}", "--model.n_layer=3", "--model.n_embd=64",
        "--model.n_head=4", "--model.n_kv_head=4", "--model.ffn_hidden=128", "--model.max_seq_len=32",
        "--seq_len=32", "--batch_size=4", "--max_steps=20", "--eval_every=20", "--eval_steps=1",
        "--warmup_steps=2", "--lr=3e-3", *common]))
    (root / "small.py").write_text(
        "from model_llama import LlamaConfig\nmodel = LlamaConfig(vocab_size=2000, n_layer=2, n_embd=32, "
        "n_head=2, n_kv_head=2, ffn_hidden=64, max_seq_len=32)\n")
    (root / "base.py").write_text(
        f"data_dir = {str(leaner_small)!r}\nseq_len = 32\nbatch_size = 4\nmax_steps = 4\neval_every = 2\n"
        "eval_steps = 1\nwarmup_steps = 1\nlog_every = 2\nckpt_every = 2\ncompile = False\ndtype = 'fp32'\n"
        "threads = 1\npeak_flops = 1e10\n")
    return root


def test_study_runs_every_arm_and_resumes(setup, monkeypatch):
    import train
    out = setup / "out"
    cfg = inherit_study.StudyConfig(source=str(setup / "big"), to=str(setup / "small.py"),
                                    base=str(setup / "base.py"), out_dir=str(out), criteria=("random", "l2"),
                                    seeds=(1, 2))
    rows = inherit_study.study(cfg)
    source_loss = [json.loads(line)["val_loss"] for line in (setup / "big" / "metrics.jsonl").read_text().splitlines()
                   if "val_loss" in line][-1]
    assert [r["arm"] for r in rows] == ["scratch", "random", "l2"] and all(r["seeds"] == 2 for r in rows)
    for arm in ("scratch", "random", "l2"):
        for seed in (1, 2):
            result = json.loads((out / f"{arm}_seed{seed}" / "result.json").read_text())
            metrics = [json.loads(line) for line in
                       (out / f"{arm}_seed{seed}" / "run" / "metrics.jsonl").read_text().splitlines()]
            assert result["curve"] == [[m["step"], m["val_loss"]] for m in metrics if "val_loss" in m]
            assert [s for s, _ in result["curve"]] == [2, 4]
            assert (arm == "scratch") != (out / f"{arm}_seed{seed}" / "init" / "ckpt.pt").is_file()
            # a smaller cut starts worse than its source and better than noise (ln 2000 = 7.6)
            if arm == "scratch":
                assert result["initial_val_loss"] is None
            else:
                assert source_loss < result["initial_val_loss"] < 7.6
    summary = json.loads((out / "summary.json").read_text())
    scratch = [json.loads((out / f"scratch_seed{s}" / "result.json").read_text())["final_val_loss"]
               for s in (1, 2)]
    assert summary["target_loss"] == pytest.approx(sum(scratch) / 2)
    assert (out / "curves.png").stat().st_size > 1000 and "| l2 |" in (out / "summary.md").read_text()
    # random selection depends on the seed, l2 does not
    sel = {(a, s): json.loads((out / f"{a}_seed{s}" / "init" / "inherit.json").read_text())["channels"]
           for a in ("random", "l2") for s in (1, 2)}
    assert sel["l2", 1] == sel["l2", 2] and sel["random", 1] != sel["random", 2]

    def no_training(cfg):
        raise AssertionError(f"retrained {cfg.out_dir}")
    monkeypatch.setattr(train, "pretrain", no_training)
    assert inherit_study.study(cfg) == rows


def test_initial_loss_is_the_validation_loss_train_py_reports(setup, tmp_path):
    """A cut as large as its source keeps every unit, so its loss before training is the source's last
    validation loss as train.py measured it (same windows, fp32 here)."""
    import inherit
    import trainer
    (tmp_path / "same.py").write_text(
        "from model_llama import LlamaConfig\nmodel = LlamaConfig(vocab_size=2000, n_layer=3, n_embd=64, "
        "n_head=4, n_kv_head=4, ffn_hidden=128, max_seq_len=32)\n")
    inherit.inherit(inherit.InheritConfig(source=str(setup / "big"), to=str(tmp_path / "same.py"),
                                          out_dir=str(tmp_path / "same"), criterion="l2"))
    base = config_lib.parse_args(trainer.TrainConfig(), [str(setup / "base.py")])
    source_loss = [json.loads(line)["val_loss"] for line in (setup / "big" / "metrics.jsonl").read_text().splitlines()
                   if "val_loss" in line][-1]
    assert inherit_study.initial_loss(tmp_path / "same", base) == pytest.approx(source_loss, rel=1e-5)


def test_steps_to_target():
    assert inherit_study.steps_to([[2, 5.0], [4, 4.0], [6, 3.0]], 4.0) == 4
    assert inherit_study.steps_to([[2, 5.0]], 4.0) is None


def test_bad_settings_are_config_errors(setup):
    with pytest.raises(config_lib.ConfigError, match="criteria"):
        config_lib.parse_args(inherit_study.StudyConfig(), ["--criteria=l2,magnitude"])
    with pytest.raises(config_lib.ConfigError, match="no such training config"):
        inherit_study.study(inherit_study.StudyConfig(source=str(setup / "big"), base=str(setup / "none.py")))
