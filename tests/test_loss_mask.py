"""Loss masks on every model path: targets of -1 are not scored.

Oracle: F.cross_entropy in float64 over the kept positions only, on the same model's logits, and
autograd through it for every parameter's gradient. The models' own losses run other code (the fused
C kernel on CPU, F.cross_entropy with ignore_index under torch.compile), in fp32 and under bf16
autocast, for the Llama and both Mamba mixers. The masks cover a masked prompt at the start of a
sequence, a row with nothing scored, a gap in the middle and the last position."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model_llama import Llama, LlamaConfig
from model_mamba import Mamba, MambaConfig

V = 61
MODELS = {
    "llama": lambda: Llama(LlamaConfig(vocab_size=V, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, ffn_hidden=48,
                                       max_seq_len=64)),
    "mamba1": lambda: Mamba(MambaConfig(mixer="mamba1", vocab_size=V, n_layer=2, n_embd=24, d_state=6, dt_rank=3,
                                        mlp_hidden=0)),
    "mamba2": lambda: Mamba(MambaConfig(mixer="mamba2", vocab_size=V, n_layer=2, n_embd=24, d_state=8, headdim=12,
                                        chunk_size=8, mlp_hidden=40)),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, V, (3, 19), generator=g)
    targets = torch.randint(0, V, (3, 19), generator=g)
    targets[0, :7] = -1                 # a prompt that is not scored, at the start of the sequence
    targets[1] = -1                     # a row with nothing scored
    targets[2, 5:9] = -1                # a gap...
    targets[2, -1] = -1                 # ...and the last position
    return idx, targets


def masked_reference(model, run, idx, targets, bf16: bool):
    """(loss, gradients) of F.cross_entropy in float64 over the positions whose target is kept, on
    the logits of run (the model, or the model compiled: bf16 logits differ between the two)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits, _ = run(idx)
    keep = targets != -1
    loss = F.cross_entropy(logits.double()[keep], targets[keep])
    return loss, torch.autograd.grad(loss, list(model.parameters()))


def assert_matches_reference(model, run, bf16: bool):
    idx, targets = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        _, loss = run(idx, targets)
    got = torch.autograd.grad(loss, list(model.parameters()))
    want_loss, want = masked_reference(model, run, idx, targets, bf16)
    assert loss.dtype == torch.float32
    # the loss of every position, mask ignored, is a different number: the check can tell
    with torch.no_grad():
        unmasked = F.cross_entropy(model(idx)[0].double().flatten(0, 1), targets.clamp(min=0).flatten())
    assert abs(unmasked.item() - want_loss.item()) > 1e-3
    torch.testing.assert_close(loss.double(), want_loss, atol=1e-5, rtol=1e-5)
    names = [name for name, _ in model.named_parameters()]
    for name, a, b in zip(names, got, want):
        if bf16:
            # The logits' gradient is rounded to bf16 once more than the reference's, and that noise
            # flows back through bf16 matmuls: up to 4% of a gradient's scale (as much without a mask).
            err = (a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12)
            assert err < 0.05, (name, err.item())
        else:
            torch.testing.assert_close(a.double(), b.double(), atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", MODELS)
def test_masked_loss_and_gradients_eager(kind, precision):
    torch.manual_seed(0)
    model = MODELS[kind]().train()
    assert_matches_reference(model, model, precision == "bf16")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", MODELS)
def test_masked_loss_and_gradients_compiled(kind, precision):
    """torch.compile (fullgraph: a graph break would raise) takes F.cross_entropy with ignore_index
    instead of the C kernel. Minutes on 2 CPU cores for the six, hence slow."""
    torch.manual_seed(0)
    model = MODELS[kind]().train()
    torch._dynamo.reset()
    assert_matches_reference(model, torch.compile(model, fullgraph=True), precision == "bf16")


def test_every_target_masked_gives_nan_like_pytorch():
    """Nothing scored: 0 / 0, as F.cross_entropy gives. A batch source should not yield such a batch."""
    model = MODELS["llama"]()
    idx, _ = batch()
    _, loss = model(idx, torch.full_like(idx, -1))
    want = F.cross_entropy(model(idx)[0].flatten(0, 1), torch.full((idx.numel(),), -1), ignore_index=-1)
    assert torch.isnan(loss) and torch.isnan(want)
