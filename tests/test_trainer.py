"""The shared Trainer's seams: init_from with its loaded/new/dropped report, an injected batch
source that changes mid-run and resumes exactly after SIGKILL, a stage's own loss and evaluation,
and settings checked before any compute."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tinyhelen import config as config_lib
from conftest import REPO, run_script
from tinyhelen.metrics import read_metrics

TINY = ["--model.n_layer=2", "--model.n_embd=64", "--model.n_head=4", "--model.n_kv_head=2",
        "--model.ffn_hidden=176", "--model.max_seq_len=64", "--seq_len=64", "--batch_size=4",
        "--compile=false", "--dtype=fp32", "--threads=1", "--peak_flops=1e10", "--sample_tokens=0",
        "--warmup_steps=5", "--lr=3e-3", "--min_lr=3e-4"]


def parse(*flags):
    import train
    return config_lib.parse_args(train.TrainConfig(), [*TINY, *flags])


def rows(out_dir) -> list[dict]:
    return read_metrics(Path(out_dir) / "metrics.jsonl")


@pytest.fixture(scope="module")
def source_run(leaner_small, tmp_path_factory):
    import train
    out = tmp_path_factory.mktemp("source")
    train.pretrain(parse(f"--data_dir={leaner_small}", f"--out_dir={out}", "--max_steps=40", "--eval_every=40",
                         "--eval_steps=2", "--log_every=10"))
    return out


# ------------------------------------------------------------------ init_from

def test_init_from_a_run_starts_fresh_from_its_weights(source_run, leaner_small, tmp_path):
    """train.py --init_from: the source's weights and architecture, step 0, a new schedule; its
    first loss is the trained model's level, far below a run from scratch."""
    flags = [f"--data_dir={leaner_small}", "--max_steps=5", "--log_every=1", "--eval_every=5", "--eval_steps=2"]
    run_script("train.py", *TINY, *flags, f"--out_dir={tmp_path / 'scratch'}")
    # the config's model is ignored: the architecture comes with the weights
    result = run_script("train.py", *TINY, *flags, "--model.n_layer=3", f"--out_dir={tmp_path / 'init'}",
                        f"--init_from={source_run}")
    assert "init_from" in result.stdout and "0 new" in result.stdout and "0 dropped" in result.stdout
    ckpt = torch.load(tmp_path / "init" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 5 and ckpt["config"]["model"]["n_layer"] == 2
    init, scratch = rows(tmp_path / "init"), rows(tmp_path / "scratch")
    assert [r["step"] for r in init if "loss" in r] == [1, 2, 3, 4, 5]
    assert init[0]["lr"] == pytest.approx(3e-3 / 5)  # warmup starts again
    assert init[0]["loss"] < scratch[0]["loss"] - 0.5
    # fresh optimizer: its step count is that of this run only
    assert all(s["step"].item() == 5 for s in ckpt["optimizer"]["state"].values())
    # --resume of an init_from run continues it (the architecture again from its own checkpoint)
    more = [f for f in flags if not f.startswith("--max_steps")] + ["--max_steps=7"]
    run_script("train.py", *TINY, *more, f"--out_dir={tmp_path / 'init'}", f"--init_from={source_run}", "--resume")
    assert torch.load(tmp_path / "init" / "ckpt.pt", weights_only=True)["step"] == 7
    assert [r["step"] for r in rows(tmp_path / "init") if "loss" in r] == [1, 2, 3, 4, 5, 6, 7]


class Classifier(nn.Module):
    """A backbone whose LM head is replaced by a score head: what a fine-tuning stage builds."""

    def __init__(self, backbone, n_classes: int):
        super().__init__()
        self.backbone = backbone
        self.backbone.lm_head = nn.Identity()
        self.head = nn.Linear(backbone.config.n_embd, n_classes, bias=False)

    def forward(self, x, labels):
        logits = self.head(self.backbone.hidden_states(x)[:, -1])
        return nn.functional.cross_entropy(logits.float(), labels)


class ParitySource:
    """Real windows labelled by the parity of their first token: a task with its own loss."""

    def __init__(self, tokens, seed):
        self.tokens, self.seed, self.n = tokens, seed, 0

    def next_batch(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.n)
        self.n += 1
        starts = torch.randint(0, len(self.tokens) - 33, (4,), generator=g)
        x = torch.stack([torch.from_numpy(self.tokens[s:s + 32].astype("int64")) for s in starts.tolist()])
        return x, x[:, 0] % 2

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_init_from_reports_new_and_dropped_weights_of_a_stage_model(source_run, leaner_small, tmp_path):
    from tinyhelen.checkpoint import load_source, build_model
    from data.tokens import open_tokens
    from trainer import Trainer
    source = load_source(source_run)
    cfg = parse(f"--data_dir={leaner_small}", f"--out_dir={tmp_path / 'cls'}", f"--init_from={source_run}",
                "--max_steps=4", "--log_every=1", "--eval_every=2")
    model = Classifier(build_model(source.model_config), n_classes=2)
    seen = []

    def evaluate(trainer):
        return {"dev_accuracy": 0.5 + 0.01 * trainer.step}

    class Listener:
        def on_evaluation(self, step, metrics):
            seen.append((step, metrics["dev_accuracy"]))

    trainer = Trainer(cfg, ParitySource(open_tokens(leaner_small, "train"), 1), model=model,
                      loss=lambda runner, batch: runner(*batch), evaluate=evaluate, listeners=[Listener()],
                      init_prefix="backbone.")
    report = trainer.init_report
    source_keys = set(source.state_dict)
    assert report["new"] == ["head.weight"]
    assert report["dropped"] == ["lm_head.weight"]
    assert set(report["loaded"]) == {"backbone." + k for k in source_keys - {"lm_head.weight"}}
    for key in report["loaded"]:
        torch.testing.assert_close(model.state_dict()[key], source.state_dict[key.removeprefix("backbone.")],
                                   rtol=0, atol=0)
    trainer.run()
    assert seen == [(2, pytest.approx(0.52)), (4, pytest.approx(0.54))]
    assert [r["dev_accuracy"] for r in rows(tmp_path / "cls") if "dev_accuracy" in r] == [s for _, s in seen]
    ckpt = torch.load(tmp_path / "cls" / "ckpt.pt", weights_only=True)
    assert "head.weight" in ckpt["model"] and ckpt["data"] == {"n": 4}


def test_init_from_a_transformers_folder(source_run, tmp_path):
    pytest.importorskip("transformers")
    from tinyhelen.checkpoint import load_model, load_source, load_matching_weights, build_model
    run_script("export.py", f"--out_dir={source_run}", f"--hf_dir={tmp_path / 'hf'}")
    source = load_source(tmp_path / "hf")
    model = build_model(source.model_config)
    report = load_matching_weights(model, source.state_dict)
    assert report["new"] == [] and report["dropped"] == []
    original, _ = load_model(source_run)
    idx = torch.randint(0, 2000, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(idx)[0], original(idx)[0], atol=1e-5, rtol=1e-5)


def test_init_from_errors(source_run, tmp_path):
    from tinyhelen.checkpoint import CheckpointError, build_model, load_matching_weights, load_source
    with pytest.raises(CheckpointError, match="does not exist"):
        load_source(tmp_path / "nowhere")
    source = load_source(source_run)
    wider = build_model(config_lib.parse_args(parse(), ["--model.n_embd=128"]).model)
    with pytest.raises(CheckpointError, match=r"do not fit.*tok_emb.weight"):
        load_matching_weights(wider, source.state_dict)


# ------------------------------------------------------------------ a source that changes mid-run

def test_growing_source_killed_and_resumed_gives_identical_losses(leaner_small, tmp_path):
    script = "tests/fixtures/growing_run.py"
    straight = run_script(script, str(leaner_small), str(tmp_path / "straight"))
    growths = json.loads(straight.stdout.strip().splitlines()[-1].removeprefix("growths "))
    assert growths, "the source never grew: the test would not exercise a change mid-run"

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, script, str(leaner_small), str(killed)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # kill it after the first growth and a checkpoint past it
            metrics = killed / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= growths[0] + 4:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    state = torch.load(killed / "ckpt.pt", weights_only=True)
    assert growths[0] <= state["step"] < 30 and state["data"]["growths"]
    assert state["listeners"] == [{"count": state["step"] // 5}]
    run_script(script, str(leaner_small), str(killed), "--resume")

    a, b = rows(tmp_path / "straight"), rows(killed)
    assert [(r["step"], r.get("loss"), r.get("val_loss"), r.get("pool"), r.get("evaluations")) for r in a] == \
           [(r["step"], r.get("loss"), r.get("val_loss"), r.get("pool"), r.get("evaluations")) for r in b]
    assert len({r["pool"] for r in a if "pool" in r}) > 1


# ------------------------------------------------------------------ settings checked before compute

@pytest.mark.parametrize("flag, message", [
    ("--decay=cosin", "decay must be one of cosine, linear, constant, got 'cosin'"),
    ("--max_steps=-5", "max_steps must be at least 1, got -5"),
    ("--batch_size=0", "batch_size must be at least 1, got 0"),
    ("--seq_len=100000", "seq_len 100000 is longer than model.max_seq_len 64"),
    ("--dtype=fp16", "dtype must be one of auto, bf16, fp32"),
    ("--device=gpu", "device must be one of auto, cpu, cuda, cuda:N"),
    ("--lr=0", "lr must be greater than 0"),
    ("--beta2=1.5", "beta2 must be in [0, 1)"),
])
def test_bad_settings_are_config_errors(flag, message):
    with pytest.raises(config_lib.ConfigError) as error:
        parse(flag)
    assert message in str(error.value) and flag.split("=")[0] in str(error.value)


def test_a_bad_setting_stops_the_command_before_any_compute(tmp_path):
    out = tmp_path / "run"
    bad = run_script("train.py", *TINY, f"--data_dir={tmp_path / 'no_data'}", f"--out_dir={out}", "--decay=cosin",
                     check=False)
    # the data folder does not even exist: the config is rejected before anything is read or built
    assert bad.returncode == 2, bad.stderr
    assert "decay must be one of cosine, linear, constant, got 'cosin'" in bad.stderr
    assert "Traceback" not in bad.stderr and not out.exists()


def test_bad_settings_in_a_config_file_name_the_line(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text("from model_llama import LlamaConfig\nmodel = LlamaConfig()\n\ndecay = 'cosin'\n")
    with pytest.raises(config_lib.ConfigError, match=r"cfg.py:4: decay must be one of cosine"):
        parse(str(path))


def test_other_entry_points_check_their_settings(tmp_path):
    import evaluate
    import sample
    for defaults, flag, message in [(sample.SampleConfig(), "--top_p=1.5", "top_p must be at most 1"),
                                    (sample.SampleConfig(), "--device=tpu", "device must be one of"),
                                    (evaluate.EvalConfig(), "--genres=book,wikki",
                                     "genres must be all or a comma list of web, book"),
                                    (evaluate.EvalConfig(), "--split=dev",
                                     "split must be one of train, validation, test")]:
        with pytest.raises(config_lib.ConfigError, match=message.replace("[", r"\[")):
            config_lib.parse_args(defaults, [flag])
    bad = run_script("evaluate.py", f"--out_dir={tmp_path / 'none'}", "--split=dev", check=False)
    assert bad.returncode == 2 and "split must be one of" in bad.stderr and "Traceback" not in bad.stderr


def test_help_lists_the_choices():
    import train
    assert "--decay=cosine   (cosine | linear | constant)" in config_lib.describe(train.TrainConfig())


def test_device_auto_everywhere(source_run):
    from tinyhelen import machine
    assert machine.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    result = run_script("sample.py", f"--out_dir={source_run}", "--device=auto", "--num_samples=1",
                        "--max_new_tokens=5")
    assert "--- sample 1 ---" in result.stdout
    if not torch.cuda.is_available():
        bad = run_script("sample.py", f"--out_dir={source_run}", "--device=cuda", check=False)
        assert bad.returncode == 2 and "no CUDA GPU" in bad.stderr


def test_a_nan_loss_stops_the_run_with_a_clear_error(leaner_small, tmp_path):
    """A batch with nothing scored has loss 0/0 = nan (as F.cross_entropy); training on it would
    poison every weight, so the Trainer stops instead."""
    from trainer import Trainer

    class Masked:
        def next_batch(self):
            x = torch.zeros(2, 8, dtype=torch.long)
            return x, torch.full_like(x, -1)

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    cfg = parse(f"--data_dir={leaner_small}", f"--out_dir={tmp_path / 'nan'}", "--max_steps=3")
    with pytest.raises(FloatingPointError, match="no scored targets"):
        Trainer(cfg, Masked()).run()
