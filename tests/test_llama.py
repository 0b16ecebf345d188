"""model_llama.Llama against an independent oracle: transformers.LlamaForCausalLM on the same weights."""

from __future__ import annotations

import pytest
import torch
import transformers

from conftest import assert_compiled_matches_eager
from model_llama import KVCache, Llama, LlamaConfig
from tinyhelen import interop

ATOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These shapes are tiny: a second OpenMP thread only adds stalls on a busy shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**overrides) -> LlamaConfig:
    base = dict(vocab_size=97, n_layer=2, n_embd=48, n_head=4, n_kv_head=4, ffn_hidden=80,
                max_seq_len=64, rope_theta=10000.0, norm_eps=1e-5)
    return LlamaConfig(**{**base, **overrides})


def random_llama(cfg: LlamaConfig, seed: int = 0) -> Llama:
    """A model whose weights are far from the init (large matrices, norm gains != 1), so that
    parity tests exercise every parameter rather than near-uniform logits."""
    torch.manual_seed(seed)
    model = Llama(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.15)
            else:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model.eval()


def hf_twin(model: Llama) -> transformers.LlamaForCausalLM:
    """LlamaForCausalLM (eager attention: the plain reference path) holding model's weights.

    The weight mapping is written out here on purpose instead of calling interop.save_hf, so that
    these tests check the export mapping rather than reuse it."""
    c = model.config
    hd = c.n_embd // c.n_head
    hc = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.ffn_hidden,
        num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
        max_position_embeddings=c.max_seq_len, rope_theta=c.rope_theta, rms_norm_eps=c.norm_eps,
        tie_word_embeddings=c.tie_embeddings, bos_token_id=None, eos_token_id=None, pad_token_id=None,
        attn_implementation="eager")
    hf = transformers.LlamaForCausalLM(hc).eval()
    with torch.no_grad():
        hf.model.embed_tokens.weight.copy_(model.tok_emb.weight)
        hf.model.norm.weight.copy_(model.norm.weight)
        if not c.tie_embeddings:
            hf.lm_head.weight.copy_(model.lm_head.weight)
        # Rotary pairs: ours rotates dims (2j, 2j+1) of a head together, transformers (j, j + hd/2).
        # So their row j of a head is our row 2j, their row hd/2 + j our row 2j + 1.
        order = [2 * j for j in range(hd // 2)] + [2 * j + 1 for j in range(hd // 2)]

        def rotate_half_rows(rows, n_heads):
            return torch.cat([rows[h * hd: (h + 1) * hd][order] for h in range(n_heads)])

        for ours, theirs in zip(model.blocks, hf.model.layers):
            # our block matrices are stored (in, out); transformers' (out, in)
            qkv = ours.attn.qkv.weight.t()
            theirs.self_attn.q_proj.weight.copy_(rotate_half_rows(qkv[: c.n_head * hd], c.n_head))
            theirs.self_attn.k_proj.weight.copy_(
                rotate_half_rows(qkv[c.n_head * hd: (c.n_head + c.n_kv_head) * hd], c.n_kv_head))
            theirs.self_attn.v_proj.weight.copy_(qkv[(c.n_head + c.n_kv_head) * hd:])
            theirs.self_attn.o_proj.weight.copy_(ours.attn.out.weight.t())
            theirs.input_layernorm.weight.copy_(ours.attn_norm.weight)
            theirs.post_attention_layernorm.weight.copy_(ours.mlp_norm.weight)
            gate_up = ours.mlp.gate_up.weight.t()
            theirs.mlp.gate_proj.weight.copy_(gate_up[: c.ffn_hidden])
            theirs.mlp.up_proj.weight.copy_(gate_up[c.ffn_hidden:])
            theirs.mlp.down_proj.weight.copy_(ours.mlp.down.weight.t())
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == c.tie_embeddings
    return hf


def gradients_side_by_side(model: Llama, hf: transformers.LlamaForCausalLM):
    """(name, our gradient in transformers' layout, transformers' gradient) for every parameter of
    hf, after both models ran backward. Gradients are linear in the weights' layout, so hf_twin's
    mapping applied to our gradients must reproduce transformers' gradients. Overwrites model's
    weights with its gradients."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.grad)
    theirs = dict(hf.named_parameters())
    return [(name, mapped, theirs[name].grad) for name, mapped in hf_twin(model).named_parameters()]


VARIANTS = {  # name: config overrides
    "mha-untied": dict(n_kv_head=4, tie_embeddings=False),
    "gqa-tied": dict(n_kv_head=2, tie_embeddings=True),
    "mqa-untied-theta500k": dict(n_kv_head=1, rope_theta=500000.0),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_and_loss_match_transformers(variant):
    model = random_llama(tiny_config(**VARIANTS[variant]))
    hf = hf_twin(model)
    torch.manual_seed(1)
    idx = torch.randint(0, 97, (3, 37))  # odd T
    # Our targets are already shifted (targets[t] = idx[t+1]); -1 marks positions to ignore.
    targets = torch.cat([idx[:, 1:], torch.full((3, 1), -1)], dim=1)
    targets[0, 5:9] = -1
    labels = idx.clone()
    labels[0, 6:10] = -100  # the same positions, in HF's unshifted labels
    with torch.no_grad():
        logits, loss = model(idx, targets)
        ref = hf(idx, labels=labels)
        logits_only, no_loss = model(idx)
    assert no_loss is None
    assert logits.dtype == torch.float32 and logits.shape == (3, 37, 97)
    torch.testing.assert_close(logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits_only, logits, atol=0, rtol=0)
    torch.testing.assert_close(loss, ref.loss, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_match_transformers(variant):
    """The backward pass (hand-written for SwiGLU, complex-valued for rotary) against autograd
    through transformers' model: every parameter's gradient, mapped back through hf_twin's layout."""
    model = random_llama(tiny_config(**VARIANTS[variant])).train()
    hf = hf_twin(model).train()
    torch.manual_seed(2)
    idx = torch.randint(0, 97, (2, 29))
    targets = torch.cat([idx[:, 1:], torch.full((2, 1), -1)], dim=1)
    model(idx, targets)[1].backward()
    hf(idx, labels=idx).loss.backward()
    for name, ours, theirs in gradients_side_by_side(model, hf):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("tied", [False, True])
def test_save_hf_round_trip(tmp_path, tied):
    model = random_llama(tiny_config(n_kv_head=2, tie_embeddings=tied))
    interop.save_hf(model, tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.num_key_value_heads == 2 and hf.config.tie_word_embeddings == tied
    idx = torch.randint(0, 97, (2, 21))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=ATOL, rtol=0)

    # ... and back: an HF-saved folder loads into ours with the same logits.
    hf.save_pretrained(tmp_path / "hf2")
    back = interop.load_hf(tmp_path / "hf2", expect=Llama).eval()
    assert back.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(back(idx)[0], model(idx)[0], atol=1e-6, rtol=0)


def test_from_hf_model_built_by_transformers(tmp_path):
    """A model that transformers initialised itself (not one of ours) imports with equal logits."""
    torch.manual_seed(3)
    hc = transformers.LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=40,
                                  rope_theta=1234.0, rms_norm_eps=1e-6, initializer_range=0.3)
    hf = transformers.LlamaForCausalLM(hc).eval()
    hf.save_pretrained(tmp_path)
    ours = interop.load_hf(tmp_path, expect=Llama).eval()
    assert (ours.config.rope_theta, ours.config.norm_eps, ours.config.max_seq_len) == (1234.0, 1e-6, 40)
    idx = torch.randint(0, 61, (2, 19))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=ATOL, rtol=0)


def test_from_hf_rejects_unsupported(tmp_path):
    hc = transformers.LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=72, num_hidden_layers=1,
                                  num_attention_heads=4, attention_bias=True)
    transformers.LlamaForCausalLM(hc).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="biases"):
        interop.load_hf(tmp_path, expect=Llama)


def greedy_without_cache(model: Llama, idx: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_greedy_generate_matches_full_forward_and_transformers(n_kv_head):
    model = random_llama(tiny_config(n_kv_head=n_kv_head))
    torch.manual_seed(2)
    prompt = torch.randint(0, 97, (3, 7))
    out = model.generate(prompt, 20, temperature=0.0)
    assert out.shape == (3, 27) and torch.equal(out[:, :7], prompt)
    assert torch.equal(out, greedy_without_cache(model, prompt, 20))
    hf_out = hf_twin(model).generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20,
                                     attention_mask=torch.ones_like(prompt), pad_token_id=0)
    assert torch.equal(out, hf_out)


def test_cached_step_logits_equal_full_forward():
    model = random_llama(tiny_config(n_kv_head=2))
    idx = torch.randint(0, 97, (2, 30))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(2, 2, 2, 30, 12)
        steps = [model(idx[:, :9], kv_cache=cache, start_pos=0)[0]]           # prefill
        steps += [model(idx[:, 9:16], kv_cache=cache, start_pos=9)[0]]        # a chunk after a prefix
        steps += [model(idx[:, t:t + 1], kv_cache=cache, start_pos=t)[0] for t in range(16, 30)]  # one by one
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_decode_step_equals_full_forward(n_kv_head):
    """generate's hand-written one-token step (decode_step) against forward() on the whole sequence,
    in fp32 and under bf16 autocast (where the residual stream must stay fp32, as in forward)."""
    model = random_llama(tiny_config(n_kv_head=n_kv_head))
    idx = torch.randint(0, 97, (3, 24))
    for autocast in (False, True):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            full, _ = model(idx)
            cache = KVCache(2, 3, n_kv_head, 24, 12)
            model(idx[:, :10], kv_cache=cache, start_pos=0)  # prefill
            steps = [model.decode_step(idx[:, t], cache, t) for t in range(10, 24)]
        got, want = torch.stack(steps, dim=1).float(), full[:, 10:].float()
        # under autocast: within one bf16 rounding step of logits ~4 (a bf16 residual stream is 0.04 off)
        torch.testing.assert_close(got, want, atol=ATOL if not autocast else 0.02, rtol=0)


def test_generation_after_a_training_step_uses_the_new_weights():
    """decode_step multiplies by a packed copy of the weights (tinykernels/matmul_cpu.c) made for each
    generation: after an optimizer step, generate must still agree with the full forward pass."""
    model = random_llama(tiny_config(n_kv_head=2))
    prompt = torch.randint(0, 97, (2, 5))
    before = model.generate(prompt, 12, temperature=0.0)
    assert torch.equal(before, greedy_without_cache(model, prompt, 12))
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    model(before, before)[1].backward()
    optimizer.step()
    after = model.generate(prompt, 12, temperature=0.0)
    assert torch.equal(after, greedy_without_cache(model, prompt, 12))
    assert not torch.equal(after, before)  # the step changed the model enough to change its tokens


def test_generate_stops_at_eot_and_respects_max_seq_len():
    model = random_llama(tiny_config())
    prompt = torch.randint(0, 97, (2, 5))
    greedy = model.generate(prompt, 12, temperature=0.0)
    eot = int(greedy[0, 5 + 2])  # make row 0's third new token the end-of-text
    out = model.generate(prompt, 12, temperature=0.0, eot_id=eot)
    # Expected: each row as in plain greedy up to its first eot, eot afterwards, and no steps once
    # every row is done.
    expected, finish = greedy[:, 5:].clone(), []
    for row in expected:
        hits = (row == eot).nonzero()
        finish.append(int(hits[0]) + 1 if len(hits) else 12)
        row[finish[-1]:] = eot
    assert finish[0] <= 3
    assert torch.equal(out, torch.cat([prompt, expected[:, :max(finish)]], dim=1))
    # sampling runs with top-k / top-p and a seeded generator, reproducibly
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = model.generate(prompt, 8, temperature=0.9, top_k=10, top_p=0.9, generator=g())
    assert torch.equal(a, model.generate(prompt, 8, temperature=0.9, top_k=10, top_p=0.9, generator=g()))
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(prompt, 64 - 5 + 1)
    assert model.generate(prompt, 64 - 5, temperature=0.0).shape == (2, 64)


def test_num_params_of_the_paper_model():
    cfg = LlamaConfig()
    model = Llama(cfg)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=2000, hidden_size=336, intermediate_size=1344, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False))
    hf_total = sum(p.numel() for p in hf.parameters())
    hf_embeddings = hf.model.embed_tokens.weight.numel() + hf.lm_head.weight.numel()
    print(f"\nLlama 14M: {model.num_params():,} non-embedding, "
          f"{model.num_params(non_embedding=False):,} total")
    assert model.num_params() == hf_total - hf_embeddings == 14_456_400
    assert model.num_params(non_embedding=False) == hf_total == 15_800_400
    tied = Llama(LlamaConfig(tie_embeddings=True))
    assert tied.num_params() == 14_456_400 and tied.num_params(non_embedding=False) == 14_456_400 + 672_000
    # 6 FLOPs per matmul weight (head included) plus the attention term
    assert model.flops_per_token(256) == 6 * (14_456_400 - 17 * 336 + 672_000) + 12 * 8 * 336 * 256


def test_training_reduces_loss_and_bf16_autocast_runs():
    torch.manual_seed(0)
    model = Llama(tiny_config(n_kv_head=2))
    idx = torch.arange(33).remainder(7)[None].repeat(2, 1)  # a tiny repeated sequence
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(10):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(x, y)
        out = model.generate(x[:, :4], 3, temperature=0.0)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert out.shape == (2, 7)
    # generated tokens can feed a training step (generate's inference mode must not leak out)
    model(out[:, :-1], out[:, 1:])[1].backward()


def test_compiles_without_graph_breaks():
    model = Llama(tiny_config(n_kv_head=2))
    idx = torch.randint(0, 97, (2, 16))
    explanation = torch._dynamo.explain(model)(idx, idx)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_compiled_model_gives_the_eager_loss_and_gradients(n_kv_head):
    """Under torch.compile every kernel op takes another code path (formulas Inductor can fuse, real
    instead of complex rotary arithmetic, F.cross_entropy for the C kernel): the compiled step must
    match eager, loss mask included (a masked start, a row with nothing scored)."""
    model = random_llama(tiny_config(n_kv_head=n_kv_head)).train()
    torch.manual_seed(3)
    idx = torch.randint(0, 97, (3, 21))
    targets = torch.cat([idx[:, 1:], torch.full((3, 1), -1)], dim=1)
    targets[0, :6] = -1
    targets[1] = -1
    assert_compiled_matches_eager(model, idx, targets, grad_atol=1e-5, loss_tol=1e-5)
