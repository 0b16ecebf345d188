"""Depth against width (studies/depth_width.py): the shapes meet the parameter budget (counted by the model itself),
every run trains through train.py, and a restarted sweep skips finished runs and resumes a stopped one."""

from __future__ import annotations

import json
import math

import pytest

from studies import depth_width as sweep
from model_llama import Llama, LlamaConfig

from conftest import run_script

BASE = LlamaConfig(vocab_size=2000, n_layer=8, n_embd=336, n_head=8, n_kv_head=8, ffn_hidden=1344)


@pytest.mark.parametrize("depth,ratio,head_dim,kv_ratio", [(2, 2.0, 32, 1), (8, 2.667, 32, 1),
                                                            (16, 4.0, 16, 2), (32, 2.667, 16, 1)])
def test_shapes_meet_the_budget(depth, ratio, head_dim, kv_ratio):
    budget = Llama(BASE).num_params()
    m = sweep.shape_for(budget, depth, ratio, head_dim, kv_ratio, BASE)
    count = Llama(m).num_params()  # the model's own count, at the real vocabulary
    assert count == sweep.non_embedding(m)
    assert abs(count - budget) <= 3 * m.n_embd * depth  # within one FFN neuron per layer
    assert m.n_layer == depth and m.n_embd % (head_dim * kv_ratio) == 0
    assert m.n_embd // m.n_head == head_dim and m.n_head // m.n_kv_head == kv_ratio
    assert abs(math.log(m.ffn_hidden / m.n_embd / ratio)) < 0.5
    assert m.vocab_size == BASE.vocab_size and m.max_seq_len == BASE.max_seq_len


def test_deeper_means_narrower():
    budget = Llama(BASE).num_params()
    widths = [sweep.shape_for(budget, d, 2.667, 16, 1, BASE).n_embd for d in (2, 4, 8, 16)]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]


def test_a_budget_too_small_is_explained():
    with pytest.raises(sweep.config_lib.ConfigError, match="raise --budget"):
        sweep.shape_for(5000, 8, 2.0, 32, 1, BASE)


@pytest.fixture
def base_config(leaner_small, tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(
        "from model_llama import LlamaConfig\n"
        f"data_dir = {str(leaner_small)!r}\n"
        "model = LlamaConfig(vocab_size=2000, n_layer=2, n_embd=32, n_head=2, n_kv_head=2, ffn_hidden=64, "
        "max_seq_len=32)\n"
        "seq_len = 32\nbatch_size = 4\ncompile = False\ndtype = 'fp32'\nthreads = 1\npeak_flops = 1e10\n"
        "eval_every = 1000\neval_steps = 1\nlog_every = 2\nckpt_every = 2\n")
    return path


def test_sweep_trains_reports_and_resumes(base_config, leaner_small, tmp_path, monkeypatch):
    import train
    out = tmp_path / "sweep"
    cfg = sweep.SweepConfig(base=str(base_config), out_dir=str(out), depths=(1, 2), ffn_ratios=(2.0,),
                            head_dim=16, tokens=4 * 32 * 4, gen_tokens=4, seeds=(7,), top=1)
    rows = sweep.sweep(cfg)
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*/result.json"))]
    assert len(results) == 3 and len(rows) == 2  # two shapes, the best one with a second seed
    best = rows[0]
    assert best["seeds"] == 2 and best["bits_per_byte"] <= rows[1]["bits_per_byte"]
    for r in results:
        assert r["steps"] == 4 and r["train_tokens"] == 4 * 4 * 32
        assert r["train_tokens_per_s"] > 0 and r["gen_tokens_per_s"] > 0
        metrics = [json.loads(line) for line in (out / r["name"] / "metrics.jsonl").read_text().splitlines()]
        assert r["val_loss"] == [m["val_loss"] for m in metrics if "val_loss" in m][-1]
        # nats per token -> bits per byte of the validation text (each end-of-text one byte, as evaluate.py)
        val = json.loads((leaner_small / "meta.json").read_text())["splits"]["validation"]
        tokens_per_byte = val["tokens"] / (val["bytes"] + val["documents"])
        assert r["bits_per_byte"] == pytest.approx(r["val_loss"] * tokens_per_byte / math.log(2))
    assert "| L" in (out / "summary.md").read_text() and (out / "sweep.png").stat().st_size > 1000

    # a second run of the same command trains nothing
    def no_training(cfg):
        raise AssertionError(f"retrained {cfg.out_dir}")
    monkeypatch.setattr(train, "pretrain", no_training)
    assert sweep.sweep(cfg) == rows
    # a run stopped before its result was written continues from its checkpoint
    monkeypatch.undo()
    stopped = out / results[0]["name"] / "result.json"
    stopped.unlink()
    sweep.sweep(cfg)
    again = json.loads(stopped.read_text())
    assert again["val_loss"] == results[0]["val_loss"] and again["steps"] == results[0]["steps"]


def test_measure_speed_times_each_shape_alone(base_config, tmp_path, monkeypatch):
    """--measure_speed trains nothing new, times each finished shape in a scratch folder it removes,
    and the table and plot then carry those speeds, marked as timed alone."""
    import train
    out = tmp_path / "sweep"
    cfg = sweep.SweepConfig(base=str(base_config), out_dir=str(out), depths=(1, 2), ffn_ratios=(2.0,),
                            head_dim=16, tokens=4 * 32 * 4, gen_tokens=4)
    before = sweep.sweep(cfg)
    timed = []
    real = train.pretrain

    def counted(run_cfg):
        timed.append((run_cfg.model.n_layer, run_cfg.max_steps, run_cfg.init_from, run_cfg.resume))
        return real(run_cfg)
    monkeypatch.setattr(train, "pretrain", counted)
    rows = sweep.sweep(sweep.SweepConfig(**{**cfg.__dict__, "measure_speed": True, "speed_steps": 8}))
    assert sorted(timed) == [(1, 8, "", False), (2, 8, "", False)]  # one fresh short run per shape
    speeds = {p.stem: json.loads(p.read_text()) for p in (out / "speed").glob("*.json")}
    assert set(speeds) == {r["shape"] for r in before}
    assert not list(out.glob("speed_*"))  # the scratch folders are gone
    for r in rows:
        assert r["speed"] == "alone"
        assert r["train_tokens_per_s"] == speeds[r["shape"]]["train_tokens_per_s"] > 0
        assert r["gen_tokens_per_s"] == speeds[r["shape"]]["gen_tokens_per_s"] > 0
        same = next(b for b in before if b["shape"] == r["shape"])
        assert r["bits_per_byte"] == same["bits_per_byte"]  # the losses are the runs' own
    assert "train tok/s (alone)" in (out / "summary.md").read_text()
    with pytest.raises(sweep.config_lib.ConfigError, match="report_only"):
        sweep.sweep(sweep.SweepConfig(**{**cfg.__dict__, "measure_speed": True, "report_only": True}))


def test_bad_flags_exit_2(tmp_path, capsys):
    result = run_script("studies/depth_width.py", "--depths=two", check=False)
    assert result.returncode == 2 and "depths" in result.stderr
    with pytest.raises(SystemExit) as e:
        sweep.main(sweep.SweepConfig(base=str(tmp_path / "none.py")))
    assert e.value.code == 2 and "no such training config" in capsys.readouterr().err
