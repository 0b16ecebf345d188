"""export.py as a user runs it: the end-of-text id reaches transformers, whose generate then stops
where ours does; the exported tokenizer encodes real text exactly as ours (AutoTokenizer against
tiktoken); pipeline("text-generation") on the folder gives sample.py's greedy text; and every mistake
exits with code 2 and a message, not a traceback."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np

import pytest
import torch

from tinyhelen import interop
from tinyhelen.checkpoint import atomic_torch_save
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


# ------------------------------------------------------------ tokenizer files and the pipeline

def edge_cases() -> list[str]:
    return ["", " ", "  two  spaces  ", "\n\n\tTab and newlines\n", "trailing   \n", "a\r\nb\r\n",
            "héllo wörld — “quotes” and ‘apostrophes’", "emoji 😀👍🏽🇫🇷 and 日本語のテキスト",
            "It's we'll they've I'M",
            "<|endoftext|> inside a document is plain text", "numbers 2022, 3.14159 and 1234567",
            "\u200b\ufeffzero width", "x" * 300, "   \n  \n"]


def validation_texts(shared_data) -> list[str]:
    from data.corpus import iter_documents
    return [d.text for d in iter_documents(shared_data, "leaner", "validation")]  # every genre


def assert_tokenizes_as_ours(tok, texts, tmp_path):
    from transformers import AutoTokenizer
    interop.save_hf_tokenizer(tok, tmp_path, model_max_length=1 << 20)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert hf.eos_token_id == hf.bos_token_id == tok.eot_id
    ours = tok.encode_batch(texts)
    theirs = hf(texts, add_special_tokens=False)["input_ids"]
    bad = [t[:80] for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not bad, f"{len(bad)} of {len(texts)} texts tokenized differently, e.g. {bad[:3]}"
    assert hf("Once upon a time")["input_ids"] == [tok.eot_id] + tok.encode("Once upon a time")  # as sample.py
    assert [hf.decode(ids) for ids in ours[:50]] == [tok.decode(ids) for ids in ours[:50]]


def test_exported_gpt2k_tokenizer_tokenizes_exactly_as_ours(leaner_small, shared_data, tmp_path):
    from data.tokenizer import Tokenizer
    texts = validation_texts(shared_data) + edge_cases()
    assert_tokenizes_as_ours(Tokenizer.load(leaner_small / "tokenizer.json"), texts, tmp_path)


@pytest.mark.slow
def test_exported_cl100k_and_compact_tokenizers_tokenize_exactly_as_ours(shared_data, tmp_path):
    """cl100k_base's merges are recovered from its ranks (about 10 s), and its pattern is rewritten
    for Oniguruma (interop._pattern_for_onig); a compact tokenizer shares both."""
    from data.compact_tokenizer import build_from_texts
    from data.tokenizer import Tokenizer
    texts = validation_texts(shared_data)[::4] + edge_cases()
    assert_tokenizes_as_ours(Tokenizer.cl100k(), texts, tmp_path / "cl100k")
    assert_tokenizes_as_ours(build_from_texts(texts, 3000), texts, tmp_path / "compact")


TINY = {  # small enough to train in seconds, trained enough that greedy decoding is not a coin toss
    "llama": lambda V: Llama(LlamaConfig(vocab_size=V, n_layer=2, n_embd=64, n_head=4, n_kv_head=2,
                                         ffn_hidden=128, max_seq_len=128)),
    "mamba1": lambda V: Mamba(MambaConfig(mixer="mamba1", vocab_size=V, n_layer=2, n_embd=64, d_state=8,
                                          mlp_hidden=0)),
    "mamba2": lambda V: Mamba(MambaConfig(mixer="mamba2", vocab_size=V, n_layer=2, n_embd=64, d_state=16,
                                          headdim=16, chunk_size=16, mlp_hidden=0)),
}


def trained_run(kind: str, data_dir, folder, steps: int = 60):
    """A run folder as train.py leaves it (ckpt.pt with the data's meta, the tokenizer beside it),
    holding a tiny model trained for a few dozen AdamW steps on the real leaner_small data."""
    meta = json.loads((data_dir / "meta.json").read_text())
    tokens = np.memmap(data_dir / "train.bin", dtype=np.uint16, mode="r")[:400_000]
    data = torch.from_numpy(tokens.astype(np.int64))
    torch.manual_seed(0)
    model = TINY[kind](meta["vocab_size"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 65, (16,))
        window = torch.stack([data[s:s + 65] for s in starts.tolist()])
        _, loss = model(window[:, :-1], window[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    folder.mkdir(parents=True)
    shutil.copyfile(data_dir / "tokenizer.json", folder / "tokenizer.json")
    return write_run(folder, model.eval(), meta), model


def sample_py_greedy(run, prompt: str, n: int) -> str:
    out = run_script("sample.py", f"--out_dir={run}", f"--prompt={prompt}", "--temperature=0",
                     "--num_samples=1", f"--max_new_tokens={n}", "--device=cpu").stdout
    return out.split("--- sample 1 ---\n", 1)[1].removesuffix("\n\n")


@pytest.mark.slow  # about a minute per model on 2 cores: training, then three fresh processes
@pytest.mark.parametrize("kind", TINY)
def test_pipeline_gives_sample_py_greedy_text(kind, leaner_small, tmp_path):
    run, _ = trained_run(kind, leaner_small, tmp_path / "run")
    run_script("export.py", f"--out_dir={run}")
    prompt = "Once upon a time, a little girl"
    pipe = transformers.pipeline("text-generation", model=str(run / "hf"), device="cpu")
    theirs = pipe(prompt, max_new_tokens=40, do_sample=False)[0]["generated_text"]
    assert theirs == sample_py_greedy(run, prompt, 40)
    assert len(theirs) > len(prompt)
