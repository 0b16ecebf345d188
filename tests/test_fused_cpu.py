"""The fused CPU kernels (tinykernels/fused_cpu.c) and what is built on them, against PyTorch's own ops
and autograd as oracles: RMSNorm, SwiGLU, cross-entropy, rotary + causal attention."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tinykernels
from tinykernels import attention_cpu, cross_entropy, fused_cpu, swiglu
from model_llama import KVCache, apply_rotary, rotary_table

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not fused_cpu.available(), reason="no C compiler: the PyTorch paths run")

# bf16 results are compared after one rounding of an fp32 computation: a few bf16 ulps
BF16_TOL = dict(atol=3e-2, rtol=2e-2)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


def test_loading_the_library_keeps_denormals():
    """Linking with -ffast-math would make the loader switch the whole process to flush-to-zero."""
    assert fused_cpu.available()
    assert (torch.tensor([1e-40]) * 1.0).item() != 0.0


@pytest.mark.parametrize("x_dtype,out_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                               (torch.bfloat16, torch.bfloat16)])
def test_rms_norm_matches_autograd_reference(x_dtype, out_dtype):
    torch.manual_seed(0)
    x = (torch.randn(5, 7, 41) * 3).to(x_dtype).requires_grad_()  # 35 rows: uneven across threads
    w = (torch.rand(41) + 0.5).requires_grad_()
    gy = torch.randn(5, 7, 41).to(out_dtype)
    y = tinykernels.rms_norm(x, w, 1e-5, out_dtype=out_dtype)
    got = torch.autograd.grad(y, (x, w), gy)
    want_y = tinykernels.rms_norm_reference(x.float(), w, 1e-5)
    want = torch.autograd.grad(want_y, (x, w), gy.float())
    assert y.dtype == out_dtype and got[0].dtype == x_dtype
    if out_dtype == torch.float32:
        torch.testing.assert_close(y, want_y, atol=1e-5, rtol=1e-5)
    else:
        assert torch.equal(y, want_y.to(out_dtype)) or rel_err(y, want_y) < 1e-2
    tol = dict(atol=1e-5, rtol=1e-4) if x_dtype == torch.float32 else BF16_TOL
    torch.testing.assert_close(got[0].float(), want[0].float(), **tol)
    torch.testing.assert_close(got[1], want[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_matches_autograd_reference(dtype):
    torch.manual_seed(1)
    gate_up = (torch.randn(3, 11, 2 * 37) * 4).to(dtype).requires_grad_()
    grad = torch.randn(3, 11, 37).to(dtype)
    got_y = swiglu(gate_up)
    got = torch.autograd.grad(got_y, gate_up, grad)[0]
    ref_in = gate_up.detach().float().requires_grad_()
    gate, up = ref_in.chunk(2, dim=-1)
    want_y = F.silu(gate) * up
    want = torch.autograd.grad(want_y, ref_in, grad.float())[0]
    assert got_y.dtype == dtype and got.dtype == dtype
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else BF16_TOL
    torch.testing.assert_close(got_y.float(), want_y, **tol)
    torch.testing.assert_close(got.float(), want, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_matches_pytorch(dtype):
    torch.manual_seed(2)
    """The C kernel against F.cross_entropy in float64 over the kept rows only: a loss mask at the
    start (rows 0-6, a masked prompt), a run of 19 masked rows and every fifth row."""
    logits = (torch.randn(67, 53) * 5).to(dtype).requires_grad_()
    targets = torch.randint(0, 53, (67,))
    masked = torch.zeros(67, dtype=torch.bool)
    masked[:7] = masked[30:49] = masked[::5] = True
    targets[masked] = -1
    loss = cross_entropy(logits, targets)
    got = torch.autograd.grad(loss * 3.0, logits)[0]  # a non-unit upstream gradient
    want_loss = F.cross_entropy(logits.double()[~masked], targets[~masked])
    want = torch.autograd.grad(want_loss * 3.0, logits)[0]
    assert loss.dtype == torch.float32 and got.dtype == dtype
    torch.testing.assert_close(loss.double(), want_loss, atol=1e-5, rtol=1e-5)
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-4, rtol=2e-2)
    torch.testing.assert_close(got.float(), want.float(), **tol)
    assert not got[masked].any()  # masked rows get no gradient


def test_cross_entropy_edge_cases():
    logits = torch.randn(4, 6, requires_grad=True)
    assert torch.isnan(cross_entropy(logits, torch.full((4,), -1)))  # all ignored: nan, like PyTorch
    targets = torch.tensor([0, 5, 100, 1])
    with pytest.raises(ValueError, match="out of range"):
        cross_entropy(logits, targets)
    with pytest.raises(ValueError, match="class ids or ignore_index=-1"):  # F.cross_entropy refuses it too
        cross_entropy(logits, torch.tensor([0, -2, 3, 1]))
    # another ignore_index is honoured
    t = torch.tensor([0, -100, 3, -100])
    torch.testing.assert_close(cross_entropy(logits, t, ignore_index=-100),
                               F.cross_entropy(logits, t, ignore_index=-100))


def reference_attention(qkv, rope, H, K):
    """The model's own sdpa path: apply_rotary, then PyTorch's causal attention, in fp32."""
    B, T, _ = qkv.shape
    Dh = qkv.shape[-1] // (H + 2 * K)
    qk, v = qkv.float().view(B, T, H + 2 * K, Dh).split([H + K, K], dim=2)
    q, k = apply_rotary(qk, rope[:, None]).split([H, K], dim=2)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=True, enable_gqa=K != H)
    return y.transpose(1, 2).reshape(B, T, H * Dh)


@pytest.mark.parametrize("H,K,T", [(4, 4, 17), (4, 2, 33), (6, 1, 8), (2, 2, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_attention_matches_sdpa(H, K, T, dtype):
    torch.manual_seed(3)
    B, Dh = 3, 10
    rope = rotary_table(Dh, 64, 10000.0)[:T, 0]
    qkv = torch.randn(B, T, (H + 2 * K) * Dh).to(dtype).requires_grad_()
    grad = torch.randn(B, T, H * Dh).to(dtype)
    y = attention_cpu.causal_attention(qkv, rope, H, K)
    got = torch.autograd.grad(y, qkv, grad)[0]
    ref_in = qkv.detach().float().requires_grad_()
    want_y = reference_attention(ref_in, rope, H, K)
    want = torch.autograd.grad(want_y, ref_in, grad.float())[0]
    assert y.dtype == dtype and got.dtype == dtype
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else BF16_TOL
    torch.testing.assert_close(y.float(), want_y, **tol)
    torch.testing.assert_close(got.float(), want, **tol)


@pytest.mark.parametrize("B,H,K,T,Dh", [
    (2, 8, 8, 256, 42), (2, 8, 2, 256, 42), (3, 8, 2, 37, 42), (1, 4, 2, 1, 64), (3, 4, 4, 256, 16),
    (1, 4, 2, 512, 64), (3, 2, 1, 37, 128), (1, 6, 3, 100, 32), (1, 2, 1, 8, 5)])
def test_fp32_attention_kernel_matches_float64_sdpa(B, H, K, T, Dh):
    """attention_cpu.c directly, at the training shape and awkward ones (odd T, T = 1, Dh not a
    multiple of 16, every grouping), against sdpa and autograd in float64: output, log-sum-exp and
    the three gradients, each within 1e-4 of its largest entry (sdpa in fp32 is at about 1e-6)."""
    g = torch.Generator().manual_seed(T * Dh + K)
    q, k, v = torch.randn(B, H, T, Dh, generator=g), torch.randn(B, K, T, Dh, generator=g), torch.randn(B, K, T, Dh, generator=g)
    grad_y = torch.randn(B, T, H * Dh, generator=g)
    y, lse = fused_cpu.attention_forward(q, k, v)
    got = (y, lse, *fused_cpu.attention_backward(q, k, v, y, lse, grad_y))

    ref = [t.double().requires_grad_() for t in (q, k, v)]
    want_y = F.scaled_dot_product_attention(*ref, is_causal=True, enable_gqa=H != K)
    want_grads = torch.autograd.grad(want_y, ref, grad_y.double().view(B, T, H, Dh).transpose(1, 2))
    scores = ref[0] @ ref[1].repeat_interleave(H // K, dim=1).transpose(-1, -2) * Dh ** -0.5
    want_lse = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).logsumexp(-1)
    want = (want_y.transpose(1, 2).reshape(B, T, H * Dh), want_lse, *want_grads)
    # at T = 1 dq and dk are exactly zero: measure them against the largest gradient instead
    floor = 0.01 * max(w.abs().max().item() for w in want_grads)
    for name, a, b in zip(("y", "lse", "dq", "dk", "dv"), got, want):
        err = (a.double() - b.detach()).abs().max().item() / max(b.abs().max().item(), floor)
        assert err < 1e-4, (name, err)


def test_bf16_training_step_matches_transformers_under_autocast():
    """The whole bf16 CPU path (norms rounding to bf16, fused attention, SwiGLU, cross-entropy)
    against transformers' model under the same autocast: loss and every gradient within bf16
    noise, measured against the size of the gradients."""
    from test_llama import gradients_side_by_side, hf_twin, random_llama, tiny_config
    model = random_llama(tiny_config(n_kv_head=2)).train()
    hf = hf_twin(model).train()
    torch.manual_seed(4)
    idx = torch.randint(0, 97, (2, 40))
    targets = torch.cat([idx[:, 1:], torch.full((2, 1), -1)], dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(idx, targets)[1]
        hf_loss = hf(idx, labels=idx).loss
    loss.backward()
    hf_loss.backward()
    assert abs(loss.item() - hf_loss.item()) < 0.02 * hf_loss.item()
    for name, ours, theirs in gradients_side_by_side(model, hf):
        assert rel_err(ours, theirs) < 0.05, name


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


TRAIN_ONE_STEP = (
    "import warnings, torch\n"
    "from tinykernels import fused_cpu\n"
    "from model_llama import Llama, LlamaConfig\n"
    "m = Llama(LlamaConfig(vocab_size=50, n_layer=1, n_embd=32, n_head=2, n_kv_head=1, ffn_hidden=64))\n"
    "x = torch.randint(0, 50, (2, 9))\n"
    "with warnings.catch_warnings(record=True) as caught:\n"
    "    warnings.simplefilter('always')\n"
    "    with torch.autocast('cpu', dtype=torch.bfloat16):\n"
    "        loss = m(x, x)[1]\n"
    "    loss.backward()\n"
    "print('available', fused_cpu.available(), 'finite', bool(torch.isfinite(loss)))\n"
    "print('warnings', [str(w.message)[:60] for w in caught])\n"
)


@pytest.mark.parametrize("M", [1, 3, 8, 11, 17])
@pytest.mark.parametrize("Kd,N", [(37, 5), (48, 64), (41, 70)])
def test_few_row_matmul_matches_float64_matmul(M, Kd, N):
    """Decoding's packed matmul: every row count (register blocks of 8 rows plus a remainder), N
    below, at and between multiples of the 32-column panel, with and without the residual (which is
    added in place)."""
    torch.manual_seed(M * 1000 + N)
    x, w, residual = torch.randn(M, Kd), torch.randn(Kd, N), torch.randn(M, N)
    packed = fused_cpu.pack_for_decoding(w)
    assert packed.shape == (-(-N // 32), Kd, 32)
    want = x.double() @ w.double()
    torch.testing.assert_close(fused_cpu.few_row_matmul(x, packed, N).double(), want, atol=1e-4, rtol=1e-5)
    expected_sum = residual.double() + want
    out = fused_cpu.few_row_matmul(x, packed, N, residual=residual)
    assert out.data_ptr() == residual.data_ptr()
    torch.testing.assert_close(out.double(), expected_sum, atol=1e-4, rtol=1e-5)


def test_pack_for_decoding_layout_and_dtype():
    w = torch.arange(3 * 40, dtype=torch.float32).view(3, 40)
    packed = fused_cpu.pack_for_decoding(w)
    assert torch.equal(packed[0], w[:, :32]) and torch.equal(packed[1, :, :8], w[:, 32:])
    assert not packed[1, :, 8:].any()  # zeros past N, so the last panel's extra columns add nothing
    torch.testing.assert_close(fused_cpu.pack_for_decoding(w.t()), fused_cpu.pack_for_decoding(w.t().contiguous()))
    with pytest.raises(ValueError, match="fp32 only"):
        fused_cpu.pack_for_decoding(w.bfloat16())



def _random_cache(B, K, T_max, Dh, g):
    """A one-layer KVCache with every slot drawn (torch.empty's leftovers could hold NaNs)."""
    cache = KVCache(1, B, K, T_max, Dh)
    zeros = torch.zeros(B, K, 1, Dh)
    cache.update(0, 0, zeros, zeros)  # allocates
    cache.kv[0].copy_(torch.randn(cache.kv[0].shape, generator=g))
    return cache


@pytest.mark.parametrize("B", [1, 3, 8])
@pytest.mark.parametrize("H,K", [(4, 2), (4, 4)])
@pytest.mark.parametrize("Dh", [16, 32])
@pytest.mark.parametrize("pos", [6, 40])  # 40: B=8 rows are enough work to run in parallel
@pytest.mark.parametrize("first_pad", ["none", "max"])
def test_padded_decode_attention_matches_the_masked_pytorch_step(B, H, K, Dh, pos, first_pad):
    """One decoding step of attention for left-padded rows, against decode.py's PyTorch attention
    with its key mask (per-row rope rows, sdpa): the rotated q and k, the cache slot written and the
    output. Row 0 has no padding or is padded up to pos - 1 (one real key besides its own token);
    the other rows draw theirs. The padding slots hold large keys and values, so attending to any
    of them would move the output far outside the tolerance."""
    from tinykernels.decode import _decode_attention
    g = torch.Generator().manual_seed(B * 1000 + H * 100 + K * 10 + Dh + pos)
    left_pad = torch.randint(0, pos, (B,), generator=g)
    left_pad[0] = 0 if first_pad == "none" else pos - 1
    cache = _random_cache(B, K, pos + 3, Dh, g)
    for b, n in enumerate(left_pad.tolist()):
        cache.kv[0][b, :, :n] = 30 * torch.randn(2 * K, n, Dh, generator=g)
    qkv = torch.randn(B, H + 2 * K, Dh, generator=g)
    rope = rotary_table(Dh, 64, 10000.0)

    kv_before = cache.kv[0].clone()
    qkv_c = qkv.clone()
    y = fused_cpu.decode_attention(qkv_c, cache.kv[0], rope, pos, K, left_pad)
    kv_c = cache.kv[0].clone()

    cache.kv[0].copy_(kv_before)
    key_mask = (torch.arange(pos + 1) >= left_pad[:, None])[:, None, None]
    want = _decode_attention(qkv, cache, 0, pos, rope[pos - left_pad], K, key_mask)
    torch.testing.assert_close(qkv_c, qkv, atol=1e-6, rtol=1e-6)  # rotated in place alike
    torch.testing.assert_close(kv_c, cache.kv[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(y, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("B,H,K,Dh,pos", [(1, 4, 2, 16, 0), (3, 4, 4, 32, 9), (8, 4, 2, 32, 40)])
def test_unpadded_decode_attention_matches_the_pytorch_step(B, H, K, Dh, pos):
    """left_pad None: every row at position pos over all of slots 0..pos, as before padding support."""
    from tinykernels.decode import _decode_attention
    g = torch.Generator().manual_seed(pos)
    cache = _random_cache(B, K, pos + 2, Dh, g)
    qkv = torch.randn(B, H + 2 * K, Dh, generator=g)
    rope = rotary_table(Dh, 64, 10000.0)
    kv_before, qkv_c = cache.kv[0].clone(), qkv.clone()
    y = fused_cpu.decode_attention(qkv_c, cache.kv[0], rope, pos, K)
    cache.kv[0].copy_(kv_before)
    want = _decode_attention(qkv, cache, 0, pos, rope[pos, 0], K)
    torch.testing.assert_close(qkv_c, qkv, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(y, want, atol=2e-5, rtol=1e-4)

def test_switched_off_by_environment_variable():
    out = run_python(TRAIN_ONE_STEP, TINYHELEN_FUSED_CPU="0")
    assert out.returncode == 0, out.stderr
    assert "available False finite True" in out.stdout and "warnings []" in out.stdout


def test_failed_build_falls_back_with_a_warning(tmp_path):
    out = run_python(TRAIN_ONE_STEP, CC="false", TINYHELEN_CACHE=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "available False finite True" in out.stdout
    assert "fused CPU kernels are off" in out.stdout


def test_non_contiguous_or_wrong_dtype_inputs_are_refused():
    with pytest.raises(ValueError, match="contiguous fp32/bf16"):
        fused_cpu.swiglu_forward(torch.randn(4, 6).t())
    with pytest.raises(ValueError, match="contiguous fp32/bf16"):
        fused_cpu.swiglu_forward(torch.randn(4, 6, dtype=torch.float64))
