"""Loss, perplexity and bits per byte of a trained model, per genre.

    python evaluate.py --out_dir=out/demo_llama --data=../shared/data/tinyhelen --split=test
    python evaluate.py --out_dir=out/demo_llama --data=my_texts.jsonl        # rows of {"text": ...}

Each genre's documents are joined the way training saw them (end-of-text before every document) and
scored in windows of seq_len tokens. Every token after the first end-of-text is predicted exactly once.

Bits per byte = total negative log-likelihood in bits / UTF-8 bytes of the text (each end-of-text
counted as one byte, the separator). Unlike loss per token it does not depend on the tokenizer, so
a 2,000-token and a 100,000-token vocabulary can be compared.

The last line printed is one JSON object with loss, perplexity, bits_per_byte, tokens, bytes and a
per-genre breakdown.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from tinyhelen import config as config_lib
from tinyhelen import machine as machine_lib
from tinyhelen.checkpoint import CheckpointError, load_checkpoint
from tinyhelen.config import setting
from tinyhelen.runs import is_transformers_folder, load_run
from tinyhelen.pretrained import resolve
from data.corpus import CORPORA, GENRES, SPLITS


def genre_names(text: str) -> list[str] | None:
    """None for "all", else the genres of a comma list."""
    return None if text == "all" else [g.strip() for g in text.split(",") if g.strip()]


@dataclass
class EvalConfig:
    out_dir: str = "out/demo_llama"              # run folder holding ckpt.pt, a ckpt.pt, or an export
    data: str = "../shared/data/tinyhelen"       # TinyHelen-layout folder, or JSONL of {"text", "genre"?}
    corpus: str = setting("leaner", choices=CORPORA)           # leaner | ori (folders only)
    split: str = setting("test", choices=SPLITS)               # train | validation | test (folders only)
    genres: str = "all"                          # comma-separated genres, or all
    seq_len: int = setting(0, min=0)             # 0 = the seq_len the model was trained with
    batch_size: int = setting(8, min=1)
    max_tokens_per_genre: int = setting(0, min=0)  # 0 = every token; else a prefix of each genre
    device: str = setting("auto", check=machine_lib.check_device)  # auto | cpu | cuda | cuda:N

    def __post_init__(self):
        # A TinyHelen folder has a fixed set of genres; a JSONL file's rows may name any genre.
        names = genre_names(self.genres)
        if names is not None and (not names or Path(self.data).suffix != ".jsonl"
                                  and any(g not in GENRES for g in names)):
            raise ValueError(f"genres must be all or a comma list of {', '.join(GENRES)} for a folder "
                             f"(any names for a .jsonl file), got {self.genres!r}")


@torch.no_grad()
def score_stream(model, stream: list[int], seq_len: int, batch_size: int, device: str) -> float:
    """Summed next-token NLL (nats) over stream[1:], in windows of seq_len predictions."""
    windows = []
    for start in range(0, len(stream) - 1, seq_len):
        chunk = stream[start:start + seq_len + 1]
        x = chunk[:-1] + [0] * (seq_len + 1 - len(chunk))
        y = chunk[1:] + [-1] * (seq_len + 1 - len(chunk))  # -1: padding, not scored
        windows.append((x, y))
    total = 0.0
    for i in range(0, len(windows), batch_size):
        x = torch.tensor([w[0] for w in windows[i:i + batch_size]], device=device)
        y = torch.tensor([w[1] for w in windows[i:i + batch_size]], device=device)
        _, mean_loss = model(x, y)
        total += mean_loss.double().item() * int((y != -1).sum())
    return total


def read_texts(data: str, corpus: str, split: str, genres: list[str] | None) -> dict[str, list[str]]:
    """Texts per genre. A missing file or a bad row stops here, before any model is loaded. Rows of a
    JSONL file that carry a "genre" get their own line in the breakdown, as a folder's genres do."""
    from data.corpus import load_texts

    texts_by_genre: dict[str, list[str]] = defaultdict(list)
    for doc in load_texts(data, corpus=corpus, split=split, genres=genres):
        texts_by_genre[doc.genre].append(doc.text)
    if not texts_by_genre:
        raise FileNotFoundError(f"no documents found in {data} (corpus {corpus}, split {split})")
    return texts_by_genre


def score_texts(model, tokenizer, texts_by_genre: dict[str, list[str]], seq_len: int, batch_size: int,
                device, max_tokens_per_genre: int = 0, echo=print, baseline_log_probs=None) -> dict:
    """Loss, perplexity and bits per byte of model on the texts, overall and per genre. With
    baseline_log_probs (a numpy array of log-probabilities per token id), also the bits per byte of
    that unigram model on the same predictions, as unigram_bits_per_byte."""
    results, baseline_nll = {}, 0.0
    for genre, texts in texts_by_genre.items():
        stream, n_bytes = [tokenizer.eot_id], 0
        for text, ids in zip(texts, tokenizer.encode_batch(texts)):
            stream += ids + [tokenizer.eot_id]
            n_bytes += len(text.encode("utf-8")) + 1
            if max_tokens_per_genre and len(stream) > max_tokens_per_genre:
                break
        nll = score_stream(model, stream, seq_len, batch_size, device)
        if baseline_log_probs is not None:
            baseline_nll -= float(baseline_log_probs[stream[1:]].sum())
        n_tokens = len(stream) - 1
        results[genre] = {"loss": nll / n_tokens, "tokens": n_tokens, "bytes": n_bytes, "nll": nll}
        echo(f"{genre:>13s} | loss {nll / n_tokens:7.4f} | ppl {math.exp(nll / n_tokens):9.2f} | "
             f"bpb {nll / math.log(2) / n_bytes:6.4f} | {n_tokens:>9,} tokens")

    nll = sum(r["nll"] for r in results.values())
    tokens = sum(r["tokens"] for r in results.values())
    n_bytes = sum(r["bytes"] for r in results.values())
    summary = {
        "loss": nll / tokens, "perplexity": math.exp(nll / tokens), "bits_per_byte": nll / math.log(2) / n_bytes,
        "tokens": tokens, "bytes": n_bytes, "tokenizer": tokenizer.name,
        "genres": {g: {"loss": r["loss"], "perplexity": math.exp(r["loss"]),
                       "bits_per_byte": r["nll"] / math.log(2) / r["bytes"], "tokens": r["tokens"]}
                   for g, r in results.items()},
    }
    if baseline_log_probs is not None:
        summary["unigram_bits_per_byte"] = baseline_nll / math.log(2) / n_bytes
    return summary


def trained_seq_len(path: str | Path, model) -> int:
    """The seq_len the run trained with, from its checkpoint's config; a transformers folder does not
    record it, so there the model's context length."""
    if is_transformers_folder(Path(path)):
        if getattr(model.config, "max_seq_len", None) is None:
            raise CheckpointError(f"{path} does not record the sequence length it was trained with: give --seq_len")
        return model.config.max_seq_len
    return load_checkpoint(path)["config"]["seq_len"]


def evaluate(cfg: EvalConfig) -> dict:
    texts_by_genre = read_texts(cfg.data, cfg.corpus, cfg.split, genre_names(cfg.genres))
    device = machine_lib.setup(cfg.device, "fp32", distributed=False).device
    model, tokenizer, _ = load_run(cfg.out_dir, device)
    seq_len = cfg.seq_len or trained_seq_len(resolve(cfg.out_dir), model)
    echo = lambda line: print(line, flush=True)  # noqa: E731
    summary = score_texts(model, tokenizer, texts_by_genre, seq_len, cfg.batch_size, device,
                          cfg.max_tokens_per_genre, echo)
    return {**summary, "data": cfg.data}


def main(cfg: EvalConfig) -> None:
    try:
        summary = evaluate(cfg)
    except (CheckpointError, FileNotFoundError, ValueError) as e:  # ValueError: data.corpus.DataError
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    config_lib.run_cli(main, EvalConfig())
