"""Equal-budget models with different tokenizers, compared in validation bits per byte.

    python studies/tokenizer_choice.py --base=configs/demo_llama.py \
        --tokenizers=train,compact:2000,compact:4000,compact:8000,compact:16000 --seeds=1,2 \
        --out_dir=out/tokenizer_study [--equal=tokens|bytes]

For each tokenizer (any value of data/prepare.py's --tokenizer: train for gpt-2K, compact:N,
cl100k_base, or a file) it prepares the corpus into OUT_DIR/data/NAME (once), trains the --base
config's model with the vocabulary set to that tokenizer's (every other size unchanged, so the
non-embedding parameters are equal and the embedding and head grow with the vocabulary) through
train.py's pre-training stage, and scores the validation split with evaluate.py: bits per byte,
which does not depend on the tokenizer. --equal=tokens gives every run the base config's max_steps
(the same number of training tokens); --equal=bytes scales each run's steps so that every run reads
the same number of bytes of text as the first tokenizer's run (a shorter tokenizer then gets fewer
steps).

Resumable: a prepared data folder is reused, a finished run (result.json) is skipped, a stopped one
continues from its checkpoint; summary.md, summary.json and curves.png (validation bits per byte
against training tokens per tokenizer, and the final figure against the vocabulary size) are
rebuilt from every result. The wall time of every preparation, run and evaluation is appended to
OUT_DIR/times.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python studies/NAME.py`: import from the repo root, not studies/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from studies import common
from tinyhelen import config as config_lib
from tinyhelen.atomic import atomic_write_json, atomic_write_text
from tinyhelen.checkpoint import CheckpointError
from tinyhelen.config import setting
from data.corpus import CORPORA, DataError


@dataclass
class TokenizerStudyConfig:
    base: str = "configs/demo_llama.py"  # the training config of every run
    train_args: tuple[str, ...] = ()     # extra train.py flags for every run, e.g. --batch_size=8,--lr=1e-3
    out_dir: str = "out/tokenizer_study"
    tokenizers: tuple[str, ...] = setting(("train", "compact:2000", "compact:4000", "compact:8000",
                                           "compact:16000"), check=common.at_least_one)
    seeds: tuple[int, ...] = setting((1,), check=common.at_least_one)
    equal: str = setting("tokens", choices=("tokens", "bytes"))
    data_root: str = ""                  # "": ../shared/data/tinyhelen
    corpus: str = setting("leaner", choices=CORPORA)
    genres: str = "all"                  # what is prepared (and so trained on and scored)
    eval_tokens_per_genre: int = setting(0, min=0)  # 0: the whole validation split
    report_only: bool = False


def slug(tokenizer: str) -> str:
    """A folder name: compact:4000 -> compact_4000, a tokenizer file -> its stem."""
    name = Path(tokenizer).stem if tokenizer.endswith(".json") else tokenizer
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def prepared(cfg: TokenizerStudyConfig, tokenizer: str) -> Path:
    from data.prepare import PrepareConfig, prepare
    folder = Path(cfg.out_dir) / "data" / slug(tokenizer)
    if not (folder / "meta.json").is_file():  # prepare writes meta.json last
        common.Runner(cfg.out_dir).call(
            "prepare", f"{folder}: the {cfg.corpus} corpus with the tokenizer {tokenizer}", prepare,
            PrepareConfig(data_root=cfg.data_root or None, corpus=cfg.corpus, genres=cfg.genres,
                          tokenizer=tokenizer, out_dir=str(folder), progress=False))
    return folder


def run_one(cfg: TokenizerStudyConfig, train_cfg, tokenizer: str, seed: int, reference_tpb: float) -> dict:
    import evaluate
    import train
    from data.tokens import read_meta, tokens_per_byte
    folder = Path(cfg.out_dir) / f"{slug(tokenizer)}_seed{seed}"
    run_dir = folder / "run"
    state = common.run_state(run_dir, result=folder / "result.json")
    if state == common.FINISHED:
        print(f"{folder.name}: done, skipped")
        return json.loads((folder / "result.json").read_text())
    data_dir = prepared(cfg, tokenizer)
    meta = read_meta(data_dir)
    steps = train_cfg.max_steps
    if cfg.equal == "bytes":  # the same bytes as the reference run: steps scale with tokens per byte
        steps = max(1, round(train_cfg.max_steps * tokens_per_byte(meta, "train") / reference_tpb))
    model = dataclasses.replace(train_cfg.model, vocab_size=meta["vocab_size"])
    run_cfg = dataclasses.replace(train_cfg, model=model, data_dir=str(data_dir), out_dir=str(run_dir),
                                  seed=seed, max_steps=steps, sample_tokens=0, init_from="",
                                  resume=state == common.STOPPED)
    runner = common.Runner(cfg.out_dir)
    trainer = runner.call("train", f"{folder.name}: {meta['tokenizer_name']} ({meta['vocab_size']:,} ids), "
                                   f"{steps} steps" + (" (resuming)" if run_cfg.resume else ""),
                          train.pretrain, run_cfg)
    scores = runner.call("evaluate", f"{folder.name}: validation bits per byte", evaluate.evaluate,
                         evaluate.EvalConfig(out_dir=str(run_dir), data=str(meta["data_root"]), corpus=cfg.corpus,
                                             split="validation", genres=cfg.genres,
                                             max_tokens_per_genre=cfg.eval_tokens_per_genre,
                                             device=train_cfg.device))
    from tinyhelen.metrics import read_metrics
    speeds = [r["tokens_per_s"] for r in read_metrics(run_dir / "metrics.jsonl") if "tokens_per_s" in r]
    result = {"tokenizer": tokenizer, "name": meta["tokenizer_name"], "vocab_size": meta["vocab_size"],
              "seed": seed, "steps": steps, "train_tokens": trainer.tokens_seen,
              "train_tokens_per_byte": tokens_per_byte(meta, "train"),
              "non_embedding_params": trainer.model.num_params(),
              "params": trainer.model.num_params(non_embedding=False),
              "val_bits_per_byte": scores["bits_per_byte"], "val_loss": scores["loss"],
              "train_tokens_per_s": statistics.mean(speeds[1:] or speeds)}
    atomic_write_json(folder / "result.json", result)
    return result


def summarise(results: list[dict], order: list[str]) -> list[dict]:
    rows = []
    position = {t: i for i, t in enumerate(order)}
    for tok in sorted({r["tokenizer"] for r in results}, key=lambda t: position.get(t, len(order))):
        rs = [r for r in results if r["tokenizer"] == tok]
        bpb, bpb_sd = common.mean_sd([r["val_bits_per_byte"] for r in rs])
        keep = ("tokenizer", "name", "vocab_size", "non_embedding_params", "params", "train_tokens_per_byte",
                "steps")
        rows.append({**{k: rs[0][k] for k in keep},
                     "seeds": len(rs), "val_bits_per_byte": bpb, "bpb_std": bpb_sd,
                     "train_tokens_per_s": statistics.mean(r["train_tokens_per_s"] for r in rs)})
    return rows


def table(rows: list[dict]) -> str:
    header = ["tokenizer", "ids", "params (non-emb)", "emb+head share", "train tokens/byte", "steps", "seeds",
              "val bits/byte", "train tok/s"]
    return common.markdown_table(header, [
        [r["name"], f"{r['vocab_size']:,}", f"{r['params']:,} ({r['non_embedding_params']:,})",
         f"{100 * (1 - r['non_embedding_params'] / r['params']):.1f}%", f"{r['train_tokens_per_byte']:.4f}",
         r["steps"], r["seeds"], common.format_mean_sd(r["val_bits_per_byte"], r["bpb_std"]),
         f"{r['train_tokens_per_s']:,.0f}"] for r in rows])


def bpb_curve(cfg: TokenizerStudyConfig, result: dict) -> list[tuple[int, float]]:
    """(training tokens, bits per byte) at each of a run's evaluations: train.py's validation loss in
    nats per token on fixed windows, times the validation split's tokens per byte, over ln 2."""
    from data.tokens import read_meta, tokens_per_byte
    from tinyhelen.metrics import read_metrics
    folder = Path(cfg.out_dir) / f"{slug(result['tokenizer'])}_seed{result['seed']}"
    per_byte = tokens_per_byte(read_meta(Path(cfg.out_dir) / "data" / slug(result["tokenizer"])), "validation")
    rows = read_metrics(folder / "run" / "metrics.jsonl")
    per_step = result["train_tokens"] / result["steps"]
    return [(round(r["step"] * per_step), r["val_loss"] * per_byte / math.log(2)) for r in rows if "val_loss" in r]


def plot(cfg: TokenizerStudyConfig, results: list[dict], rows: list[dict], path: Path) -> None:
    with common.figure(path, 1, 2, figsize=(12, 4.5), dpi=100) as (fig, (curves, finals)):
        for i, row in enumerate(rows):  # one colour per tokenizer, one line per seed, named once
            for j, r in enumerate(r for r in results if r["tokenizer"] == row["tokenizer"]):
                tokens, bpb = zip(*bpb_curve(cfg, r))
                curves.plot(tokens, bpb, color=f"C{i}", alpha=0.8, label=None if j else row["name"])
            finals.errorbar([row["vocab_size"]], [row["val_bits_per_byte"]], yerr=[row["bpb_std"] or 0.0],
                            marker="o", color=f"C{i}", capsize=3)
            finals.annotate(row["name"], (row["vocab_size"], row["val_bits_per_byte"]), textcoords="offset points",
                            xytext=(5, 5), fontsize=8)
        curves.set_xlabel("training tokens")
        curves.set_ylabel("validation bits per byte (fixed windows)")
        curves.set_ylim(top=min(curves.get_ylim()[1], 4.0))  # the first evaluations are off the scale
        curves.legend()
        finals.set_xscale("log", base=2)
        finals.set_xlabel("vocabulary size (ids)")
        finals.set_ylabel("final validation bits per byte (evaluate.py)")


def study(cfg: TokenizerStudyConfig) -> list[dict]:
    import trainer
    from data.tokens import read_meta, tokens_per_byte
    out_dir = Path(cfg.out_dir)
    order = list(cfg.tokenizers)
    if not cfg.report_only:
        if not Path(cfg.base).is_file():
            raise config_lib.ConfigError(f"--base={cfg.base}: no such training config file")
        train_cfg = config_lib.parse_args(trainer.TrainConfig(), [cfg.base, *common.flag_list(cfg.train_args)])
        reference = tokens_per_byte(read_meta(prepared(cfg, order[0])), "train")
        for seed in cfg.seeds:
            for tok in order:
                run_one(cfg, train_cfg, tok, seed, reference)
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*/result.json"))]
    if not results:
        raise config_lib.ConfigError(f"no finished runs in {out_dir} to report")
    rows = summarise(results, order)
    atomic_write_text(out_dir / "summary.md", table(rows) + "\n")
    atomic_write_json(out_dir / "summary.json", rows)
    plot(cfg, results, rows, out_dir / "curves.png")
    print(table(rows))
    return rows


@config_lib.exits_2_on(CheckpointError, DataError, FileNotFoundError)
def main(cfg: TokenizerStudyConfig) -> None:
    study(cfg)


if __name__ == "__main__":
    config_lib.run_cli(main, TokenizerStudyConfig())
