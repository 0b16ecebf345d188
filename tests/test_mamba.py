"""The Mamba model against transformers (same weights), its own recurrence, and the engine's contracts."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import assert_compiled_matches_eager
from model_mamba import Mamba, MambaConfig
from tinyhelen import interop

transformers = pytest.importorskip("transformers")

TINY = {
    "mamba1": dict(mixer="mamba1", vocab_size=61, n_layer=2, n_embd=24, d_state=6, dt_rank=3, mlp_hidden=0),
    "mamba2": dict(mixer="mamba2", vocab_size=61, n_layer=2, n_embd=24, d_state=8, headdim=6, n_groups=2,
                   chunk_size=8, mlp_hidden=0),
    "mamba2_mlp": dict(mixer="mamba2", vocab_size=61, n_layer=2, n_embd=24, d_state=8, headdim=12,
                       chunk_size=8, mlp_hidden=40),
}
HF_CLASS = {"mamba1": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM", "mamba2_mlp": "BambaForCausalLM"}


def tiny(kind, **overrides):
    torch.manual_seed(0)
    model = Mamba(MambaConfig(**{**TINY[kind], **overrides}))
    with torch.no_grad():  # move the norms and skips off their 1.0 init so that mapping mistakes show
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D")):
                p.mul_(torch.rand_like(p) + 0.5)
    return model


def hf_twin(model, tmp_path):
    interop.save_hf(model, tmp_path / "hf")
    hf = getattr(transformers, HF_CLASS[_kind(model)]).from_pretrained(tmp_path / "hf")
    return hf.train()  # train mode: the same full-sequence path our forward takes


def _kind(model):
    cfg = model.config
    return "mamba1" if cfg.mixer == "mamba1" else ("mamba2_mlp" if cfg.mlp_hidden else "mamba2")


def hf_gradients_in_our_layout(model, hf):
    """transformers' gradients mapped onto our parameter names and layouts (interop's import
    mapping; a wrong mapping would already have shown in the logits)."""
    grads = {name: p.grad for name, p in hf.named_parameters() if p.grad is not None}
    return interop.mamba_state_from_hf(grads, model.config)


@pytest.mark.parametrize("kind", ["mamba1", "mamba2", "mamba2_mlp"])
def test_logits_and_gradients_match_transformers(kind, tmp_path):
    """19 tokens: not a multiple of Mamba-2's chunk of 8, so the padded last chunk is exercised."""
    model = tiny(kind)
    hf = hf_twin(model, tmp_path)
    idx = torch.randint(0, 61, (2, 19))
    targets = torch.randint(0, 61, (2, 19))
    logits, loss = model(idx, targets)
    hf_logits = hf(idx, use_cache=False).logits
    torch.testing.assert_close(logits, hf_logits, atol=2e-5, rtol=1e-4)
    hf_loss = torch.nn.functional.cross_entropy(hf_logits.reshape(-1, 61), targets.reshape(-1))
    torch.testing.assert_close(loss, hf_loss, atol=1e-6, rtol=1e-5)
    loss.backward()
    hf_loss.backward()
    theirs = hf_gradients_in_our_layout(model, hf)
    assert set(theirs) == {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name], atol=2e-5, rtol=1e-3, msg=name)


def test_mamba1_mixer_matches_transformers_layer(tmp_path):
    model = tiny("mamba1")
    hf = hf_twin(model, tmp_path)
    u = torch.randn(3, 11, 24, requires_grad=True)
    ours, _ = model.layers[1].mixer(u)
    theirs = hf.backbone.layers[1].mixer(u)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    g_ours, = torch.autograd.grad(ours.pow(2).sum(), u)
    g_theirs, = torch.autograd.grad(theirs.pow(2).sum(), u)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["mamba1", "mamba2", "mamba2_mlp"])
def test_stepping_token_by_token_gives_the_full_forward_logits(kind):
    model = tiny(kind).eval()
    idx = torch.randint(0, 61, (2, 21))
    with torch.no_grad():
        full, _ = model(idx)
        stepped = model.step_logits(idx)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_generate_continues_the_prompt_like_the_full_forward(kind):
    model = tiny(kind).eval()
    prompt = torch.randint(0, 61, (2, 5))
    out = model.generate(prompt, 8, temperature=0)
    assert out.shape == (2, 13) and torch.equal(out[:, :5], prompt)
    with torch.no_grad():  # greedy: every new token is the argmax of a full forward over what precedes it
        logits, _ = model(out[:, :-1])
    assert torch.equal(logits[:, 4:].argmax(-1), out[:, 5:])
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    a = model.generate(prompt, 6, temperature=0.9, top_k=10, top_p=0.9, generator=g())
    b = model.generate(prompt, 6, temperature=0.9, top_k=10, top_p=0.9, generator=g())
    assert torch.equal(a, b)


def test_generate_stops_at_end_of_text():
    model = tiny("mamba1").eval()
    prompt = torch.randint(0, 61, (1, 4))
    first = model.generate(prompt, 1, temperature=0)[0, -1].item()
    out = model.generate(prompt, 20, temperature=0, eot_id=first)
    assert out.shape == (1, 5)


def test_loss_ignores_minus_one_targets():
    model = tiny("mamba2")
    idx = torch.randint(0, 61, (2, 9))
    targets = torch.randint(0, 61, (2, 9))
    targets[:, :4] = -1
    logits, loss = model(idx, targets)
    want = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 61), targets[:, 4:].reshape(-1))
    torch.testing.assert_close(loss, want)


@pytest.mark.parametrize("kind", ["mamba1", "mamba2", "mamba2_mlp"])
def test_transformers_format_round_trip(kind, tmp_path):
    model = tiny(kind, tie_embeddings=(kind == "mamba1"))
    interop.save_hf(model, tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [HF_CLASS[kind]]
    back = interop.load_hf(tmp_path / "hf", expect=Mamba)
    assert back.config == model.config
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name
    # and from a folder transformers itself wrote
    hf = hf_twin(model, tmp_path)
    hf.save_pretrained(tmp_path / "from_hf")
    again = interop.load_hf(tmp_path / "from_hf", expect=Mamba)
    idx = torch.randint(0, 61, (1, 10))
    torch.testing.assert_close(again(idx)[0], model(idx)[0])


def test_mamba1_with_mlp_cannot_be_exported(tmp_path):
    model = Mamba(MambaConfig(**{**TINY["mamba1"], "mlp_hidden": 32}))
    with pytest.raises(ValueError, match="Mamba-1"):
        interop.save_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf" / "config.json").exists()


def test_parameters_marked_for_no_weight_decay():
    for kind in ("mamba1", "mamba2"):
        model = tiny(kind)
        marked = {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
        for name, _ in model.named_parameters():
            if name.endswith(("A_log", ".D", "dt_bias", "dt_proj.bias")) or "norm" in name:
                assert name in marked, name


def test_paper_size_mamba2_and_accounting():
    cfg = MambaConfig()  # the defaults are the paper's Mamba-2: 2 layers, width 768, MLP 1,536
    model = Mamba(cfg)
    assert (cfg.mixer, cfg.n_layer, cfg.n_embd, cfg.mlp_hidden, cfg.vocab_size) == ("mamba2", 2, 768, 1536, 2000)
    assert not cfg.tie_embeddings and model.lm_head.weight is not model.embeddings.weight
    total, body = model.num_params(non_embedding=False), model.num_params()
    assert total - body == 2 * 2000 * 768
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embeddings" not in n)
    assert 6 * matmul < model.flops_per_token(256) < 7 * matmul  # the scan adds under a tenth


def test_configs_build_mamba_models():
    from tinyhelen import config as config_lib
    import train
    for path in ("configs/demo_mamba.py", "configs/leaner_mamba.py"):
        cfg = config_lib.parse_args(train.TrainConfig(), [path])
        assert isinstance(cfg.model, MambaConfig), path
        assert cfg.model.vocab_size == 2000
    leaner = config_lib.parse_args(train.TrainConfig(), ["configs/leaner_mamba.py"]).model
    assert (leaner.mixer, leaner.n_layer, leaner.n_embd, leaner.mlp_hidden) == ("mamba2", 2, 768, 1536)


@pytest.mark.slow
def test_mamba_trains_resumes_samples_and_exports_through_the_engine(leaner_small, tmp_path):
    """The same commands as the Llama: train.py (with a kill-free resume), sample.py, export.py."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO, run_script
    from tinyhelen.metrics import read_metrics
    flags = [f"--data_dir={leaner_small}", "configs/demo_mamba.py", "--model.n_layer=2", "--model.n_embd=64",
             "--model.d_state=16", "--model.headdim=16", "--model.mlp_hidden=128", "--model.chunk_size=16",
             "--seq_len=48", "--batch_size=4", "--compile=false", "--dtype=fp32", "--threads=1",
             "--peak_flops=1e10", "--sample_tokens=0", "--warmup_steps=2", "--eval_every=6", "--eval_steps=2",
             "--log_every=1", "--ckpt_every=6"]
    flags = flags[1:2] + flags[:1] + flags[2:]  # the config file first, flags after it
    run_script("train.py", *flags, f"--out_dir={tmp_path / 'a'}", "--max_steps=12")
    # the same run, killed after its first checkpoint and resumed: identical losses
    proc = subprocess.Popen([sys.executable, "train.py", *flags, f"--out_dir={tmp_path / 'b'}", "--max_steps=12"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (tmp_path / "b" / "ckpt.pt").exists():
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    run_script("train.py", *flags, f"--out_dir={tmp_path / 'b'}", "--max_steps=12", "--resume")
    loss = lambda d: {r["step"]: r["loss"] for r in read_metrics(d / "metrics.jsonl") if "loss" in r}  # noqa: E731
    straight, resumed = loss(tmp_path / "a"), loss(tmp_path / "b")
    assert sorted(resumed) == list(range(1, 13)) and resumed == straight
    assert straight[12] < straight[1]
    out = run_script("sample.py", f"--out_dir={tmp_path / 'a'}", "--prompt=The cat", "--num_samples=1",
                     "--max_new_tokens=10", "--temperature=0")
    assert "The cat" in out.stdout
    run_script("export.py", f"--out_dir={tmp_path / 'a'}", f"--hf_dir={tmp_path / 'hf'}")
    hf = transformers.BambaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    from tinyhelen.checkpoint import load_model
    model, _ = load_model(tmp_path / "a")
    idx = torch.randint(0, 2000, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx, use_cache=False).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mamba1", "mamba2_mlp"])
def test_torch_compile_gives_the_eager_loss_and_gradients(kind):
    """train.py compiles by default: the custom ops keep the graph whole (fullgraph would raise on a
    break) and the compiled step matches eager. Minutes on 2 CPU cores, hence slow."""
    model = tiny(kind)
    idx, targets = torch.randint(0, 61, (2, 20)), torch.randint(0, 61, (2, 20))
    targets[0, :6] = -1  # a loss mask: compiled, it is F.cross_entropy's ignore_index
    assert_compiled_matches_eager(model, idx, targets, grad_atol=1e-6)
