"""Export to GGUF, the file format of llama.cpp, for the Llama and both Mamba mixers.

    save_gguf(model, tokenizer, path)   one .gguf file: hyperparameters, tokenizer, float32 tensors

    ours                                  llama.cpp architecture
    model_llama.Llama                     llama
    model_mamba.Mamba, Mamba-1 mixer      mamba   (without an MLP after each mixer)
    model_mamba.Mamba, Mamba-2 mixer      mamba2  (without an MLP after each mixer)

Not exported (GGUFFormatError, naming the reason): a Mamba with an MLP after each mixer (llama.cpp's
mamba and mamba2 blocks have none; its hybrids, such as granitehybrid, carry Granite's extra scales
and are not written here), and tokenizers other than gpt-2K (llama.cpp's BPE pre-tokenizers are a
fixed list: GPT-2's split is on it as "gpt-2", cl100k_base's exact pattern is not).

Layouts. The `gguf` package takes each tensor as numpy in PyTorch's (out, in) order and writes GGUF's
reversed dimensions itself. The Llama's q and k rows stay as they are: llama.cpp's llama architecture
rotates neighbouring pairs (Meta's original layout), which is this engine's layout; only the
`transformers` export permutes them to rotate-half (tinyhelen/interop.py). The Mamba's A is stored as
-exp(A_log), as llama.cpp's scans take it; its conv weights lose the singleton channel axis.

The tokenizer goes in as llama.cpp's "gpt2" BPE: the tokens in GPT-2's printable byte form, the
merges in rank order, the end-of-text as a control token that is eos and bos (prompts start with it,
as sample.py's do). The file is written to a temporary name and renamed: a crash never leaves half
a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tinyhelen.atomic import fsync_dir


class GGUFFormatError(ValueError):
    """A model or tokenizer this engine cannot write as GGUF: the message says what and why."""


def save_gguf(model, tokenizer, path: str | os.PathLike) -> None:
    import gguf
    from data.tokenizer import PretrainedTokenizer
    from model_llama import Llama
    if isinstance(tokenizer, PretrainedTokenizer):
        raise GGUFFormatError(f"the run's tokenizer is {tokenizer.name}, an imported model's: GGUF export "
                              "supports gpt-2K tokenizers only; the GGUF the model came from is in its "
                              "pretrained.json, and export.py without --gguf writes the transformers folder")
    if tokenizer.compact is not None or tokenizer.name == "cl100k_base":
        raise GGUFFormatError(f"the run's tokenizer is {tokenizer.name}: GGUF export supports gpt-2K "
                              "tokenizers only (llama.cpp has GPT-2's pre-tokenizer, not cl100k_base's "
                              "pattern); export.py without --gguf writes the transformers folder")
    if isinstance(model, Llama):
        arch, write_params, tensors = "llama", _llama_params, _llama_tensors(model)
    else:
        arch, write_params, tensors = _mamba_arch(model.config), _mamba_params, _mamba_tensors(model)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_name(path.stem)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        write_params(writer, model.config)
        _tokenizer(writer, tokenizer, model.config.vocab_size)
        for name, tensor in tensors.items():
            writer.add_tensor(name, tensor.detach().to(torch.float32).cpu().contiguous().numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _tokenizer(writer, tokenizer, vocab_size: int) -> None:
    import gguf
    from data.tokenizer import gpt2_byte_to_unicode
    if tokenizer.vocab_size > vocab_size:
        raise GGUFFormatError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                              f"{vocab_size}: the checkpoint and its tokenizer do not belong together")
    to_char = gpt2_byte_to_unicode()
    printable = lambda b: "".join(to_char[x] for x in b)  # noqa: E731
    tokens, types = [], []
    for i in range(vocab_size):
        if i == tokenizer.eot_id:
            tokens.append("<|endoftext|>"), types.append(gguf.TokenType.CONTROL)
        elif i < tokenizer.vocab_size:
            tokens.append(printable(tokenizer.token_bytes(i))), types.append(gguf.TokenType.NORMAL)
        else:  # rows of a padded output layer that no text maps to
            tokens.append(f"<|unused{i}|>"), types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{printable(tokenizer.token_bytes(a))} {printable(tokenizer.token_bytes(b))}"
                             for a, b in tokenizer.merges])
    writer.add_bos_token_id(tokenizer.eot_id)
    writer.add_eos_token_id(tokenizer.eot_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


# ---------------------------------------------------------------------------------- Llama

def _llama_params(writer, c) -> None:
    writer.add_context_length(c.max_seq_len)
    writer.add_embedding_length(c.n_embd)
    writer.add_block_count(c.n_layer)
    writer.add_feed_forward_length(c.ffn_hidden)
    writer.add_head_count(c.n_head)
    writer.add_head_count_kv(c.n_kv_head)
    writer.add_rope_dimension_count(c.n_embd // c.n_head)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_vocab_size(c.vocab_size)


def _llama_tensors(model) -> dict[str, torch.Tensor]:
    c = model.config
    hd = c.n_embd // c.n_head
    out = {"token_embd.weight": model.tok_emb.weight, "output_norm.weight": model.norm.weight}
    if not c.tie_embeddings:  # llama.cpp reuses token_embd when there is no output tensor
        out["output.weight"] = model.lm_head.weight
    for i, b in enumerate(model.blocks):
        p = f"blk.{i}."
        # ours are (in, out); q and k keep our neighbouring-pairs rows (see the module docstring)
        q, k, v = b.attn.qkv.weight.t().split([c.n_head * hd, c.n_kv_head * hd, c.n_kv_head * hd])
        mlp = b.mlp.split_for_export()
        out.update({p + "attn_norm.weight": b.attn_norm.weight, p + "attn_q.weight": q,
                    p + "attn_k.weight": k, p + "attn_v.weight": v,
                    p + "attn_output.weight": b.attn.out.weight.t(), p + "ffn_norm.weight": b.mlp_norm.weight,
                    p + "ffn_gate.weight": mlp["gate_proj"], p + "ffn_up.weight": mlp["up_proj"],
                    p + "ffn_down.weight": mlp["down_proj"]})
    return out


# ---------------------------------------------------------------------------------- Mamba

def _mamba_arch(cfg) -> str:
    if cfg.mlp_hidden:
        raise GGUFFormatError("this Mamba has an MLP after each mixer (mlp_hidden > 0), which llama.cpp's "
                              "mamba and mamba2 architectures do not have: GGUF export supports Mamba "
                              "models with mlp_hidden=0")
    if cfg.proj_bias:
        raise GGUFFormatError("this Mamba has in/out projection biases (proj_bias), which llama.cpp's "
                              "mamba architectures do not load")
    return "mamba" if cfg.mixer == "mamba1" else "mamba2"


def _mamba_params(writer, cfg) -> None:
    writer.add_context_length(1 << 20)  # no positions: any length; llama.cpp only sizes buffers by it
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(0)
    writer.add_head_count(0)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_ssm_conv_kernel(cfg.d_conv)
    writer.add_ssm_inner_size(cfg.d_inner)
    writer.add_ssm_state_size(cfg.d_state)
    writer.add_vocab_size(cfg.vocab_size)
    if cfg.mixer == "mamba1":
        writer.add_ssm_time_step_rank(cfg.rank)
        writer.add_ssm_dt_b_c_rms(False)
    else:
        writer.add_ssm_time_step_rank(cfg.nheads)  # llama.cpp's Mamba-2 reads its head count here
        writer.add_ssm_group_count(cfg.n_groups)


def _mamba_tensors(model) -> dict[str, torch.Tensor]:
    cfg = model.config
    out = {"token_embd.weight": model.embeddings.weight, "output_norm.weight": model.norm_f.weight}
    if not cfg.tie_embeddings:
        out["output.weight"] = model.lm_head.weight
    for i, layer in enumerate(model.layers):
        m, p = layer.mixer, f"blk.{i}."
        conv_bias = m.conv1d.bias if m.conv1d.bias is not None else torch.zeros(m.conv1d.weight.shape[0])
        out.update({p + "attn_norm.weight": layer.norm.weight, p + "ssm_in.weight": m.in_proj.weight,
                    p + "ssm_conv1d.weight": m.conv1d.weight[:, 0, :], p + "ssm_conv1d.bias": conv_bias,
                    p + "ssm_out.weight": m.out_proj.weight})
        A = -torch.exp(m.A_log.float())
        if cfg.mixer == "mamba1":
            out.update({p + "ssm_x.weight": m.x_proj.weight, p + "ssm_dt.weight": m.dt_proj.weight,
                        p + "ssm_dt.bias": m.dt_proj.bias, p + "ssm_a": A, p + "ssm_d": m.D})
        else:  # per head: (H, 1); the gated norm per group: (G, E / G)
            out.update({p + "ssm_dt.bias": m.dt_bias, p + "ssm_a": A[:, None], p + "ssm_d": m.D[:, None],
                        p + "ssm_norm.weight": m.norm.weight.reshape(cfg.n_groups, -1)})
    return out

