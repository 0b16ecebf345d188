"""export.py as a user runs it: the end-of-text id reaches transformers, whose generate then stops
where ours does; and every mistake exits with code 2 and a message, not a traceback."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from checkpoint import atomic_torch_save
from conftest import run_script
from model_llama import Llama, LlamaConfig
from model_mamba import Mamba, MambaConfig

transformers = pytest.importorskip("transformers")

V = 61
MODELS = {  # name: (our model, the transformers class export.py's folder loads into)
    "llama": (lambda: Llama(LlamaConfig(vocab_size=V, n_layer=2, n_embd=32, n_head=4, n_kv_head=2,
                                        ffn_hidden=48, max_seq_len=64)), "LlamaForCausalLM"),
    "mamba1": (lambda: Mamba(MambaConfig(mixer="mamba1", vocab_size=V, n_layer=2, n_embd=24, d_state=6,
                                         dt_rank=3, mlp_hidden=0)), "MambaForCausalLM"),
    "mamba2": (lambda: Mamba(MambaConfig(mixer="mamba2", vocab_size=V, n_layer=2, n_embd=24, d_state=8,
                                         headdim=12, chunk_size=8, mlp_hidden=0)), "Mamba2ForCausalLM"),
    "mamba2_mlp": (lambda: Mamba(MambaConfig(mixer="mamba2", vocab_size=V, n_layer=2, n_embd=24, d_state=8,
                                             headdim=12, chunk_size=8, mlp_hidden=40)), "BambaForCausalLM"),
}
# transformers' Bamba generate needs an attention layer to hold its cache's length (5.24 raises
# "get_seq_length can only be called on Attention layers"), and ours has none: config only there
NO_HF_GENERATE = {"mamba2_mlp"}


def write_run(folder, model, data_meta: dict | None):
    """A run folder as train.py leaves it, as far as export.py reads it: ckpt.pt."""
    model_config = {**dataclasses.asdict(model.config), "__class__": type(model.config).__name__}
    ckpt = {"model": model.state_dict(), "config": {"model": model_config}, "step": 1}
    if data_meta is not None:
        ckpt["data_meta"] = data_meta
    atomic_torch_save(ckpt, folder / "ckpt.pt")
    return folder


@pytest.mark.parametrize("kind", MODELS)
def test_exported_model_carries_the_end_of_text_id_and_stops_there(kind, tmp_path):
    torch.manual_seed(0)
    build, hf_class = MODELS[kind]
    model = build().eval()
    prompt = torch.randint(0, V, (1, 6))
    greedy = model.generate(prompt, 12, temperature=0)
    eot = int(greedy[0, 6 + 2])  # the third new token ends the document
    ours = model.generate(prompt, 12, temperature=0, eot_id=eot)
    assert ours.shape[1] <= 6 + 3 and ours[0, -1] == eot

    run = write_run(tmp_path / "run", model, {"eot_id": eot, "vocab_size": V})
    out = run_script("export.py", f"--out_dir={run}", f"--hf_dir={tmp_path / 'hf'}")
    assert f"eos_token_id {eot}" in out.stdout
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["eos_token_id"] == eot and config["pad_token_id"] is None
    hf = getattr(transformers, hf_class).from_pretrained(tmp_path / "hf").eval()
    assert hf.config.eos_token_id == eot and hf.generation_config.eos_token_id == eot
    if kind not in NO_HF_GENERATE:
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=12)
        assert torch.equal(theirs, ours)  # stopped at the same token, not after 12


def test_export_without_an_end_of_text_id_warns_and_still_exports(tmp_path):
    run = write_run(tmp_path / "run", MODELS["llama"][0](), data_meta=None)  # and no tokenizer.json
    out = run_script("export.py", f"--out_dir={run / 'ckpt.pt'}")
    assert "no end-of-text id" in out.stderr
    config = json.loads((run / "hf" / "config.json").read_text())  # the run folder's hf/, beside ckpt.pt
    assert config["eos_token_id"] is None and not (run / "hf" / "generation_config.json").exists()


def test_user_errors_exit_2_with_a_message(tmp_path):
    def refused(*flags, says):
        bad = run_script("export.py", *flags, check=False)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr

    refused(f"--out_dir={tmp_path / 'nothing'}", says="no checkpoint")
    refused("--out_folder=x", says="unknown config key")
    mamba1_mlp = Mamba(MambaConfig(mixer="mamba1", vocab_size=V, n_layer=1, n_embd=16, d_state=4, mlp_hidden=8))
    run = write_run(tmp_path / "m1", mamba1_mlp, {"eot_id": 3})
    refused(f"--out_dir={run}", says="no Mamba-1 model with an MLP")
    assert not (run / "hf").exists()
    run = write_run(tmp_path / "llama", MODELS["llama"][0](), {"eot_id": 3})
    (tmp_path / "a_file").write_text("")
    refused(f"--out_dir={run}", f"--hf_dir={tmp_path / 'a_file'}", says="is a file")
    run = write_run(tmp_path / "wrong_data", MODELS["llama"][0](), {"eot_id": V + 5})
    refused(f"--out_dir={run}", says="outside the model's vocabulary")
