"""export.py --gguf as a user runs it: llama.cpp (the llama_cpp bindings of requirements-llm.txt)
loads the file and, greedy, produces the same tokens as this engine, tokenizer included.

llama.cpp is the oracle: its own tokenizer encodes the prompt from the GGUF's tokens and merges, its
own kernels run the weights; any error in the q/k row layout, the Mamba's A or conv layout or the
merges shows up as different tokens. Skipped without llama_cpp or gguf (an engine-only install)."""

from __future__ import annotations

import pytest
import torch

from conftest import run_script
from test_export import TINY, trained_run

llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

PROMPT = "Once upon a time, a little girl"


def llama_cpp_greedy(path, prompt: str, n: int) -> tuple[list[int], list[int], int]:
    """(llama.cpp's prompt tokens with the bos it adds, its first n greedy tokens, its eos id).

    Generation goes on through end-of-text: a model trained for a few dozen steps may end its text
    after a token or two (it did on an AVX2 EPYC, whose float rounding trains a slightly different
    model), which would leave nothing to compare."""
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, verbose=False)
    prompt_ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    out = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1):
        if len(out) == n:
            break
        out.append(token)
    return prompt_ids, out, llm.token_eos()


@pytest.mark.slow  # about half a minute per model on 2 cores
@pytest.mark.parametrize("kind", TINY)
def test_llama_cpp_generates_our_greedy_tokens(kind, leaner_small, tmp_path):
    from data.tokenizer import Tokenizer
    run, model = trained_run(kind, leaner_small, tmp_path / "run")
    out = run_script("export.py", f"--out_dir={run}", "--gguf")
    assert "model.gguf" in out.stdout
    tok = Tokenizer.load(run / "tokenizer.json")
    ours_prompt = [tok.eot_id] + tok.encode(PROMPT)  # as sample.py starts it
    prompt_ids, theirs, eos = llama_cpp_greedy(run / "model.gguf", PROMPT, 40)
    assert prompt_ids == ours_prompt and eos == tok.eot_id
    with torch.no_grad():
        ours = model.generate(torch.tensor([ours_prompt]), 40, temperature=0)[0].tolist()[len(ours_prompt):]
    # 40 argmaxes over the whole vocabulary, each position fed the last one's choice: equal only if the
    # two implementations agree. No guard on variety: on the AVX512-BF16 EPYC this 60-step model
    # repeats one token, which is as much a comparison as any other sequence.
    assert len(theirs) == 40 and theirs == ours


def test_gguf_refuses_what_llama_cpp_cannot_hold(tmp_path):
    from data.tokenizer import Tokenizer
    from model_llama import Llama, LlamaConfig
    from model_mamba import Mamba, MambaConfig
    from test_export import write_run

    def refused(model, tokenizer, says):
        run = write_run(tmp_path / says.split()[0], model, {"eot_id": tokenizer.eot_id})
        tokenizer.save(run / "tokenizer.json")
        bad = run_script("export.py", f"--out_dir={run}", "--gguf", check=False)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert not (run / "model.gguf").exists()

    gpt2k = Tokenizer.from_merges([(104, 105)])  # 256 bytes, "hi", end-of-text: 258 ids
    mamba_mlp = Mamba(MambaConfig(mixer="mamba2", vocab_size=258, n_layer=1, n_embd=16, d_state=4, headdim=8,
                                  mlp_hidden=8))
    refused(mamba_mlp, gpt2k, says="MLP after each mixer")
    cl100k = Tokenizer.cl100k()
    llama = Llama(LlamaConfig(vocab_size=cl100k.vocab_size, n_layer=1, n_embd=16, n_head=2, n_kv_head=1,
                              ffn_hidden=16, max_seq_len=32))
    refused(llama, cl100k, says="gpt-2K tokenizers only")
