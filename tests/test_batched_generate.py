"""Batched generation with prompts of different lengths, left-padded (model_common.pad_left), gives
every row exactly what generating it alone gives: Llama (fused C decoding step and PyTorch step,
grouped-query attention) and both Mamba mixers. The oracle is the model itself, one prompt at a time
with no padding, a path these changes leave untouched."""

import functools

import pytest
import torch

from model_common import pad_left
from model_llama import Llama, LlamaConfig
from model_mamba import Mamba, MambaConfig

PROMPT_LENGTHS = [5, 1, 9, 3]  # the longest row has no padding, one row is all padding but one token


def _prompts(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


def _alone(model, prompt, new, **kw):
    out = model.generate(torch.tensor([prompt]), new, **kw)
    return out[0, len(prompt):].tolist()


def _batched(model, prompts, new, **kw):
    idx, left_pad = pad_left(prompts, pad_id=0)
    out = model.generate(idx, new, left_pad=left_pad, **kw)
    return [row[idx.shape[1]:].tolist() for row in out]


def _trained_a_little(model):
    """A few steps away from initialisation, so logits are far from uniform and greedy choices
    are decided by real margins (an untrained model's near-ties would test float noise)."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(1, model.lm_head.weight.shape[0], (4, 17), generator=g)
    for _ in range(12):
        _, loss = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@functools.lru_cache  # read-only in these tests: train each model once
def _llama(n_kv_head=4):
    torch.manual_seed(0)
    return _trained_a_little(Llama(LlamaConfig(vocab_size=97, n_layer=2, n_embd=64, n_head=4,
                                               n_kv_head=n_kv_head, ffn_hidden=128, max_seq_len=64)))


@functools.lru_cache
def _mamba(mixer):
    torch.manual_seed(0)
    cfg = MambaConfig(mixer=mixer, vocab_size=97, n_layer=2, n_embd=32, d_state=8, headdim=16,
                      chunk_size=4, mlp_hidden=64 if mixer == "mamba2" else 0)
    return _trained_a_little(Mamba(cfg))


def _decoding_path(monkeypatch, path):
    """Pin decode_step to one attention: "fused" (the C kernel; the PyTorch attention raises if
    called) or "pytorch" (the C kernels off, as with TINYHELEN_FUSED_CPU=0; its calls counted)."""
    from tinykernels import decode, fused_cpu
    calls = []
    if path == "fused":
        if not fused_cpu.available():
            pytest.skip("no C compiler: the fused kernels are off")

        def refuse(*a, **k):
            raise AssertionError("decode_step fell back to the PyTorch attention")
        monkeypatch.setattr(decode, "_decode_attention", refuse)
    else:
        monkeypatch.setattr(fused_cpu, "applies", lambda *a, **k: False)
        pytorch_attention = decode._decode_attention

        def counted(*a, **k):
            calls.append(1)
            return pytorch_attention(*a, **k)
        monkeypatch.setattr(decode, "_decode_attention", counted)
    return calls


@pytest.mark.parametrize("path", ["fused", "pytorch"])
@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_llama_batched_mixed_lengths_equal_one_at_a_time(n_kv_head, path, monkeypatch):
    model = _llama(n_kv_head)
    calls = _decoding_path(monkeypatch, path)
    prompts = _prompts(97)
    expected = [_alone(model, p, 12, temperature=0) for p in prompts]
    assert _batched(model, prompts, 12, temperature=0) == expected
    assert bool(calls) == (path == "pytorch")


@pytest.mark.parametrize("path", ["fused", "pytorch"])
def test_llama_padded_logits_equal_unpadded_logits(path, monkeypatch):
    """The left-padded step against each row alone at the logit level, on the C decoding step and
    on the PyTorch one: the padding changes nothing but float rounding."""
    _decoding_path(monkeypatch, path)
    model = _llama()
    prompts = _prompts(97, seed=3)
    idx, left_pad = pad_left(prompts, pad_id=0)
    with torch.inference_mode():
        logits, cache = model.prefill(idx, 4, left_pad)
        nxt = logits.argmax(-1)
        step = model.decode_step(nxt, cache, idx.shape[1])
        for row, p in enumerate(prompts):
            alone, c1 = model.prefill(torch.tensor([p]), 4)
            torch.testing.assert_close(logits[row], alone[0], atol=1e-5, rtol=1e-5)
            alone_step = model.decode_step(nxt[row:row + 1], c1, len(p))
            torch.testing.assert_close(step[row], alone_step[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_mamba_batched_mixed_lengths_equal_one_at_a_time(mixer):
    model = _mamba(mixer)
    prompts = _prompts(97)
    expected = [_alone(model, p, 12, temperature=0) for p in prompts]
    assert _batched(model, prompts, 12, temperature=0) == expected


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_mamba_padding_leaves_the_state_untouched(mixer):
    """The states after a left-padded prompt equal those after the prompt alone; padding with zeros
    and no masking would not (the check that the mask is needed at all)."""
    model = _mamba(mixer)
    prompt = _prompts(97)[0]
    idx, left_pad = pad_left([prompt, prompt + [5, 6, 7]], pad_id=0)
    with torch.inference_mode():
        _, padded = model.prefill(idx, 1, left_pad)
        _, alone = model.prefill(torch.tensor([prompt]), 1)
        _, unmasked = model.prefill(idx, 1, None)
    for (w, h), (w1, h1), (_, hu) in zip(padded, alone, unmasked):
        torch.testing.assert_close(w[0], w1[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h[0].float(), h1[0].float(), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(hu[0].float(), h1[0].float(), atol=1e-3)


def test_batched_stops_each_row_at_eot_and_pads_after():
    model = _llama()
    prompts = _prompts(97)
    free = _batched(model, prompts, 10, temperature=0)
    eot = free[0][2]  # make row 0's third token the end-of-text
    out = _batched(model, prompts, 10, temperature=0, eot_id=eot)
    assert out[0][:3] == free[0][:3] and set(out[0][3:]) <= {eot}
    for row, f in zip(out, free):
        cut = f.index(eot) + 1 if eot in f else len(f)
        assert row[:cut] == f[:cut]


def test_pad_left_and_left_pad_checks():
    idx, left_pad = pad_left([[4, 5], [6]], pad_id=0)
    assert idx.tolist() == [[4, 5], [0, 6]] and left_pad.tolist() == [0, 1]
    with pytest.raises(ValueError):
        pad_left([[1], []], pad_id=0)
    with pytest.raises(ValueError, match="left_pad"):
        _llama().generate(idx, 2, left_pad=torch.tensor([0, 2]))
