"""tinyhelen/runs.py: every stage opens a run one way. A real (tiny) trained run folder, its ckpt.pt
and the transformers folder export.py writes from it give the same model outputs, the same tokenizer
and the same data meta; a run without a tokenizer is a CheckpointError that says what to do; the
tokenizer sources the stages accept (a standard name, a prepared data folder, a file) all work."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tinyhelen import config as config_lib
from tinyhelen import interop
from tinyhelen.checkpoint import CheckpointError, load_model
from tinyhelen.runs import load_run, load_tokenizer_from
from conftest import run_script

TINY = ["--model.n_layer=2", "--model.n_embd=64", "--model.n_head=4", "--model.n_kv_head=2",
        "--model.ffn_hidden=176", "--model.max_seq_len=64", "--seq_len=64", "--batch_size=4",
        "--compile=false", "--dtype=fp32", "--threads=1", "--peak_flops=1e10", "--sample_tokens=0",
        "--warmup_steps=2", "--lr=3e-3", "--max_steps=6", "--eval_every=6", "--eval_steps=1"]
TEXT = "Once upon a time, a little cat sat on the warm mat and looked at the sun."


@pytest.fixture(scope="module")
def trained(leaner_small, tmp_path_factory):
    """A run folder exactly as train.py leaves it (ckpt.pt, tokenizer.json, metrics), and its export."""
    import export
    import train
    run = tmp_path_factory.mktemp("run")
    train.pretrain(config_lib.parse_args(train.TrainConfig(), [f"--data_dir={leaner_small}",
                                                               f"--out_dir={run}", *TINY]))
    hf = export.export(export.ExportConfig(out_dir=str(run), hf_dir=str(run / "hf")))
    return run, hf


def logits_of(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([[tokenizer.eot_id] + tokenizer.encode(TEXT)]))[0]


def test_a_run_its_checkpoint_and_its_export_open_alike(trained, leaner_small):
    run, hf = trained
    opened = {"run folder": load_run(run), "ckpt.pt": load_run(run / "ckpt.pt"), "export": load_run(hf)}
    model, tok, meta = opened["run folder"]
    # the reference: what train.py recorded, read without load_run
    saved, ckpt = load_model(run)
    data_meta = json.loads((leaner_small / "meta.json").read_text())
    assert meta == ckpt["data_meta"] == data_meta and tok.eot_id == meta["eot_id"]
    assert tok.name == meta["tokenizer_name"] and tok.vocab_size == meta["vocab_size"]
    want = logits_of(saved, tok)
    for source, (m, t, mt) in opened.items():
        assert not m.training and type(m) is type(saved) and m.config == saved.config, source
        assert (t.name, t.vocab_size, t.eot_id) == (tok.name, tok.vocab_size, tok.eot_id), source
        assert t.encode(TEXT) == tok.encode(TEXT) and t.decode(t.encode(TEXT)) == TEXT, source
        assert mt == meta, source
        torch.testing.assert_close(logits_of(m, t), want, atol=1e-5, rtol=1e-5, msg=source)


def test_sample_py_reads_the_export_as_it_reads_the_run(trained):
    run, hf = trained
    flags = ["--prompt=The dog", "--temperature=0", "--num_samples=1", "--max_new_tokens=12", "--device=cpu"]
    assert run_script("sample.py", f"--out_dir={hf}", *flags).stdout == \
        run_script("sample.py", f"--out_dir={run}", *flags).stdout


def test_a_run_without_a_tokenizer_is_a_checkpoint_error(trained, leaner_small, tmp_path, monkeypatch):
    from tinyhelen import pretrained
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "imported"))  # no import lands in the repo's out/
    run, _ = trained
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(run / "ckpt.pt", bare / "ckpt.pt")  # its data meta names the data folder's file
    for path in (bare, bare / "ckpt.pt"):
        with pytest.raises(CheckpointError, match=f"no tokenizer found for {bare}: expected "
                                                  f"{bare / 'tokenizer.json'}"):
            load_run(path)
    # a stage that takes --tokenizer names one instead: here the prepared data folder
    model, tok, meta = load_run(bare, tokenizer=str(leaner_small))
    assert tok.encode(TEXT) == load_tokenizer_from(run).encode(TEXT) and meta["eot_id"] == tok.eot_id
    # a transformers folder that export.py did not write carries no tokenizer of ours and no meta
    plain = tmp_path / "plain"
    interop.save_hf(model, plain)
    with pytest.raises(CheckpointError, match="tinyhelen_tokenizer.json"):
        load_run(plain)
    _, tok2, meta2 = load_run(plain, tokenizer=str(run / "tokenizer.json"))
    assert meta2 == {} and tok2.encode(TEXT) == tok.encode(TEXT)
    # with a tokenizer.json of its own it is a model saved by transformers, imported with that tokenizer
    # (tinyhelen/pretrained.py): one that is not a fast tokenizer says so
    (plain / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="is not a transformers fast tokenizer"):
        load_run(plain)
    # and the commands say so, with exit code 2 and no traceback
    bad = run_script("sample.py", f"--out_dir={bare}", "--device=cpu", check=False)
    assert bad.returncode == 2 and "no tokenizer found" in bad.stderr and "Traceback" not in bad.stderr


def test_missing_paths_say_what_to_give(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist: give a run folder"):
        load_run(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_run(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_tokenizer_from(tmp_path / "nothing")


def test_tokenizer_sources(trained, leaner_small, tmp_path):
    run, hf = trained
    ours = load_tokenizer_from(run)
    for spec in (leaner_small, leaner_small / "tokenizer.json", run / "ckpt.pt", hf):
        assert load_tokenizer_from(spec).encode(TEXT) == ours.encode(TEXT), spec
    # a standard tokenizer, named by the name, by a run's meta (no file to copy), or by a data folder
    cl100k = load_tokenizer_from("cl100k_base")
    assert cl100k.name == "cl100k_base"
    (tmp_path / "run").mkdir()
    assert load_tokenizer_from(tmp_path / "run", {"tokenizer": "cl100k_base"}).name == "cl100k_base"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text(json.dumps({"tokenizer": "cl100k_base"}))
    assert load_tokenizer_from(tmp_path / "data").encode(TEXT) == cl100k.encode(TEXT)
