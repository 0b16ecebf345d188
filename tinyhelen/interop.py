"""Import from and export to the `transformers` format, for both models.

    save_hf(model, folder, eos_token_id=None)     config.json + model.safetensors (+ generation_config.json)
    save_hf_tokenizer(tokenizer, folder, max_len)  tokenizer.json + tokenizer_config.json +
                                                   special_tokens_map.json, for AutoTokenizer
    bpe_merges(tokenizer) -> [(bytes, bytes)]      a tiktoken-style BPE's merges, in rank order
    load_hf(folder, expect=None) -> model         a Llama or a Mamba, by the folder's model_type
    hf_config(model, eos_token_id=None) -> dict   the config.json that save_hf writes

    ours                                   transformers
    model_llama.Llama                      LlamaForCausalLM
    model_mamba.Mamba, Mamba-1 mixer       MambaForCausalLM
    model_mamba.Mamba, Mamba-2 mixer       Mamba2ForCausalLM, or with an MLP after each mixer
                                           BambaForCausalLM (the same blocks, no attention layers)

eos_token_id (the tokenizer's end-of-text) goes into config.json and generation_config.json, so
that transformers' generate stops where this engine's does; it is the bos too, since training joined
documents with it and sample.py starts every prompt with it (the exported tokenizer prepends it).
Files are written atomically (tinyhelen/atomic.py): a crash never leaves half a file. Unsupported variants raise HFFormatError (a ValueError) naming the
folder and what is not supported.

Layouts. Our matrices are (in, out) where transformers' are (out, in) (model_common.Linear says why),
so they are transposed. The Llama's fused q|k|v and gate|up matrices are split into q/k/v_proj and
gate/up_proj, and its q and k rows are permuted between our neighbouring-pairs rotary layout and
transformers' rotate-half layout (model_llama's docstring). The Mamba's parameters carry
transformers' names already, except the shared gated MLP's gate_up / down.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from tinyhelen.atomic import atomic_write_bytes, atomic_write_json
from model_common import GatedMLP

MLP_NAMES = ("gate_proj", "up_proj", "down_proj")  # the gated MLP's matrices, as transformers names them

class HFFormatError(ValueError):
    """A transformers folder or model this engine cannot convert: the message says what and why."""


def save_hf(model, folder: str | os.PathLike, eos_token_id: int | None = None) -> None:
    from safetensors.torch import save
    config = hf_config(model, eos_token_id)  # first: an unsupported model writes nothing
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in _hf_tensors(model).items()}
    folder = Path(folder)
    atomic_write_bytes(folder / "model.safetensors", save(tensors, metadata={"format": "pt"}))
    atomic_write_json(folder / "config.json", config)
    if eos_token_id is not None:
        # pad = eos, as for most models without a pad token: batched generate pads finished rows with it
        atomic_write_json(folder / "generation_config.json", {"bos_token_id": eos_token_id,
                                                              "eos_token_id": eos_token_id,
                                                              "pad_token_id": eos_token_id})


def load_hf(folder: str | os.PathLike, expect: type | None = None):
    """The model in a folder written by save_hf or by transformers' save_pretrained (config.json +
    model.safetensors, or shards listed in model.safetensors.index.json)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise HFFormatError(f"{folder}: no config.json; a transformers model folder holds config.json "
                            "and model.safetensors")
    hc = json.loads(config_path.read_text())
    kind = hc.get("model_type")
    if kind == "llama":
        from model_llama import Llama
        cls, build = Llama, _llama_from_hf
    elif kind in ("mamba", "mamba2", "bamba"):
        from model_mamba import Mamba
        cls, build = Mamba, _mamba_from_hf
    else:
        raise HFFormatError(f"{folder}: model_type {kind!r}; expected llama, mamba, mamba2 or bamba")
    if expect is not None and cls is not expect:
        raise HFFormatError(f"{folder}: model_type {kind!r} is a {cls.__name__}, not a {expect.__name__}")
    return build(folder, hc, _load_tensors(folder))


def hf_config(model, eos_token_id: int | None = None) -> dict:
    from model_llama import Llama
    ids = {"bos_token_id": eos_token_id, "eos_token_id": eos_token_id, "pad_token_id": None}
    if isinstance(model, Llama):
        return {**_llama_config(model.config), **ids}
    # a pad id would also zero that embedding's gradient in Bamba; transformers' Mamba defaults are 0
    return {**_mamba_layout(model.config)[0], **ids}


def _hf_tensors(model) -> dict[str, torch.Tensor]:
    from model_llama import Llama
    return _llama_tensors(model) if isinstance(model, Llama) else _mamba_tensors(model)


def _load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
        else ["model.safetensors"]
    tensors = {}
    for name in files:
        tensors.update(load_file(str(folder / name)))
    return tensors


# ------------------------------------------------------------------------------ tokenizer

def bpe_merges(tokenizer) -> list[tuple[bytes, bytes]]:
    """The merges of a tiktoken-style byte-level BPE (a token's id is its merge priority), in rank
    order. gpt-2K keeps the merges it learned; for cl100k_base and compact tokenizers, which keep
    only ranks, each token's last merge is found by running BPE on its own bytes with the tokens
    ranked below it. A token BPE cannot build from its bytes has no merge: tiktoken (and a
    tokenizers BPE with ignore_merges) produce it only when a whole piece equals it."""
    if tokenizer.compact is None and tokenizer.name != "cl100k_base":
        return [(tokenizer.token_bytes(a), tokenizer.token_bytes(b)) for a, b in tokenizer.merges]
    ranks = _regular_tokens(tokenizer)
    merges = []
    for token, rank in ranks.items():
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:  # tiktoken's merge loop, restricted to tokens ranked below this one
            found = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            best, i = min(found)
            if best >= rank:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2 and parts[0] in ranks and parts[1] in ranks:
            merges.append((parts[0], parts[1]))
    return merges


def hf_fast_tokenizer(tokenizer):
    """A `tokenizers.Tokenizer` that encodes exactly as ours: the same ids, the same pre-tokenizer
    pattern, tiktoken's whole-piece lookup (ignore_merges), and the end-of-text as a special token
    that the post-processor puts first (as sample.py does) when special tokens are asked for."""
    from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, processors
    from data.tokenizer import PretrainedTokenizer, gpt2_byte_to_unicode
    if isinstance(tokenizer, PretrainedTokenizer):  # an imported model's: already a `tokenizers` one
        return tokenizer.hf_fast()
    to_char = gpt2_byte_to_unicode()
    printable = lambda b: "".join(to_char[x] for x in b)  # noqa: E731
    specials = dict(tokenizer._enc._special_tokens)
    vocab = {printable(token): i for token, i in _regular_tokens(tokenizer).items()}
    vocab.update(specials)  # so that add_special_tokens keeps their ids (cl100k_base's have gaps)
    merges = [(printable(a), printable(b)) for a, b in bpe_merges(tokenizer)]
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_pattern_for_onig(tokenizer._enc._pat_str)), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(sorted(specials, key=specials.get))
    hf.encode_special_tokens = True  # "<|endoftext|>" inside a text is ordinary bytes, as in encode()
    eot = _eot_text(tokenizer)
    hf.post_processor = processors.TemplateProcessing(
        single=f"{eot} $A", pair=f"{eot} $A {eot} $B:1", special_tokens=[(eot, tokenizer.eot_id)])
    got = {hf.token_to_id(t): t for t in specials}
    if got != {i: t for t, i in specials.items()}:
        raise HFFormatError(f"{tokenizer.name}: special tokens {specials} did not keep their ids ({got})")
    return hf


def save_hf_tokenizer(tokenizer, folder: str | os.PathLike, model_max_length: int) -> None:
    """The files AutoTokenizer.from_pretrained reads: a fast tokenizer with end-of-text as bos, eos
    and pad (pad as in generation_config.json: batched generation pads finished rows with it)."""
    folder = Path(folder)
    eot = _eot_text(tokenizer)
    atomic_write_bytes(folder / "tokenizer.json", hf_fast_tokenizer(tokenizer).to_str().encode("utf-8"))
    names = {"bos_token": eot, "eos_token": eot, "pad_token": eot}
    atomic_write_json(folder / "special_tokens_map.json", names)
    atomic_write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", **names, "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False, "add_prefix_space": False, "split_special_tokens": True})


def _pattern_for_onig(pattern: str) -> str:
    """tiktoken's regex (fancy-regex) for tokenizers' Oniguruma (Ruby syntax), where two things
    differ: `$` matches at the end of every line, not only of the text (cl100k_base's `\\s++$` needs
    `\\z`), and `{1,3}+` repeats the group, not a possessive `{1,3}` (it would take "2022" whole)."""
    return re.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", re.sub(r"(?<!\\)\$", r"\\z", pattern))


def _regular_tokens(tokenizer) -> dict[bytes, int]:
    """Every ordinary token's bytes -> its id (cl100k_base has a hole at 100256, before its specials)."""
    return dict(tokenizer._enc._mergeable_ranks)


def _eot_text(tokenizer) -> str:
    specials = getattr(tokenizer, "special_tokens", None) or tokenizer._enc._special_tokens  # PretrainedTokenizer's
    return next(t for t, i in specials.items() if i == tokenizer.eot_id)


# ---------------------------------------------------------------------------------- Llama

def pairs_to_halves(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of a q or k projection, (n·Dh, in), from our neighbouring-pairs rotary layout
    (each head's rows ordered (Dh/2, 2)) to the rotate-half layout of `transformers` ((2, Dh/2))."""
    return w.unflatten(0, (n_heads, -1, 2)).transpose(1, 2).flatten(0, 2)


def halves_to_pairs(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of pairs_to_halves: rotate-half rows (2, Dh/2) per head -> neighbouring pairs."""
    return w.unflatten(0, (n_heads, 2, -1)).transpose(1, 2).flatten(0, 2)


def _llama_config(c) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": c.vocab_size, "hidden_size": c.n_embd, "intermediate_size": c.ffn_hidden,
        "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_kv_head, "head_dim": c.n_embd // c.n_head,
        "max_position_embeddings": c.max_seq_len, "rms_norm_eps": c.norm_eps,
        # rope_theta for transformers 4.x, rope_parameters for 5.x
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "tie_word_embeddings": c.tie_embeddings, "initializer_range": c.init_std,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "torch_dtype": "float32", "use_cache": True,
    }


def _llama_tensors(model) -> dict[str, torch.Tensor]:
    c = model.config
    hd = c.n_embd // c.n_head
    sd = {"model.embed_tokens.weight": model.tok_emb.weight, "model.norm.weight": model.norm.weight}
    if not c.tie_embeddings:
        sd["lm_head.weight"] = model.lm_head.weight
    for i, b in enumerate(model.blocks):
        p = f"model.layers.{i}."
        q, k, v = b.attn.qkv.weight.t().split([c.n_head * hd, c.n_kv_head * hd, c.n_kv_head * hd])
        sd.update({p + "input_layernorm.weight": b.attn_norm.weight,
                   p + "self_attn.q_proj.weight": pairs_to_halves(q, c.n_head),
                   p + "self_attn.k_proj.weight": pairs_to_halves(k, c.n_kv_head),
                   p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": b.attn.out.weight.t(),
                   p + "post_attention_layernorm.weight": b.mlp_norm.weight})
        sd.update({p + f"mlp.{name}.weight": w for name, w in b.mlp.split_for_export().items()})
    return sd


def _llama_from_hf(folder: Path, hc: dict, sd: dict[str, torch.Tensor]):
    from model_llama import Llama, LlamaConfig
    rope = hc.get("rope_parameters") or hc.get("rope_scaling") or {}
    problems = []
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        problems.append(f"rope scaling {rope}")
    if hc.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hc['hidden_act']!r}")
    if hc.get("attention_bias") or hc.get("mlp_bias"):
        problems.append("biases")
    n_head = hc["num_attention_heads"]
    if hc.get("head_dim") not in (None, hc["hidden_size"] // n_head):
        problems.append(f"head_dim {hc['head_dim']} != hidden_size / heads")
    if problems:
        raise HFFormatError(f"{folder}: unsupported Llama variant: {', '.join(problems)}")
    cfg = LlamaConfig(
        vocab_size=hc["vocab_size"], n_layer=hc["num_hidden_layers"], n_embd=hc["hidden_size"],
        n_head=n_head, n_kv_head=hc.get("num_key_value_heads") or n_head,
        ffn_hidden=hc["intermediate_size"], max_seq_len=hc.get("max_position_embeddings", 2048),
        rope_theta=float(rope.get("rope_theta", hc.get("rope_theta", 10000.0))),
        norm_eps=float(hc.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hc.get("tie_word_embeddings", False)),
        init_std=float(hc.get("initializer_range", 0.02)))
    model = Llama(cfg)
    ours = {"tok_emb.weight": sd.pop("model.embed_tokens.weight"), "norm.weight": sd.pop("model.norm.weight")}
    head = sd.pop("lm_head.weight", None)
    if cfg.tie_embeddings:
        ours["lm_head.weight"] = ours["tok_emb.weight"]  # the same Parameter; a saved copy is ignored
    elif head is None:
        raise HFFormatError(f"{folder}: untied model without lm_head.weight")
    else:
        ours["lm_head.weight"] = head
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        take = lambda name: sd.pop(p + name)  # noqa: E731
        ours.update({  # theirs (out, in) -> ours (in, out)
            f"blocks.{i}.attn_norm.weight": take("input_layernorm.weight"),
            f"blocks.{i}.attn.qkv.weight": torch.cat([
                halves_to_pairs(take("self_attn.q_proj.weight"), cfg.n_head),
                halves_to_pairs(take("self_attn.k_proj.weight"), cfg.n_kv_head),
                take("self_attn.v_proj.weight")]).t(),
            f"blocks.{i}.attn.out.weight": take("self_attn.o_proj.weight").t(),
            f"blocks.{i}.mlp_norm.weight": take("post_attention_layernorm.weight"),
        })
        mlp = GatedMLP.fuse_from_export(*(take(f"mlp.{n}.weight") for n in MLP_NAMES))
        ours.update({f"blocks.{i}.mlp.{name}.weight": w for name, w in mlp.items()})
    leftover = [k for k in sd if "rotary_emb" not in k]
    if leftover:
        raise HFFormatError(f"{folder}: unexpected tensors {leftover[:5]}")
    dtype = model.tok_emb.weight.dtype
    model.load_state_dict({k: v.to(dtype) for k, v in ours.items()}, strict=True)
    return model


# ---------------------------------------------------------------------------------- Mamba

def _mamba_tensors(model) -> dict[str, torch.Tensor]:
    """Our state dict under transformers' names; the gated MLPs split into their three matrices."""
    cfg = model.config
    _, renames = _mamba_layout(cfg)
    state = {k: v for k, v in model.state_dict().items()
             if ".mlp." not in k and not (cfg.tie_embeddings and k == "lm_head.weight")}
    for i, block in enumerate(model.layers):
        if cfg.mlp_hidden:
            state.update({f"layers.{i}.mlp.{n}.weight": w for n, w in block.mlp.split_for_export().items()})
    return {_hf_name(k, renames): v for k, v in state.items()}


def mamba_state_from_hf(tensors: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """transformers' tensors (by their names) -> our Mamba state dict, gated MLPs fused: the
    inverse of what save_hf writes (also maps their gradients onto ours, for the tests)."""
    _, renames = _mamba_layout(cfg)
    inverse = [(re.compile("^" + re.escape(hf).replace(r"\{i\}", r"(\d+)") + "$"), ours)
               for ours, hf in renames]
    state = {}
    for key, value in tensors.items():
        for pattern, ours in inverse:
            m = pattern.match(key)
            if m:
                state[ours.replace("{i}", m.group(1)) if m.groups() else ours] = value
                break
    for i in range(cfg.n_layer if cfg.mlp_hidden else 0):
        fused = GatedMLP.fuse_from_export(*(state.pop(f"layers.{i}.mlp.{n}.weight") for n in MLP_NAMES))
        state.update({f"layers.{i}.mlp.{n}.weight": w for n, w in fused.items()})
    if "embeddings.weight" in state:
        state.setdefault("lm_head.weight", state["embeddings.weight"])
    return state


def _mamba_from_hf(folder: Path, hc: dict, tensors: dict[str, torch.Tensor]):
    from model_mamba import Mamba
    cfg = _mamba_config_from_hf(folder, hc)
    model = Mamba(cfg)
    model.load_state_dict(mamba_state_from_hf(tensors, cfg))
    return model


def _mamba_layout(cfg):
    """(config.json dict, [(our name, HF name)] with {i} for the layer index)."""
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
                  tie_word_embeddings=cfg.tie_embeddings, torch_dtype="float32")
    if cfg.mixer == "mamba1" and cfg.mlp_hidden:
        raise HFFormatError("transformers has no Mamba-1 model with an MLP after each mixer: save a "
                            "Mamba-1 with mlp_hidden=0, or use the Mamba-2 mixer")
    if not cfg.mlp_hidden:
        renames = [("embeddings.weight", "backbone.embeddings.weight"),
                   ("layers.{i}.norm.weight", "backbone.layers.{i}.norm.weight"),
                   ("norm_f.weight", "backbone.norm_f.weight"), ("lm_head.weight", "lm_head.weight")]
        names = (["in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "out_proj.weight",
                  "out_proj.bias", "A_log", "D"]
                 + (["x_proj.weight", "dt_proj.weight", "dt_proj.bias"] if cfg.mixer == "mamba1"
                    else ["dt_bias", "norm.weight"]))
        renames += [(f"layers.{{i}}.mixer.{n}", f"backbone.layers.{{i}}.mixer.{n}") for n in names]
        shared = dict(state_size=cfg.d_state, expand=cfg.expand, conv_kernel=cfg.d_conv,
                      use_bias=cfg.proj_bias, use_conv_bias=cfg.conv_bias, layer_norm_epsilon=cfg.norm_eps,
                      time_step_min=cfg.dt_min, time_step_max=cfg.dt_max, time_step_floor=cfg.dt_floor)
        if cfg.mixer == "mamba1":
            return dict(architectures=["MambaForCausalLM"], model_type="mamba", time_step_rank=cfg.rank,
                        residual_in_fp32=True, **shared, **common), renames
        return dict(architectures=["Mamba2ForCausalLM"], model_type="mamba2", num_heads=cfg.nheads,
                    head_dim=cfg.headdim, n_groups=cfg.n_groups, chunk_size=cfg.chunk_size,
                    residual_in_fp32=True, **shared, **common), renames
    renames = [("embeddings.weight", "model.embed_tokens.weight"),
               ("layers.{i}.norm.weight", "model.layers.{i}.input_layernorm.weight"),
               ("layers.{i}.mlp_norm.weight", "model.layers.{i}.pre_ff_layernorm.weight"),
               ("norm_f.weight", "model.final_layernorm.weight"), ("lm_head.weight", "lm_head.weight")]
    renames += [(f"layers.{{i}}.mixer.{n}", f"model.layers.{{i}}.mamba.{n}")
                for n in ["in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "out_proj.weight",
                          "out_proj.bias", "A_log", "D", "dt_bias", "norm.weight"]]
    renames += [(f"layers.{{i}}.mlp.{n}.weight", f"model.layers.{{i}}.feed_forward.{n}.weight")
                for n in MLP_NAMES]
    return dict(architectures=["BambaForCausalLM"], model_type="bamba", intermediate_size=cfg.mlp_hidden,
                rms_norm_eps=cfg.norm_eps, attn_layer_indices=[], mamba_n_heads=cfg.nheads,
                mamba_d_head=cfg.headdim, mamba_n_groups=cfg.n_groups, mamba_d_state=cfg.d_state,
                mamba_d_conv=cfg.d_conv, mamba_expand=cfg.expand, mamba_chunk_size=cfg.chunk_size,
                mamba_conv_bias=cfg.conv_bias, mamba_proj_bias=cfg.proj_bias, hidden_act="silu",
                mlp_bias=False, num_attention_heads=1, num_key_value_heads=1, **common), renames


def _mamba_config_from_hf(folder: Path, hf: dict):
    from model_mamba import MambaConfig
    common = dict(vocab_size=hf["vocab_size"], n_embd=hf["hidden_size"], n_layer=hf["num_hidden_layers"],
                  tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    kind = hf.get("model_type")
    if kind in ("mamba", "mamba2"):
        shared = dict(d_state=hf["state_size"], expand=hf["expand"], d_conv=hf["conv_kernel"],
                      proj_bias=hf.get("use_bias", False), conv_bias=hf.get("use_conv_bias", True),
                      norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp_hidden=0, **common)
        if kind == "mamba":
            return MambaConfig(mixer="mamba1", dt_rank=int(hf["time_step_rank"]), **shared)
        return MambaConfig(mixer="mamba2", headdim=hf["head_dim"], n_groups=hf["n_groups"],
                           chunk_size=hf.get("chunk_size", 64), **shared)
    if hf.get("attn_layer_indices"):
        raise HFFormatError(f"{folder}: this Bamba model has attention layers, which tinyhelen's Mamba "
                            "does not have")
    return MambaConfig(mixer="mamba2", mlp_hidden=hf["intermediate_size"], norm_eps=hf["rms_norm_eps"],
                       headdim=hf["mamba_d_head"], n_groups=hf["mamba_n_groups"], d_state=hf["mamba_d_state"],
                       d_conv=hf["mamba_d_conv"], expand=hf["mamba_expand"],
                       chunk_size=hf.get("mamba_chunk_size", 64), conv_bias=hf.get("mamba_conv_bias", True),
                       proj_bias=hf.get("mamba_proj_bias", False), **common)


def _hf_name(key: str, renames) -> str:
    m = re.match(r"layers\.(\d+)\.(.*)", key)
    layer, rest = (m.group(1), "layers.{i}." + m.group(2)) if m else (None, key)
    for ours, hf in renames:
        if ours == rest:
            return hf.replace("{i}", layer) if layer is not None else hf
    raise KeyError(f"no transformers name for parameter {key}")
