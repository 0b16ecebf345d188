"""Parameter inheritance: a smaller Llama cut out of a trained larger one, to start training from.

    python inherit.py --from=out/big_run --to=configs/small.py --out_dir=out/small_inherited \
        [--layers=ends|importance] [--criterion=l2|taylor|random] [--tokenizer=compact.json]
    python train.py configs/small.py --init_from=out/small_inherited --out_dir=out/small_run

From a pretrained LLM (SmolLM2-135M, imported once by tinyhelen/pretrained.py) with its vocabulary
cut to the ids leaner text uses:
    python data/prepare.py --tokenizer=compact-smollm2:4000 --out_dir=out/data/leaner_smollm2_4k
    python inherit.py --from=smollm2-135m --to=configs/smollm2_child.py --out_dir=out/smollm2_child \
        --tokenizer=out/data/leaner_smollm2_4k/tokenizer.json --criterion=taylor
    python train.py configs/smollm2_child.py --init_from=out/smollm2_child

The recipe of "Rethinking Optimization and Architecture for Tiny Language Models": keep some of the
layers of the large model, and inside each kept layer the most important attention heads and FFN
neurons, and the most important hidden channels everywhere; the small model starts from those
weights instead of from noise. --to names a config file whose `model` is the target LlamaConfig
(as configs/demo_llama.py writes it); every size must be at most the source's.

Which shapes can be cut. Heads are kept whole, so the head dim (n_embd / n_head) is the source's;
hidden channels are chosen on their own, and the engine's Llama has n_embd = n_head x head dim, so
the target's width is fixed by its head count: n_embd = n_head x the source's head dim. Query heads
stay with their key/value head, so n_head / n_kv_head is at most the source's. rope_theta and
norm_eps are the source's; a tied source may give an untied target (the head starts as a copy of the
embedding rows), an untied one cannot give a tied target. From SmolLM2 (head dim 64, 9 query heads
over 3 kv heads, groups of 3, width 576, 30 layers, FFN 1,536): n_embd = 64 x n_head with (n_head,
n_kv_head) one of (1,1) (2,1) (3,1) (2,2) (4,2) (6,2) (3,3) (6,3) (9,3); any n_layer <= 30 and
ffn_hidden <= 1,536; rope_theta 100,000. The paper's 14M shape (width 336, 8 heads of 42) cannot
be cut from it; the nearest are width 384 with 6 heads over 2 or 3 kv heads, or 256 with 4 over 2.

Layers: `ends` keeps the first ceil(n/2) and the last floor(n/2) layers (the paper finds the ends
matter most); `importance` keeps the layers whose removal raises the loss on a few real batches
the most. Width units are ranked by `criterion`:
    l2      the L2 norm of the weights that belong to the unit
    taylor  |sum over the unit's weights of w * dL/dw|, averaged over a few real batches: the
            first-order estimate of how much the loss changes when the unit is removed
    random  a seeded random choice (the paper's ablation)
A query head's weights are its q columns and its rows of the output projection; a key/value head's
its k and v columns; a neuron's its gate and up columns and its down row; a hidden channel's its
embedding and head column, its entries of every norm, its rows of every qkv and gate_up and its
columns of every output and down projection. With grouped-query attention (K < H) the kv heads are
chosen first (by their own score plus their query heads'), then the query heads inside each kept
group. Kept units keep their order.

With --tokenizer=FILE (a compact tokenizer cut from the source's tokenizer, data/compact_tokenizer.py)
the embedding and head rows are those of the compact ids' base ids (SmolLM2's head is its embedding).

Real batches (taylor, importance) are the source's own kind of text in the source's own tokens: the
validation split of the source run's data_dir, or of --data_dir (prepared with the source's
tokenizer: python data/prepare.py --tokenizer=SOURCE/tokenizer.json); an imported LLM has no data_dir,
so the leaner validation text under --data_root is tokenized with its tokenizer as it is read.
Taylor scores depend on the source and these batches only, so they are kept in SOURCE/inherit_scores/
and a later cut of the same source on the same batches (another shape or vocabulary) reuses them.

The result is a normal run folder: ckpt.pt (step 0, no optimizer), the tokenizer, inherit.json (what
was kept); sample.py, evaluate.py, export.py and train.py --init_from accept it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tinyhelen import config as config_lib
from tinyhelen import runlock
from tinyhelen.atomic import atomic_write_json
from tinyhelen.checkpoint import CheckpointError, atomic_torch_save, build_model, load_checkpoint, \
    model_config_from_dict
from tinyhelen.config import setting
from tinyhelen.pretrained import resolve
from model_llama import Llama, LlamaConfig

REPO = Path(__file__).resolve().parent


class InheritError(ValueError):
    """A target that cannot be cut from the source: the message says why and what to change."""


@dataclass
class InheritConfig:
    source: str = ""          # --from: the trained run folder (or ckpt.pt) to inherit from
    to: str = ""              # a config file whose `model` is the target LlamaConfig
    out_dir: str = ""         # the new run folder
    layers: str = setting("ends", choices=("ends", "importance"))
    criterion: str = setting("l2", choices=("l2", "taylor", "random"))
    tokenizer: str = ""       # a compact tokenizer cut from the source's: map embedding/head rows
    data_dir: str = ""        # batches for taylor / importance ("": the source run's data_dir)
    data_root: str = ""       # no data_dir: leaner validation text from here ("": ../shared/data/tinyhelen)
    batches: int = setting(4, min=1)
    batch_size: int = setting(8, min=1)
    seq_len: int = setting(0, min=0)   # 0: the source run's, at most 256
    seed: int = 0             # for criterion=random


@dataclass
class Selection:
    """What is kept, as source indices: per kept layer its query heads (grouped by kv head), kv heads
    and FFN neurons; the hidden channels; the vocabulary rows (None: all)."""
    layers: list[int]
    q_heads: list[list[int]]
    kv_heads: list[list[int]]
    neurons: list[list[int]]
    channels: list[int]
    vocab: list[int] | None = None
    scores: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- checks

def check_target(src: LlamaConfig, tgt, vocab_size: int) -> LlamaConfig:
    """The target config with the vocabulary it will have; InheritError when it cannot be cut."""
    if not isinstance(src, LlamaConfig) or not isinstance(tgt, LlamaConfig):
        raise InheritError(f"inheritance works within the Llama family: the source is a "
                           f"{type(src).__name__}, the target a {type(tgt).__name__}; give a target "
                           f"model = LlamaConfig(...) and a Llama source run")
    dh, group = src.n_embd // src.n_head, src.n_head // src.n_kv_head
    # what every message ends with: what can be cut from this source (the module docstring's rule)
    supported = (f"the source has n_layer={src.n_layer}, n_head={src.n_head} over n_kv_head={src.n_kv_head} "
                 f"of dim {dh}, n_embd={src.n_embd}, ffn_hidden={src.ffn_hidden}; a target can have at most "
                 f"those, n_embd = {dh} x n_head (heads are kept whole) and at most {group} query heads "
                 f"per kv head")
    sizes = ("n_layer", "n_embd", "n_head", "n_kv_head", "ffn_hidden")
    larger = [f"{k} {getattr(tgt, k)} > {getattr(src, k)}" for k in sizes
              if getattr(tgt, k) > getattr(src, k)]
    if larger:
        raise InheritError(f"the target is larger than the source ({', '.join(larger)}): a model can only "
                           f"inherit from a larger one; {supported}")
    if tgt.n_embd // tgt.n_head != dh:
        raise InheritError(f"head dim differs: the source's is {dh}, the target's n_embd/n_head = "
                           f"{tgt.n_embd // tgt.n_head}; set n_head = n_embd / {dh}; {supported}")
    if tgt.n_head // tgt.n_kv_head > group:
        raise InheritError(f"the target has {tgt.n_head // tgt.n_kv_head} query heads per kv head, "
                           f"the source only {group}; raise n_kv_head; {supported}")
    for k in ("rope_theta", "norm_eps"):  # close is enough: an imported fp32 1e-5 is 9.9999997e-06
        if not math.isclose(getattr(tgt, k), getattr(src, k), rel_tol=1e-6):
            raise InheritError(f"{k} must be the source's ({getattr(src, k)!r}), the target has "
                               f"{getattr(tgt, k)!r}")
    if tgt.tie_embeddings and not src.tie_embeddings:
        raise InheritError("the target ties its head to the embedding, the source does not: set "
                           "tie_embeddings=False (a tied source may give an untied target, not the reverse)")
    return dataclasses.replace(tgt, vocab_size=vocab_size, rope_theta=src.rope_theta, norm_eps=src.norm_eps)


# ----------------------------------------------------------------------------- unit scores

def _head_cols(i: int, dh: int, offset: int = 0) -> slice:
    return slice(offset + i * dh, offset + (i + 1) * dh)


def unit_sums(model: Llama, values: dict[str, torch.Tensor]) -> dict:
    """Sum an elementwise tensor per parameter (w², w·g...) over each unit's weights:
    {"q": (L, H), "kv": (L, K), "neuron": (L, F), "channel": (D,)}."""
    c = model.config
    H, K, dh, F = c.n_head, c.n_kv_head, c.n_embd // c.n_head, c.ffn_hidden
    q, kv, neuron = [], [], []
    channel = values["tok_emb.weight"].sum(0) + values["norm.weight"]
    if not c.tie_embeddings:
        channel = channel + values["lm_head.weight"].sum(0)
    for i in range(c.n_layer):
        p = f"blocks.{i}."
        qkv, out = values[p + "attn.qkv.weight"], values[p + "attn.out.weight"]
        gate_up, down = values[p + "mlp.gate_up.weight"], values[p + "mlp.down.weight"]
        q.append(qkv[:, :H * dh].sum(0).view(H, dh).sum(1) + out.sum(1).view(H, dh).sum(1))
        kv.append(qkv[:, H * dh:].sum(0).view(2, K, dh).sum((0, 2)))
        neuron.append(gate_up.sum(0).view(2, F).sum(0) + down.sum(1))
        channel = channel + values[p + "attn_norm.weight"] + values[p + "mlp_norm.weight"] + qkv.sum(1) \
            + out.sum(0) + gate_up.sum(1) + down.sum(0)
    return {"q": torch.stack(q), "kv": torch.stack(kv), "neuron": torch.stack(neuron), "channel": channel}


def scores_l2(model: Llama) -> dict:
    sums = unit_sums(model, {k: v.detach().double() ** 2 for k, v in model.named_parameters()})
    return {k: v.sqrt() for k, v in sums.items()}


def scores_taylor(model: Llama, batches) -> dict:
    """Mean over batches of |sum over a unit's weights of w * dL/dw|."""
    total = None
    params = dict(model.named_parameters())
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        model(x, y)[1].backward()
        s = unit_sums(model, {k: (p.detach() * p.grad).double() for k, p in params.items()})
        s = {k: v.abs() for k, v in s.items()}
        total = s if total is None else {k: total[k] + s[k] for k in s}
    model.zero_grad(set_to_none=True)
    return {k: v / len(batches) for k, v in total.items()}


def scores_random(model: Llama, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    sums = unit_sums(model, {k: p.detach() for k, p in model.named_parameters()})
    shapes = {k: v.shape for k, v in sums.items()}
    return {k: torch.rand(shape, generator=g, dtype=torch.float64) for k, shape in shapes.items()}


@torch.no_grad()
def batch_loss(model: Llama, batches) -> float:
    return sum(model(x, y)[1].item() for x, y in batches) / len(batches)


@torch.no_grad()
def layer_importance(model: Llama, batches) -> list[float]:
    """Rise in loss when each layer is skipped (the block left out of the residual stream)."""
    base, blocks, rises = batch_loss(model, batches), model.blocks, []
    try:
        for i in range(len(blocks)):
            model.blocks = torch.nn.ModuleList(b for j, b in enumerate(blocks) if j != i)
            rises.append(batch_loss(model, batches) - base)
    finally:
        model.blocks = blocks
    return rises


# ----------------------------------------------------------------------------- selection and slicing

def top(scores: torch.Tensor, k: int) -> list[int]:
    """The k highest-scoring indices, in their original order (ties: the lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def select(model: Llama, tgt: LlamaConfig, scores: dict, layers: str, batches=None,
           vocab: list[int] | None = None) -> Selection:
    c = model.config
    if layers == "ends":
        n = tgt.n_layer
        kept = list(range((n + 1) // 2)) + list(range(c.n_layer - n // 2, c.n_layer))
        layer_scores = None
    else:
        layer_scores = layer_importance(model, batches)
        kept = top(torch.tensor(layer_scores), tgt.n_layer)
    g, g_new = c.n_head // c.n_kv_head, tgt.n_head // tgt.n_kv_head
    q_heads, kv_heads = [], []
    for i in kept:
        q = scores["q"][i]
        group = scores["kv"][i] + q.view(c.n_kv_head, g).sum(1)
        kvs = top(group, tgt.n_kv_head)
        kv_heads.append(kvs)
        q_heads.append([kv * g + j for kv in kvs for j in top(q[kv * g:(kv + 1) * g], g_new)])
    return Selection(layers=kept, q_heads=q_heads, kv_heads=kv_heads,
                     neurons=[top(scores["neuron"][i], tgt.ffn_hidden) for i in kept],
                     channels=top(scores["channel"], tgt.n_embd), vocab=vocab,
                     scores={"layers": layer_scores})


def slice_state(model: Llama, tgt: LlamaConfig, sel: Selection) -> dict[str, torch.Tensor]:
    """The target's state dict: exactly the selected rows, columns, heads and layers of the source."""
    c = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    H, K, dh, F = c.n_head, c.n_kv_head, c.n_embd // c.n_head, c.ffn_hidden
    ch = torch.tensor(sel.channels)
    rows = torch.tensor(sel.vocab) if sel.vocab is not None else torch.arange(c.vocab_size)
    out = {"tok_emb.weight": sd["tok_emb.weight"][rows][:, ch], "norm.weight": sd["norm.weight"][ch],
           "lm_head.weight": sd["lm_head.weight"][rows][:, ch]}
    for new, (i, qs, kvs, ns) in enumerate(zip(sel.layers, sel.q_heads, sel.kv_heads, sel.neurons)):
        p, q = f"blocks.{i}.", f"blocks.{new}."
        cols = ([j for h in qs for j in range(h * dh, (h + 1) * dh)]
                + [j for kv in kvs for j in range((H + kv) * dh, (H + kv + 1) * dh)]
                + [j for kv in kvs for j in range((H + K + kv) * dh, (H + K + kv + 1) * dh)])
        out_rows = [j for h in qs for j in range(h * dh, (h + 1) * dh)]
        neurons = torch.tensor(ns)
        out.update({
            q + "attn_norm.weight": sd[p + "attn_norm.weight"][ch],
            q + "mlp_norm.weight": sd[p + "mlp_norm.weight"][ch],
            q + "attn.qkv.weight": sd[p + "attn.qkv.weight"][ch][:, cols],
            q + "attn.out.weight": sd[p + "attn.out.weight"][out_rows][:, ch],
            q + "mlp.gate_up.weight": sd[p + "mlp.gate_up.weight"][ch][:, torch.cat([neurons, neurons + F])],
            q + "mlp.down.weight": sd[p + "mlp.down.weight"][neurons][:, ch],
        })
    return {k: v.clone().contiguous() for k, v in out.items()}


def inherit_model(model: Llama, tgt: LlamaConfig, criterion: str = "l2", layers: str = "ends",
                  batches=None, vocab: list[int] | None = None, seed: int = 0,
                  scores: dict | None = None) -> tuple[Llama, Selection]:
    """(the target model holding the inherited weights, what was kept). `scores`: the criterion's unit
    scores when already computed (a cached taylor run), else they are computed here."""
    tgt = check_target(model.config, tgt, len(vocab) if vocab is not None else model.config.vocab_size)
    if ((scores is None and criterion == "taylor") or layers == "importance") and not batches:
        raise InheritError(f"criterion={criterion} / layers={layers} needs real batches")
    model = model.float()
    if scores is None:
        scores = (scores_l2(model) if criterion == "l2" else scores_taylor(model, batches)
                  if criterion == "taylor" else scores_random(model, seed))
    sel = select(model, tgt, scores, layers, batches, vocab)
    small = build_model(tgt)
    small.load_state_dict(slice_state(model, tgt, sel))
    return small, sel


# ----------------------------------------------------------------------------- the command

def read_target(path: str):
    import trainer
    if not path or not Path(path).is_file():
        raise InheritError(f"--to={path!r}: give a config file whose `model` is the target LlamaConfig")
    # only the file's model is wanted: a short seq_len keeps TrainConfig's seq_len <= max_seq_len check
    # from judging a training length the file may not set
    return config_lib.parse_args(trainer.TrainConfig(), [path, "--seq_len=2"]).model


def real_batches(cfg: InheritConfig, src_config: dict, meta: dict, source_dir: Path) -> list:
    """cfg.batches real (x, y) batches in the source's tokens (the module docstring says from where)."""
    from data.tokens import TokenBatches, open_tokens, read_meta
    data_dir = cfg.data_dir or src_config.get("data_dir", "")
    # a few batches estimate the scores; an LLM's 2,048-token window would cost minutes on a CPU
    seq_len = cfg.seq_len or min(src_config.get("seq_len", 256), 256)
    if data_dir:
        data_meta = read_meta(data_dir)
        if (data_meta.get("tokenizer_name"), data_meta.get("vocab_size")) != \
                (meta.get("tokenizer_name"), meta.get("vocab_size")):
            raise InheritError(f"--data_dir={data_dir} is in {data_meta.get('tokenizer_name')}'s tokens, the "
                               f"source reads {meta.get('tokenizer_name')}'s: prepare it with python "
                               f"data/prepare.py --tokenizer={source_dir / 'tokenizer.json'}")
        tokens = open_tokens(data_dir, "validation")
    else:
        tokens = leaner_tokens(cfg.data_root, source_dir / "tokenizer.json", cfg)
    source = TokenBatches(tokens, cfg.batch_size, seq_len, seed=20250101)
    return [source.next_batch() for _ in range(cfg.batches)]


def leaner_tokens(data_root: str, tokenizer_file: Path, cfg: InheritConfig):
    """The leaner validation documents under data_root, each encoded with the source's tokenizer and
    followed by its end-of-text, as data/prepare.py joins them."""
    import numpy as np
    from data.corpus import DEFAULT_SCALE, DataError, available_genres, iter_documents
    from data.tokenizer import load_tokenizer
    root = Path(data_root) if data_root else REPO / ".." / "shared" / "data" / "tinyhelen"
    try:
        genres = available_genres(root, "leaner", "validation", DEFAULT_SCALE)
    except DataError:
        genres = []
    if not genres:
        raise InheritError(f"criterion={cfg.criterion} / layers={cfg.layers} scores units on real text in the "
                           f"source's tokens; the source has no data_dir and there is no leaner validation "
                           f"text under {root}: give --data_root=PATH (the TinyHelen data, tokenized as read) "
                           f"or --data_dir=a folder prepared with python data/prepare.py "
                           f"--tokenizer={tokenizer_file}, or use --criterion=l2 --layers=ends")
    tok = load_tokenizer(tokenizer_file)
    texts = [d.text for d in iter_documents(root, "leaner", "validation", genres, DEFAULT_SCALE)]
    return np.array([i for ids in tok.encode_batch(texts) for i in ids + [tok.eot_id]], dtype=np.int64)


def cached_taylor(cfg: InheritConfig, model: Llama, batches, source_dir: Path) -> dict:
    """Taylor scores of the source's units. They depend on the source and the batches' tokens only (not
    on the target or the vocabulary cut), and cost a forward and backward pass of the source per batch, about a
    minute for SmolLM2 on 2 cores: kept in SOURCE/inherit_scores/ and reused by every later cut on
    the same batches. A source folder that cannot be written to is scored every time."""
    import hashlib
    ckpt = source_dir / "ckpt.pt"
    stat = ckpt.stat() if ckpt.is_file() else None
    # the key: the source file as it is now, and the very token ids of the batches (wherever they came from)
    key = hashlib.sha1(json.dumps(stat and [stat.st_size, stat.st_mtime_ns]).encode())
    for x, y in batches:
        key.update(x.numpy().tobytes())
        key.update(y.numpy().tobytes())
    path = source_dir / "inherit_scores" / f"taylor-{key.hexdigest()[:12]}.pt"
    if path.is_file():
        print(f"taylor scores of {source_dir} on these batches: reused from {path}")
        return torch.load(path, map_location="cpu", weights_only=True)
    scores = scores_taylor(model.float(), batches)
    try:
        path.parent.mkdir(exist_ok=True)
        atomic_torch_save(scores, path)
    except OSError as e:
        print(f"note: the taylor scores are not kept ({e}); the next cut scores again")
    return scores


def inherit(cfg: InheritConfig, target: LlamaConfig | None = None) -> Path:
    """Cut cfg.source to the shape of cfg.to (or of `target`, for a study that builds shapes in code)."""
    if not cfg.source or not cfg.out_dir:
        raise InheritError("give --from=RUN (a trained run folder) and --out_dir=NEW_RUN")
    with runlock.hold(cfg.out_dir):  # one writer per run folder, taken before any compute
        return _inherit(cfg, target)


def _inherit(cfg: InheritConfig, target: LlamaConfig | None) -> Path:
    tgt = target if target is not None else read_target(cfg.to)
    source = resolve(cfg.source)  # a short name (smollm2-135m) or a .gguf: its imported run folder
    ckpt = load_checkpoint(source)
    src_cfg = model_config_from_dict(ckpt["config"]["model"])
    # before any compute: a target that cannot be cut stops here
    check_target(src_cfg, tgt, src_cfg.vocab_size if isinstance(src_cfg, LlamaConfig) else 0)
    source_dir = Path(source) if Path(source).is_dir() else Path(source).parent
    meta = dict(ckpt.get("data_meta") or {})
    vocab, tokenizer_file = None, source_dir / "tokenizer.json"
    if cfg.tokenizer:
        from data.tokenizer import load_tokenizer
        tok = load_tokenizer(cfg.tokenizer)
        if tok.compact is None or tok.compact["base"] != meta.get("tokenizer_name"):
            raise InheritError(f"--tokenizer={cfg.tokenizer} must be a compact tokenizer cut from the "
                               f"source's tokenizer ({meta.get('tokenizer_name')!r}); build one with "
                               f"python data/compact_tokenizer.py --base={meta.get('tokenizer_name')}")
        vocab = tok.compact["base_ids"]
        if max(vocab) >= src_cfg.vocab_size:
            raise InheritError(f"{cfg.tokenizer}: base id {max(vocab)} is outside the source's vocabulary")
        meta.update(tokenizer="tokenizer.json", tokenizer_name=tok.name, vocab_size=tok.vocab_size,
                    eot_id=tok.eot_id)
        tokenizer_file = Path(cfg.tokenizer)
    if tgt.vocab_size != (len(vocab) if vocab else src_cfg.vocab_size):
        print(f"note: the target's vocab_size becomes {len(vocab) if vocab else src_cfg.vocab_size} "
              f"(the {'compact tokenizer' if vocab else 'source'}'s), not {tgt.vocab_size}")
    model = build_model(src_cfg)
    model.load_state_dict(ckpt["model"])
    needs_data = cfg.criterion == "taylor" or cfg.layers == "importance"
    batches = real_batches(cfg, ckpt["config"], ckpt.get("data_meta") or {}, source_dir) if needs_data else None
    scores = cached_taylor(cfg, model, batches, source_dir) if cfg.criterion == "taylor" else None
    small, sel = inherit_model(model, tgt, cfg.criterion, cfg.layers, batches, vocab, cfg.seed, scores)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dict = {"__class__": type(small.config).__name__, **config_lib.to_dict(small.config)}
    run_config = {**ckpt["config"], "model": model_dict, "out_dir": str(out_dir),
                  # evaluate.py scores in windows of seq_len: an LLM's 2,048 may not fit the target
                  "seq_len": min(ckpt["config"].get("seq_len", small.config.max_seq_len), small.config.max_seq_len)}
    record = {"from": str(cfg.source), "criterion": cfg.criterion, "layers": cfg.layers,
              "tokenizer": cfg.tokenizer,
              **{k: v for k, v in dataclasses.asdict(sel).items() if k != "vocab"}}
    atomic_torch_save({"model": small.state_dict(), "config": run_config, "data_meta": meta, "step": 0,
                       "tokens_seen": 0, "inherit": json.dumps(record)}, out_dir / "ckpt.pt")
    if tokenizer_file.is_file():
        shutil.copyfile(tokenizer_file, out_dir / "tokenizer.json")
    atomic_write_json(out_dir / "inherit.json", record)
    print(f"wrote {out_dir}/ckpt.pt: {small.num_params():,} non-embedding parameters inherited from "
          f"{model.num_params():,} (layers {sel.layers}, criterion {cfg.criterion}); continue with "
          f"python train.py CONFIG --init_from={out_dir}")
    return out_dir


@config_lib.exits_2_on(InheritError, CheckpointError, FileNotFoundError, ValueError)
def main(cfg: InheritConfig) -> None:
    inherit(cfg)


if __name__ == "__main__":
    # --from=RUN reads as the issue and the paper say it; `from` is a Python keyword, so the field is source
    argv = [("--source=" + a[len("--from="):]) if a.startswith("--from=") else a for a in sys.argv[1:]]
    config_lib.run_cli(main, InheritConfig(), argv)
