"""Equal-budget models per tokenizer (studies/tokenizer_choice.py): each tokenizer's data is prepared once, each
model differs only in its vocabulary, bits per byte are evaluate.py's, and a restart trains nothing."""

from __future__ import annotations

import json
import math

import pytest

from tinyhelen import config as config_lib
from studies import tokenizer_choice as tokenizer_study


@pytest.fixture
def base_config(tmp_path):
    path = tmp_path / "base.py"
    path.write_text(
        "from model_llama import LlamaConfig\n"
        "model = LlamaConfig(n_layer=1, n_embd=32, n_head=2, n_kv_head=2, ffn_hidden=64, max_seq_len=32)\n"
        "seq_len = 32\nbatch_size = 4\nmax_steps = 4\neval_every = 4\neval_steps = 1\nwarmup_steps = 1\n"
        "log_every = 2\nckpt_every = 4\ncompile = False\ndtype = 'fp32'\nthreads = 1\npeak_flops = 1e10\n")
    return path


@pytest.mark.parametrize("equal", ["tokens", "bytes"])
def test_study_compares_tokenizers(shared_data, base_config, tmp_path, monkeypatch, equal):
    import evaluate
    import train
    out = tmp_path / "study"
    cfg = tokenizer_study.TokenizerStudyConfig(base=str(base_config), out_dir=str(out), genres="math",
                                               tokenizers=("compact:600", "compact:300"),
                                               data_root=str(shared_data), eval_tokens_per_genre=400,
                                               equal=equal)
    rows = tokenizer_study.study(cfg)
    assert [r["vocab_size"] for r in rows] == [600, 300]
    assert rows[0]["non_embedding_params"] == rows[1]["non_embedding_params"]  # only the vocabulary differs
    assert rows[0]["params"] - rows[1]["params"] == 2 * 300 * 32
    assert rows[0]["train_tokens_per_byte"] < rows[1]["train_tokens_per_byte"]
    for row in rows:
        run = out / f"{tokenizer_study.slug(row['tokenizer'])}_seed1" / "run"
        again = evaluate.evaluate(evaluate.EvalConfig(out_dir=str(run), data=str(shared_data),
                                                      split="validation", genres="math",
                                                      max_tokens_per_genre=400, device="cpu"))
        assert row["val_bits_per_byte"] == pytest.approx(again["bits_per_byte"])
        # the plotted curve: train.py's last validation loss in bits per byte of the validation text
        result = json.loads((run.parent / "result.json").read_text())
        tokens, bpb = tokenizer_study.bpb_curve(cfg, result)[-1]
        meta = json.loads((out / "data" / tokenizer_study.slug(row["tokenizer"]) / "meta.json").read_text())
        split = meta["splits"]["validation"]
        last_loss = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                     if "val_loss" in line][-1]["val_loss"]
        assert tokens == result["train_tokens"]
        assert bpb == pytest.approx(last_loss * split["tokens"] / (split["bytes"] + split["documents"]) / math.log(2))
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if equal == "tokens":
        assert rows[0]["steps"] == rows[1]["steps"] == 4
    else:  # the same bytes of text as the first tokenizer's run: more steps for the longer encoding
        ratio = rows[1]["train_tokens_per_byte"] / rows[0]["train_tokens_per_byte"]
        assert rows[0]["steps"] == 4 and rows[1]["steps"] == round(4 * ratio) > 4

    def no_training(cfg):
        raise AssertionError(f"retrained {cfg.out_dir}")
    monkeypatch.setattr(train, "pretrain", no_training)
    assert tokenizer_study.study(cfg) == rows
    assert json.loads((out / "summary.json").read_text()) == rows


def test_bad_settings_are_errors(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="equal"):
        config_lib.parse_args(tokenizer_study.TokenizerStudyConfig(), ["--equal=steps"])
    with pytest.raises(config_lib.ConfigError, match="seeds"):
        config_lib.parse_args(tokenizer_study.TokenizerStudyConfig(), ["--seeds=one"])
    with pytest.raises(SystemExit) as e:
        tokenizer_study.main(tokenizer_study.TokenizerStudyConfig(base=str(tmp_path / "none.py")))
    assert e.value.code == 2
