"""Leaner-Glue fine-tuning (finetune_glue.py, tinyhelen/glue_report.py): GLUE's metrics against plain formulas and
scikit-learn/scipy, the head reading the last real token, the classifier against transformers'
LlamaForSequenceClassification, a real fine-tune beating the majority class, a killed sweep resuming,
and clear errors for bad tasks, files and labels."""

from __future__ import annotations

import json
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

TINY_MODEL = ["--model.n_layer=2", "--model.n_embd=64", "--model.n_head=4", "--model.n_kv_head=2",
              "--model.ffn_hidden=176", "--model.max_seq_len=128"]
FAST = ["--threads=1", "--dtype=fp32", "--peak_flops=1e10", "--log_every=1000"]


def glue_cfg(*flags):
    import finetune_glue
    return config_lib.parse_args(finetune_glue.GlueConfig(), [*FAST, "--seq_len=128", *flags])


@pytest.fixture(scope="module")
def pretrained(leaner_small, tmp_path_factory) -> Path:
    """A tiny Llama pre-trained for 300 steps on the real leaner corpus (wiki, conversation, math):
    validation loss about 3.7 (about 10 s)."""
    import train
    out = tmp_path_factory.mktemp("pretrained")
    train.pretrain(config_lib.parse_args(train.TrainConfig(), [
        *TINY_MODEL, *FAST[:3], "--seq_len=128", "--batch_size=8", "--compile=false", "--sample_tokens=0",
        "--warmup_steps=10", "--lr=3e-3", "--min_lr=3e-4", "--max_steps=300", "--eval_every=300",
        "--eval_steps=2",
        f"--data_dir={leaner_small}", f"--out_dir={out}"]))
    return out


def tiny_llama(vocab_size=2000, seed=0):
    from model_llama import Llama, LlamaConfig
    torch.manual_seed(seed)
    return Llama(LlamaConfig(vocab_size=vocab_size, n_layer=2, n_embd=64, n_head=4, n_kv_head=2,
                             ffn_hidden=176, max_seq_len=128))


# ------------------------------------------------------------------ metrics

def _oracle(task, outputs, labels):
    """GLUE's metrics written out from counts and ranks (no library), for the comparison."""
    if task == "stsb":
        p, y = outputs[:, 0].astype(np.float64), labels.astype(np.float64)
        pearson = np.corrcoef(p, y)[0, 1]
        rank = lambda v: np.argsort(np.argsort(v)).astype(np.float64)  # no ties in these draws  # noqa: E731
        spearman = np.corrcoef(rank(p), rank(y))[0, 1]
        return {"pearson": pearson, "spearman": spearman, "score": (pearson + spearman) / 2}
    pred = outputs.argmax(1)
    acc = float((pred == labels).mean())
    tp, fp = float(((pred == 1) & (labels == 1)).sum()), float(((pred == 1) & (labels == 0)).sum())
    fn, tn = float(((pred == 0) & (labels == 1)).sum()), float(((pred == 0) & (labels == 0)).sum())
    if task == "cola":
        mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return {"mcc": mcc, "accuracy": acc, "score": mcc}
    if task in ("mrpc", "qqp"):
        f1 = 2 * tp / (2 * tp + fp + fn)
        return {"f1": f1, "accuracy": acc, "score": (f1 + acc) / 2}
    return {"accuracy": acc, "score": acc}


@pytest.mark.parametrize("task", ["cola", "mrpc", "qqp", "stsb", "rte", "mnli", "wnli"])
def test_metrics_match_plain_formulas_and_sklearn_scipy(task):
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    from tinyhelen.glue import glue_metrics
    rng = np.random.default_rng(7)
    n_out = {"stsb": 1, "mnli": 3}.get(task, 2)
    labels = rng.uniform(0, 5, 300) if task == "stsb" else rng.integers(0, n_out, 300)
    outputs = rng.normal(size=(300, n_out)).astype(np.float32)
    if task == "stsb":
        outputs[:, 0] += 0.3 * labels
    else:
        outputs[np.arange(300), labels] += 0.5  # better than chance, so every metric is away from 0
    got, oracle = glue_metrics(task, outputs, labels), _oracle(task, outputs, labels)
    assert got.keys() == oracle.keys()
    for k in got:
        assert got[k] == pytest.approx(oracle[k], abs=1e-9), k
    pred = outputs.argmax(1)
    library = {"cola": lambda: matthews_corrcoef(labels, pred), "mrpc": lambda: f1_score(labels, pred),
               "stsb": lambda: (pearsonr(outputs[:, 0], labels)[0] + spearmanr(outputs[:, 0], labels)[0]) / 2}
    if task in library:
        key = {"cola": "mcc", "mrpc": "f1", "stsb": "score"}[task]
        assert got[key] == pytest.approx(library[task](), abs=1e-6)
    if task != "stsb":
        assert got["accuracy"] == pytest.approx(accuracy_score(labels, pred))


def test_constant_predictions_score_zero_correlation():
    from tinyhelen.glue import glue_metrics
    scores = glue_metrics("stsb", np.full((10, 1), 2.5, dtype=np.float32), np.linspace(0, 5, 10))
    assert scores == {"pearson": 0.0, "spearman": 0.0, "score": 0.0}
    assert glue_metrics("cola", np.tile([[0.0, 1.0]], (10, 1)), np.arange(10) % 2)["mcc"] == 0.0


# ------------------------------------------------------------------ the classifier

def _padded(rows, eot, width):
    x = torch.full((len(rows), width), eot, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r)
    return x, torch.tensor([len(r) for r in rows])


def tiny_mamba(mixer):
    from model_mamba import Mamba, MambaConfig
    torch.manual_seed(0)
    return Mamba(MambaConfig(mixer=mixer, n_layer=2, n_embd=64, d_state=16, headdim=16, chunk_size=16,
                             mlp_hidden=128))


@pytest.mark.parametrize("arch", ["llama", "mamba1", "mamba2"])
def test_head_reads_the_last_real_token(arch):
    """Same logits with extra padding (even with other tokens than eot there), and the same as each row
    run alone without padding: the head reads position length - 1 and nothing after it."""
    from tinyhelen.glue import SequenceClassifier
    backbone = tiny_llama() if arch == "llama" else tiny_mamba(arch)
    idx = torch.randint(0, 1999, (2, 20))
    with torch.no_grad():  # hidden_states is the model's own path to its logits
        torch.testing.assert_close(backbone.lm_head(backbone.hidden_states(idx)), backbone(idx)[0])
    model = SequenceClassifier(backbone, 3).eval()
    g = torch.Generator().manual_seed(1)
    rows = [[1999] + torch.randint(0, 1999, (n,), generator=g).tolist() for n in (5, 17, 1, 30)]
    x, lengths = _padded(rows, 1999, 31)
    with torch.no_grad():
        logits = model(x, lengths)[0]
        wider, _ = _padded(rows, 1999, 60)
        wider[:, 45:] = 7  # junk after the padding: still after every row's last real token
        torch.testing.assert_close(model(wider, lengths)[0], logits, atol=1e-5, rtol=1e-5)
        for i, r in enumerate(rows):
            alone = model(torch.tensor([r]), torch.tensor([len(r)]))[0]
            torch.testing.assert_close(alone[0], logits[i], atol=1e-5, rtol=1e-5)
        # and the head is not reading the last position of the batch
        assert not torch.allclose(model(x, torch.full_like(lengths, 31))[0], logits, atol=1e-3)


@pytest.mark.parametrize("n_out", [2, 1])
def test_classifier_matches_transformers_sequence_classification(n_out, tmp_path):
    """Our classifier and LlamaForSequenceClassification (pad_token_id = eot) on the same weights give
    the same logits and loss on a right-padded batch; stsb's one output included (MSE)."""
    transformers = pytest.importorskip("transformers")
    from tinyhelen import interop
    from tinyhelen.glue import SequenceClassifier
    backbone = tiny_llama(seed=3)
    interop.save_hf(backbone, tmp_path, eos_token_id=1999)
    theirs = transformers.LlamaForSequenceClassification.from_pretrained(
        tmp_path, num_labels=n_out, pad_token_id=1999, torch_dtype=torch.float32).eval()
    ours = SequenceClassifier(backbone, n_out).eval()
    with torch.no_grad():
        theirs.score.weight.copy_(ours.score.weight)
    g = torch.Generator().manual_seed(2)
    rows = [[1999] + torch.randint(0, 1999, (n,), generator=g).tolist() for n in (12, 3, 40, 25)]
    x, lengths = _padded(rows, 1999, 41)
    labels = torch.tensor([1.5, 0.0, 4.2, 3.3]) if n_out == 1 else torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        logits, loss = ours(x, lengths, labels)
        mask = (torch.arange(41)[None] < lengths[:, None]).long()
        out = theirs(input_ids=x, attention_mask=mask, labels=labels)
    torch.testing.assert_close(logits, out.logits, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(loss, out.loss, atol=2e-5, rtol=1e-4)


def test_pair_tasks_are_joined_by_a_newline(shared_data, leaner_small):
    from data.tokenizer import load_tokenizer
    from data.tasks import read_glue
    from tinyhelen.glue import encode
    tok = load_tokenizer(str(leaner_small / "tokenizer.json"))
    examples = read_glue(shared_data, "rte", "validation")[:5]
    data = encode(examples, tok, 256, "rte")
    for i, e in enumerate(examples):
        assert tok.decode(data.docs.tokens_of(i)) == e.texts[0] + "\n" + e.texts[1]
    assert data.labels.tolist() == [e.label for e in examples]


# ------------------------------------------------------------------ a real fine-tune

def test_short_finetune_of_a_pretrained_model_beats_the_majority_class_on_cola(pretrained, shared_data,
                                                                               tmp_path):
    """Real cola (7,443 train, 452 dev sentences), 2 epochs from a real (tiny) pre-trained Llama: the
    dev MCC is above the majority class's 0 by more than a model guessing at random reaches (its MCC
    on 452 sentences is about 0 +- 0.047). Measured here: 0.136 with seed 2 (seeds 1 and 3: 0.092,
    0.082; fp32 on one thread, so the same machine gives the same figure). The run's JSON and the
    summary hold what the issue asks for."""
    import finetune_glue
    cfg = glue_cfg("--task=cola", f"--init_from={pretrained}", f"--glue_dir={shared_data}",
                   f"--out_dir={tmp_path}", "--epochs=2", "--lr=1e-3", "--seed=2")
    (result,) = finetune_glue.sweep(cfg)
    assert result["majority_dev"] == 0.0
    print(f"cola dev MCC {result['dev']:.4f} at step {result['best_step']} of {result['steps']}")
    assert result["dev"] > 0.07, result
    assert result["dev_metrics"]["dev_mcc"] == result["dev"] and 0 < result["best_step"] <= result["steps"]
    assert result["init_report"] == {"loaded": 14, "new": 1, "dropped": 1}
    saved = json.loads((tmp_path / "cola" / "lr0.001_seed2" / "result.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert not (tmp_path / "cola" / "lr0.001_seed2" / "ckpt.pt").exists()
    assert (tmp_path / "summary.md").read_text().startswith("| model | cola (MCC) | average |")
    assert (tmp_path / "summary.png").stat().st_size > 1000


def test_report_gaps_against_scipy(tmp_path):
    """--compare: the gap of the selected learning rates' means, its standard error, and Welch's
    p-value from scipy on the same seeds; an unknown model is an error naming the known ones."""
    from scipy import stats
    from tinyhelen.glue_report import gaps, read_results
    scores = {"a": {1: 0.62, 2: 0.66, 3: 0.61}, "b": {1: 0.55, 2: 0.58, 3: 0.50}}
    for model, by_seed in scores.items():
        for seed, dev in by_seed.items():
            for lr, shift in ((1e-3, 0.0), (1e-4, -0.2)):  # 1e-4 is worse for both: never selected
                path = tmp_path / model / "rte" / f"lr{lr:g}_seed{seed}" / "result.json"
                path.parent.mkdir(parents=True)
                path.write_text(json.dumps({"model": model, "task": "rte", "lr": lr, "seed": seed,
                                            "dev": dev + shift, "majority_dev": 0.5}))
    results = read_results(tmp_path / "a") + read_results(tmp_path / "b")
    table = gaps(results, [("a", "b")])
    a, b = list(scores["a"].values()), list(scores["b"].values())
    gap = 100 * (sum(a) / 3 - sum(b) / 3)
    se = 100 * (np.var(a, ddof=1) / 3 + np.var(b, ddof=1) / 3) ** 0.5
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    cell = f"{gap:+.1f} ± {se:.1f} (p {p:.2f})"
    assert f"| a - b | {cell} | {cell} |" in table  # rte, average
    with pytest.raises(ValueError, match="no results for b; models: a"):
        gaps(read_results(tmp_path / "a"), [("a", "b")])


def test_the_selected_step_is_what_the_test_file_scores(pretrained, shared_data, tmp_path):
    """With a test file (here the dev file itself), the test score is that of the selected step."""
    import finetune_glue
    test_file = shared_data / "leaner" / "glue" / "wnli_validation.jsonl"
    cfg = glue_cfg("--task=wnli", f"--init_from={pretrained}", f"--glue_dir={shared_data}",
                   f"--out_dir={tmp_path}", "--epochs=2", "--batch_size=32", "--evals_per_epoch=4",
                   f"--test_file={test_file}")
    (result,) = finetune_glue.sweep(cfg)
    assert result["test"] == pytest.approx(result["dev"])
    assert "| wnli (acc) | average |" in (tmp_path / "summary.md").read_text()


def test_tasks_without_a_train_file_hold_out_part_of_validation(pretrained, shared_data, tmp_path):
    import finetune_glue
    cfg = glue_cfg("--task=sst2", f"--init_from={pretrained}", f"--glue_dir={shared_data}",
                   "--dev_fraction=0.25")
    start = finetune_glue.resolve_start(cfg)
    data = finetune_glue.load_task(cfg, "sst2", start.tokenizer)
    assert data.held_out and len(data.train.labels) + len(data.dev["dev"].labels) == 421
    assert len(data.dev["dev"].labels) == round(421 * 0.25)
    assert "25% held out (seed 0)" in data.dev["dev"].source and "no train file" in data.train.source
    mnli = finetune_glue.load_task(cfg, "mnli", start.tokenizer)
    assert set(mnli.dev) == {"dev", "dev_mm"} and len(mnli.train.labels) == 4200 + 4204 - 1050 - 1051


def test_a_mamba_from_scratch_fine_tunes(leaner_small, shared_data, tmp_path):
    """The from-scratch baseline of the other architecture: model = MambaConfig(...) in a config file."""
    import finetune_glue
    path = tmp_path / "mamba.py"
    path.write_text("from model_mamba import MambaConfig\nmodel = MambaConfig(mixer='mamba2', n_layer=2, "
                    "n_embd=64, d_state=16, headdim=16, chunk_size=16, mlp_hidden=128)\n")
    cfg = glue_cfg(str(path), "--task=rte", "--init_from=scratch", f"--tokenizer={leaner_small}",
                   f"--glue_dir={shared_data}", f"--out_dir={tmp_path / 'out'}", "--epochs=1", "--max_train=128")
    (result,) = finetune_glue.sweep(cfg)
    assert result["model"] == "scratch_mamba" and result["settings"]["model"]["__class__"] == "MambaConfig"
    assert result["steps"] == 4 and result["init_report"] is None and 0 <= result["dev"] <= 1


# ------------------------------------------------------------------ sweeps

def test_killed_sweep_resumes_without_redoing_finished_runs(leaner_small, shared_data, tmp_path):
    out = tmp_path / "sweep"
    cmd = ["finetune_glue.py", "--task=rte", "--init_from=scratch", f"--tokenizer={leaner_small}",
           *TINY_MODEL, *FAST, "--seq_len=128", f"--glue_dir={shared_data}", f"--out_dir={out}",
           "--lrs=1e-3,2e-3", "--seeds=1", "--epochs=3", "--max_train=640"]
    proc = subprocess.Popen([sys.executable, *cmd], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = out / "rte" / "lr0.001_seed1" / "result.json"
    second = out / "rte" / "lr0.002_seed1" / "result.json"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not first.exists() and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert first.exists() and not second.exists(), "the kill did not land between the two runs"
    before = (first.read_text(), first.stat().st_mtime_ns)
    resumed = run_script(*cmd)
    assert "rte lr 0.001 seed 1: done earlier" in resumed.stdout and "1 of 2 runs to do" in resumed.stdout
    assert (first.read_text(), first.stat().st_mtime_ns) == before
    results = [json.loads(line) for line in resumed.stdout.splitlines() if line.startswith("{")]
    assert [(r["task"], r["lr"]) for r in results] == [("rte", 2e-3)]
    assert json.loads(second.read_text())["settings"]["init_from"] == ""
    assert "| scratch_llama |" in (out / "summary.md").read_text()
    # a changed setting is not silently mixed with the finished runs
    changed = run_script(*cmd[:-1], "--max_train=320", check=False)
    assert changed.returncode == 2
    assert "was run with other settings (max_train, train_examples: 640 there, 320 now)" in changed.stderr


def test_report_over_sweeps(tmp_path):
    from tinyhelen.glue_report import read_results, write_summary

    def result(model, task, lr, seed, dev, held_out=False):
        r = {"model": model, "task": task, "lr": lr, "seed": seed, "dev": dev, "majority_dev": 0.5,
             "data": {"dev_held_out_of_validation": held_out}}
        if task == "mnli":
            r["dev_mm"] = dev - 0.1
        path = tmp_path / model / task / f"lr{lr:g}_seed{seed}" / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(r))

    for seed, noise in ((1, 0.0), (2, 0.02)):
        result("a", "rte", 1e-3, seed, 0.60 + noise)
        result("a", "rte", 1e-4, seed, 0.55 + noise)   # the lower mean: not selected
        result("a", "mnli", 1e-3, seed, 0.40 + noise, held_out=True)
    printed = write_summary(read_results(tmp_path / "a"), tmp_path / "summary")
    table = (tmp_path / "summary.md").read_text()
    assert printed == table
    # rte 0.60/0.62, mnli-m 0.40/0.42 and mnli-mm 0.30/0.32; per-seed average of rte and mean(m, mm)
    assert "| a | 41.0 ± 1.4 | 31.0 ± 1.4 | 61.0 ± 1.4 | 48.5 ± 1.4 |" in table
    assert "mnli-m (acc) † | mnli-mm (acc) † | rte (acc) |" in table
    assert "| a | 0.001 (2) | 0.001 (2) | 0.001 (2) |" in table
    assert (tmp_path / "summary.png").stat().st_size > 1000


# ------------------------------------------------------------------ errors before any compute

def _main_error(capsys, *flags) -> str:
    import finetune_glue
    with pytest.raises(SystemExit) as e:
        config_lib.run_cli(finetune_glue.main, finetune_glue.GlueConfig(), [*FAST, *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_unknown_task_is_a_config_error(capsys):
    err = _main_error(capsys, "--task=rte,colaa", "--init_from=scratch")
    assert "task must be all or a comma list of cola, sst2, mrpc" in err and "'rte,colaa'" in err


def test_missing_files_name_the_file(pretrained, shared_data, tmp_path, capsys):
    glue = tmp_path / "glue"
    glue.mkdir()
    (glue / "rte_validation.jsonl").write_text((shared_data / "leaner/glue/rte_validation.jsonl").read_text())
    err = _main_error(capsys, "--task=cola", f"--init_from={pretrained}", f"--glue_dir={glue}",
                      "--seq_len=128")
    assert f"{glue}/cola_validation.jsonl not found" in err
    err = _main_error(capsys, "--task=rte", f"--init_from={pretrained}", f"--glue_dir={shared_data}",
                      "--seq_len=128", f"--test_file={tmp_path / 'rte_test.jsonl'}")
    assert f"file not found: {tmp_path / 'rte_test.jsonl'}" in err
    err = _main_error(capsys, "--task=rte", f"--init_from={tmp_path / 'no_run'}")
    assert f"{tmp_path / 'no_run'} does not exist" in err
    err = _main_error(capsys, "--task=rte", "--init_from=scratch")
    assert "--init_from=scratch needs --tokenizer" in err


def test_a_label_of_the_wrong_type_names_file_and_line(pretrained, shared_data, tmp_path, capsys):
    glue = tmp_path / "glue"
    glue.mkdir()
    rows = (shared_data / "leaner/glue/rte_train.jsonl").read_text().splitlines()[:40]
    bad = json.loads(rows[2])
    bad["label"] = "entailment"
    rows[2] = json.dumps(bad)
    (glue / "rte_train.jsonl").write_text("\n".join(rows) + "\n")
    (glue / "rte_validation.jsonl").write_text((shared_data / "leaner/glue/rte_validation.jsonl").read_text())
    err = _main_error(capsys, "--task=rte", f"--init_from={pretrained}", f"--glue_dir={glue}",
                      "--seq_len=128")
    assert f"{glue}/rte_train.jsonl:3: field 'label' is str" in err
    assert "entailment" in err and "expected int" in err
    row = {"sentence1": "a", "sentence2": "b", "label": 2.0, "idx": 0}
    (glue / "stsb_validation.jsonl").write_text(json.dumps(row) + "\n")
    (glue / "stsb_train.jsonl").write_text(json.dumps({**row, "label": 7.5}) + "\n")
    err = _main_error(capsys, "--task=stsb", f"--init_from={pretrained}", f"--glue_dir={glue}",
                      "--seq_len=128")
    assert f"{glue}/stsb_train.jsonl:1: stsb label 7.5 is outside the similarity range 0-5" in err
