"""Parameter inheritance (inherit.py): the inherited weights are exactly the selected slices of the
source (checked through interop's transformers layout, an independent split of the fused matrices),
the inherited model's loss equals the source's with the same units masked out, and the inherited run
trains, samples, evaluates and exports with the normal commands."""

from __future__ import annotations

import json

import pytest
import torch

import inherit
from tinyhelen import interop
from model_llama import Llama, LlamaConfig

from conftest import run_script

# eps ~ 0: a model with fewer hidden channels normalises by a mean over fewer entries, which the masked
# reference below matches by scaling its norm gains; eps would break that by about eps / mean(x²)
SRC = LlamaConfig(vocab_size=96, n_layer=4, n_embd=48, n_head=6, n_kv_head=3, ffn_hidden=80, max_seq_len=64,
                  norm_eps=1e-12)


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    model = Llama(SRC)
    with torch.no_grad():  # larger weights than the init so that every unit matters to the loss
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model.eval()


def batches(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t = torch.randint(0, SRC.vocab_size, (3, 17), generator=g)
        out.append((t[:, :-1], t[:, 1:]))
    return out


def same(got, want):
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def hf(model):
    return {k: v.detach() for k, v in interop._llama_tensors(model).items()}


def heads(w, n):  # (n·Dh, D) -> (n, Dh, D): one block of rows per head
    return w.view(n, -1, w.size(-1))


@pytest.mark.parametrize("criterion", ["l2", "taylor", "random"])
def test_weights_are_the_selected_slices(source, criterion):
    tgt = LlamaConfig(**{**SRC.__dict__, "n_layer": 2, "n_embd": 32, "n_head": 4, "n_kv_head": 2,
                         "ffn_hidden": 40})
    vocab = list(range(0, 96, 2))
    small, sel = inherit.inherit_model(source, tgt, criterion, "ends", batches(), vocab=vocab)
    assert sel.layers == [0, 3] and small.config.vocab_size == 48
    a, b = hf(source), hf(small)
    ch, rows = torch.tensor(sel.channels), torch.tensor(vocab)
    assert len(set(sel.channels)) == 32
    same(b["model.embed_tokens.weight"], a["model.embed_tokens.weight"][rows][:, ch])
    same(b["lm_head.weight"], a["lm_head.weight"][rows][:, ch])
    same(b["model.norm.weight"], a["model.norm.weight"][ch])
    for new, old in enumerate(sel.layers):
        p, q = f"model.layers.{old}.", f"model.layers.{new}."
        qs, kvs, ns = map(torch.tensor, (sel.q_heads[new], sel.kv_heads[new], sel.neurons[new]))
        assert all(h // 2 in sel.kv_heads[new] for h in sel.q_heads[new])  # each query keeps its kv head
        for name, w in (("q_proj", heads(a[p + "self_attn.q_proj.weight"], 6)[qs]),
                        ("k_proj", heads(a[p + "self_attn.k_proj.weight"], 3)[kvs]),
                        ("v_proj", heads(a[p + "self_attn.v_proj.weight"], 3)[kvs])):
            same(b[q + f"self_attn.{name}.weight"], w.flatten(0, 1)[:, ch])
        o = a[p + "self_attn.o_proj.weight"].view(48, 6, 8)[:, qs].flatten(1)
        same(b[q + "self_attn.o_proj.weight"], o[ch])
        for name in ("gate_proj", "up_proj"):
            same(b[q + f"mlp.{name}.weight"], a[p + f"mlp.{name}.weight"][ns][:, ch])
        same(b[q + "mlp.down_proj.weight"], a[p + "mlp.down_proj.weight"][ch][:, ns])
        for name in ("input_layernorm", "post_attention_layernorm"):
            same(b[q + f"{name}.weight"], a[p + f"{name}.weight"][ch])


def test_tied_embeddings_stay_tied(source):
    tied = LlamaConfig(**{**SRC.__dict__, "tie_embeddings": True})
    torch.manual_seed(3)
    big = Llama(tied)
    small, sel = inherit.inherit_model(big, LlamaConfig(**{**tied.__dict__, "n_embd": 32, "n_head": 4,
                                                          "n_kv_head": 2}), "taylor", "ends", batches())
    assert small.lm_head.weight is small.tok_emb.weight
    same(small.tok_emb.weight.detach(), big.tok_emb.weight.detach()[:, sel.channels])


def masked(source, sel):
    """The source with every unit the selection drops switched off: a skipped layer's output
    projections zeroed (the block adds nothing), a dropped query head's rows of the output projection
    zeroed, a dropped neuron's row of down zeroed. A dropped hidden channel: zero in the embedding
    and in every projection that writes into the residual stream, so it stays exactly 0; then
    RMSNorm's mean over D entries is D'/D times the small model's mean over D', which scaling every
    norm gain by sqrt(D'/D) undoes."""
    m = Llama(source.config)
    m.load_state_dict(source.state_dict())
    dh = SRC.n_embd // SRC.n_head
    dropped = [c for c in range(SRC.n_embd) if c not in sel.channels]
    scale = (len(sel.channels) / SRC.n_embd) ** 0.5
    with torch.no_grad():
        m.tok_emb.weight[:, dropped] = 0
        for norm in [m.norm] + [n for b in m.blocks for n in (b.attn_norm, b.mlp_norm)]:
            norm.weight *= scale
        for block in m.blocks:
            block.attn.out.weight[:, dropped] = 0
            block.mlp.down.weight[:, dropped] = 0
        for i, block in enumerate(m.blocks):
            if i not in sel.layers:
                block.attn.out.weight.zero_()
                block.mlp.down.weight.zero_()
                continue
            j = sel.layers.index(i)
            for h in range(SRC.n_head):
                if h not in sel.q_heads[j]:
                    block.attn.out.weight[h * dh:(h + 1) * dh] = 0
            for n in range(SRC.ffn_hidden):
                if n not in sel.neurons[j]:
                    block.mlp.down.weight[n] = 0
    return m.eval()


@pytest.mark.parametrize("criterion,layers,sizes", [
    ("l2", "ends", {"n_layer": 3, "ffn_hidden": 50}),                        # layers and neurons only
    ("random", "ends", {"n_embd": 32, "n_head": 4, "n_kv_head": 2}),         # heads (and so hidden size)
    ("taylor", "importance", {"n_layer": 2, "n_embd": 24, "n_head": 3, "n_kv_head": 3, "ffn_hidden": 30})])
def test_loss_equals_the_masked_source(source, criterion, layers, sizes):
    """Heads are kept whole (head dim fixed), so with n_embd = n_head x head dim fewer heads means
    fewer hidden channels: that case is compared against the source with those channels masked too."""
    tgt = LlamaConfig(**{**SRC.__dict__, **sizes})
    small, sel = inherit.inherit_model(source, tgt, criterion, layers, batches())
    reference = masked(source, sel)
    for x, y in batches(3, seed=7):
        with torch.no_grad():
            got, want = small(x, y)[1], reference(x, y)[1]
            full = source(x, y)[1]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert abs(float(full - want)) > 1e-3  # the masking did remove something


def test_vocabulary_cut_equals_the_source_with_dropped_ids_masked(source):
    """A cut vocabulary (the compact tokenizer's base ids) on top of cut layers, heads and neurons:
    on text of kept ids, the child's loss is the masked source's with the logits of the dropped ids
    set to -inf (their rows removed from the softmax), and its embedding and head rows are the kept ids'."""
    vocab = sorted(torch.randperm(SRC.vocab_size, generator=torch.Generator().manual_seed(5))[:40].tolist())
    tgt = LlamaConfig(**{**SRC.__dict__, "n_layer": 3, "n_embd": 32, "n_head": 4, "n_kv_head": 2,
                         "ffn_hidden": 50})
    small, sel = inherit.inherit_model(source, tgt, "l2", "ends", vocab=vocab)
    same(small.tok_emb.weight.detach(), source.tok_emb.weight.detach()[vocab][:, sel.channels])
    same(small.lm_head.weight.detach(), source.lm_head.weight.detach()[vocab][:, sel.channels])
    reference, kept = masked(source, sel), torch.tensor(vocab)
    new_id = torch.full((SRC.vocab_size,), -1, dtype=torch.long)
    new_id[kept] = torch.arange(len(vocab))
    g = torch.Generator().manual_seed(9)
    text = kept[torch.randint(0, len(vocab), (3, 17), generator=g)]  # base ids, all kept
    x, y = text[:, :-1], text[:, 1:]
    with torch.no_grad():
        got = small(new_id[x], new_id[y])[1]
        logits = reference(x)[0]
        logits[..., [i for i in range(SRC.vocab_size) if i not in vocab]] = float("-inf")
        want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_tied_source_gives_an_untied_target_but_not_the_reverse(source):
    torch.manual_seed(4)
    tied = Llama(LlamaConfig(**{**SRC.__dict__, "tie_embeddings": True}))
    small, sel = inherit.inherit_model(tied, LlamaConfig(**{**SRC.__dict__, "n_layer": 2}), "l2", "ends",
                                       vocab=[0, 5, 7])
    assert small.lm_head.weight is not small.tok_emb.weight  # two tensors, equal at the start
    same(small.lm_head.weight.detach(), tied.tok_emb.weight.detach()[[0, 5, 7]][:, sel.channels])
    same(small.tok_emb.weight.detach(), small.lm_head.weight.detach())
    with pytest.raises(inherit.InheritError, match="tie_embeddings=False"):
        inherit.inherit_model(source, LlamaConfig(**{**SRC.__dict__, "tie_embeddings": True}))


def test_an_epsilon_within_float_rounding_is_the_sources(source):
    """An imported LLM's fp32 1e-5 reads back as 9.9999997e-06: a target written with 1e-5 is taken,
    and the child gets the source's exact value."""
    src = Llama(LlamaConfig(**{**SRC.__dict__, "norm_eps": 9.999999747378752e-06}))
    small, _ = inherit.inherit_model(src, LlamaConfig(**{**SRC.__dict__, "norm_eps": 1e-5, "n_layer": 2}))
    assert small.config.norm_eps == 9.999999747378752e-06


def test_layer_importance_is_the_loss_rise(source):
    b = batches()
    rises = inherit.layer_importance(source, b)
    base = inherit.batch_loss(source, b)
    for i, rise in enumerate(rises):
        sel = inherit.Selection([j for j in range(4) if j != i], [list(range(6))] * 3, [list(range(3))] * 3,
                                [list(range(80))] * 3, list(range(48)))
        assert inherit.batch_loss(masked(source, sel), b) - base == pytest.approx(rise, abs=1e-5)
    small, sel = inherit.inherit_model(source, LlamaConfig(**{**SRC.__dict__, "n_layer": 2}), "l2",
                                       "importance", b)
    assert sel.layers == sorted(sorted(range(4), key=lambda i: -rises[i])[:2])


def test_l2_keeps_the_largest_units(source):
    with torch.no_grad():
        big = Llama(SRC)
        big.load_state_dict(source.state_dict())
        big.blocks[0].mlp.down.weight[5] *= 100  # neuron 5 of layer 0 is now by far the largest
    tgt = LlamaConfig(**{**SRC.__dict__, "ffn_hidden": 1})
    _, sel = inherit.inherit_model(big, tgt, "l2", "ends")
    assert sel.neurons[0] == [5]


@pytest.mark.parametrize("change,message", [
    ({"n_layer": 5}, "larger than the source"), ({"ffn_hidden": 81}, "larger than the source"),
    ({"n_embd": 40, "n_head": 4, "n_kv_head": 2}, "head dim differs"),
    ({"n_head": 6, "n_kv_head": 1}, "query heads per kv head"),
    ({"n_embd": 40, "n_head": 5, "n_kv_head": 5}, "larger"), ({"rope_theta": 1e4}, "rope_theta")])
def test_bad_targets_are_explained(source, change, message):
    with pytest.raises(inherit.InheritError, match=message):
        inherit.inherit_model(source, LlamaConfig(**{**SRC.__dict__, **change}))


def test_mismatched_family_is_explained(source):
    from model_mamba import MambaConfig
    with pytest.raises(inherit.InheritError, match="Llama family"):
        inherit.inherit_model(source, MambaConfig())


# ----------------------------------------------------------------------------- the commands

@pytest.fixture(scope="module")
def big_run(leaner_small, tmp_path_factory):
    from tinyhelen import config as config_lib
    import train
    out = tmp_path_factory.mktemp("big")
    cfg = config_lib.parse_args(train.TrainConfig(), [
        f"--data_dir={leaner_small}", f"--out_dir={out}", "--model.n_layer=3", "--model.n_embd=64",
        "--model.n_head=4", "--model.n_kv_head=2", "--model.ffn_hidden=128", "--model.max_seq_len=64",
        "--seq_len=64", "--batch_size=4", "--max_steps=6", "--eval_every=6", "--eval_steps=1",
        "--compile=false", "--dtype=fp32", "--threads=1", "--peak_flops=1e10", "--sample_tokens=0",
        "--warmup_steps=2"])
    train.pretrain(cfg)
    return out


def write_target(path, **kw):
    args = {"vocab_size": 2000, "n_layer": 2, "n_embd": 32, "n_head": 2, "n_kv_head": 1, "ffn_hidden": 64,
            "max_seq_len": 64, **kw}
    path.write_text("from model_llama import LlamaConfig\n"
                    f"model = LlamaConfig({', '.join(f'{k}={v!r}' for k, v in args.items())})\n")
    return path


@pytest.mark.slow  # eight commands, about a minute on 2 cores
def test_inherited_run_trains_samples_evaluates_exports(big_run, leaner_small, shared_data, tmp_path):
    target = write_target(tmp_path / "small.py")
    small = tmp_path / "small"
    result = run_script("inherit.py", f"--from={big_run}", f"--to={target}", f"--out_dir={small}",
                        "--criterion=taylor", "--layers=importance", "--batches=2", "--batch_size=2")
    assert "non-embedding parameters inherited" in result.stdout
    record = json.loads((small / "inherit.json").read_text())
    assert len(record["layers"]) == 2 and record["criterion"] == "taylor"
    assert (small / "tokenizer.json").is_file()
    run = tmp_path / "continued"
    result = run_script("train.py", f"--data_dir={leaner_small}", f"--out_dir={run}", f"--init_from={small}",
                        "--seq_len=64", "--batch_size=4", "--max_steps=3", "--eval_every=3", "--eval_steps=1",
                        "--compile=false", "--dtype=fp32", "--threads=1", "--peak_flops=1e10",
                        "--sample_tokens=0", "--warmup_steps=1")
    assert "init_from" in result.stdout and " 0 new" in result.stdout and " 0 dropped" in result.stdout
    assert (run / "ckpt.pt").is_file()
    for out in (small, run):
        assert "--- sample 1 ---" in run_script("sample.py", f"--out_dir={out}", "--num_samples=1",
                                                "--max_new_tokens=8", "--device=cpu").stdout
        summary = json.loads(run_script("evaluate.py", f"--out_dir={out}", f"--data={shared_data}",
                                        "--genres=math", "--max_tokens_per_genre=2000", "--device=cpu",
                                        "--split=validation").stdout.strip().splitlines()[-1])
        assert summary["bits_per_byte"] > 0
    run_script("export.py", f"--out_dir={small}", f"--hf_dir={tmp_path / 'hf'}")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_hidden_layers"] == 2


def test_taylor_scores_are_kept_and_reused_only_for_the_same_batches(big_run, leaner_small, tmp_path, monkeypatch):
    """A second cut of the same source on the same batches reads SOURCE/inherit_scores/ instead of
    scoring again, and selects what a fresh scoring selects; other batches score afresh."""
    import shutil
    import inherit as inherit_mod
    source = tmp_path / "source"
    shutil.copytree(big_run, source)
    calls = []
    real = inherit_mod.scores_taylor

    def counted(model, batches):
        calls.append(len(batches))
        return real(model, batches)
    monkeypatch.setattr(inherit_mod, "scores_taylor", counted)

    def cut(name, target, **kw):
        args = {"criterion": "taylor", "data_dir": str(leaner_small), "batches": 2, "batch_size": 2,
                "seq_len": 32, **kw}
        cfg = inherit_mod.InheritConfig(source=str(source), to=str(target), out_dir=str(tmp_path / name), **args)
        inherit_mod.inherit(cfg)
        return json.loads((tmp_path / name / "inherit.json").read_text())
    first = cut("a", write_target(tmp_path / "a.py"))
    assert calls == [2] and len(list((source / "inherit_scores").glob("taylor-*.pt"))) == 1
    wider = cut("b", write_target(tmp_path / "b.py", n_embd=64, n_head=4, n_kv_head=2))
    assert calls == [2]  # reused: the target differs, the batches do not
    again = cut("c", write_target(tmp_path / "c.py"))
    assert calls == [2] and {k: again[k] for k in ("channels", "q_heads", "neurons")} == \
        {k: first[k] for k in ("channels", "q_heads", "neurons")}
    assert wider["neurons"] != first["neurons"] or wider["channels"] != first["channels"]
    shutil.rmtree(source / "inherit_scores")
    fresh = cut("d", write_target(tmp_path / "d.py"))
    assert calls == [2, 2] and fresh["channels"] == first["channels"]
    cut("e", write_target(tmp_path / "e.py"), seed=0, data_root="")  # same batches again: reused
    cut("f", write_target(tmp_path / "f.py"), batches=1)            # other batches: scored again
    assert calls == [2, 2, 1]


@pytest.mark.parametrize("kw,message", [({"n_layer": 4}, "larger than the source"),
                                        ({"n_embd": 40, "n_head": 4}, "head dim")])
def test_command_errors_exit_2(big_run, tmp_path, kw, message):
    target = write_target(tmp_path / "t.py", **kw)
    result = run_script("inherit.py", f"--from={big_run}", f"--to={target}", f"--out_dir={tmp_path / 'o'}",
                        check=False)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "o").exists()


def test_command_family_and_missing_errors_exit_2(big_run, tmp_path):
    target = tmp_path / "m.py"
    target.write_text("from model_mamba import MambaConfig\nmodel = MambaConfig()\n")
    result = run_script("inherit.py", f"--from={big_run}", f"--to={target}", f"--out_dir={tmp_path / 'o'}",
                        check=False)
    assert result.returncode == 2 and "Llama family" in result.stderr
    result = run_script("inherit.py", f"--from={tmp_path / 'nothing'}", f"--to={target}",
                        f"--out_dir={tmp_path / 'o'}", check=False)
    assert result.returncode == 2 and "no checkpoint" in result.stderr


@pytest.mark.slow  # a cl100k_base model (100,277 rows) and four commands, about a minute on 2 cores
def test_compact_vocabulary_from_a_cl100k_run(shared_data, tmp_path):
    """The paper's pipeline: a run on cl100k_base, a compact tokenizer cut from it, a child whose
    embedding and head rows are the parent's rows of the kept ids, trained on compact-prepared data."""
    from tinyhelen import config as config_lib
    import train
    from tinyhelen.checkpoint import load_checkpoint
    from data.prepare import PrepareConfig, prepare
    from data.tokenizer import load_tokenizer
    big_data, small_data = tmp_path / "cl100k", tmp_path / "compact"
    for out, tok in ((big_data, "cl100k_base"), (small_data, "compact:1000")):
        prepare(PrepareConfig(data_root=str(shared_data), genres="conversation", tokenizer=tok,
                              out_dir=str(out), progress=False))
    parent = tmp_path / "parent"
    train.pretrain(config_lib.parse_args(train.TrainConfig(), [
        f"--data_dir={big_data}", f"--out_dir={parent}", "--model.vocab_size=100277", "--model.n_layer=2",
        "--model.n_embd=32", "--model.n_head=2", "--model.n_kv_head=2", "--model.ffn_hidden=64",
        "--model.max_seq_len=32", "--seq_len=32", "--batch_size=2", "--max_steps=2", "--eval_every=2",
        "--eval_steps=1", "--compile=false", "--dtype=fp32", "--threads=1", "--peak_flops=1e10",
        "--sample_tokens=0", "--warmup_steps=1"]))
    target = write_target(tmp_path / "child.py", n_layer=1, n_embd=32, n_head=2, n_kv_head=2, ffn_hidden=32,
                          max_seq_len=32)
    child = tmp_path / "child"
    run_script("inherit.py", f"--from={parent}", f"--to={target}", f"--out_dir={child}",
               f"--tokenizer={small_data / 'tokenizer.json'}")
    tok = load_tokenizer(child / "tokenizer.json")
    rows = torch.tensor(tok.compact["base_ids"])
    a, b = load_checkpoint(parent)["model"], load_checkpoint(child)
    assert b["model"]["tok_emb.weight"].shape == (1000, 32) and b["data_meta"]["vocab_size"] == 1000
    for key in ("tok_emb.weight", "lm_head.weight"):
        torch.testing.assert_close(b["model"][key], a[key][rows], rtol=0, atol=0)
    run = tmp_path / "run"
    run_script("train.py", f"--data_dir={small_data}", f"--out_dir={run}", f"--init_from={child}",
               "--seq_len=32", "--batch_size=2", "--max_steps=2", "--eval_every=2", "--eval_steps=1",
               "--compile=false",
               "--dtype=fp32", "--threads=1", "--peak_flops=1e10", "--sample_tokens=0", "--warmup_steps=1")
    summary = json.loads(run_script("evaluate.py", f"--out_dir={run}", f"--data={shared_data}",
                                    "--genres=math", "--max_tokens_per_genre=500", "--device=cpu",
                                    "--split=validation").stdout.strip().splitlines()[-1])
    assert summary["tokenizer"] == "compact-1K"


def test_compact_tokenizer_of_another_base_is_refused(big_run, tmp_path):
    import numpy as np
    from data.compact_tokenizer import build_compact
    from data.tokenizer import Tokenizer
    base = Tokenizer.cl100k()
    build_compact(base, np.zeros(base.vocab_size, dtype=np.int64), 300).save(tmp_path / "c.json")
    result = run_script("inherit.py", f"--from={big_run}", f"--to={write_target(tmp_path / 't.py')}",
                        f"--out_dir={tmp_path / 'o'}", f"--tokenizer={tmp_path / 'c.json'}", check=False)
    assert result.returncode == 2 and "cut from the source's tokenizer" in result.stderr
