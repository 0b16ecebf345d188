"""The rewrite pipeline: read, clean, chunk, ask, validate, cache, assemble, report.

Resuming is the design's centre. Every answer is cached under the hash of what produced it, and
the outputs (out.jsonl, rejects.jsonl, dropped.jsonl, report.json) are rebuilt from scratch in
input order on every run and renamed into place at the end. So a run that is interrupted and
started again with the same command pays for no answer twice, and its outputs can neither lose
nor duplicate a row. Rejected chunks are not cached as failures: only answers are, so a rerun
re-validates the cached answers (deterministically, for free) and asks again only where the
endpoint itself failed.

A chunk whose answer fails validation is asked again with a new seed and a higher temperature
(asking a deterministic model the same question twice gives the same wrong answer), up to
answer_attempts times; then it goes to rejects.jsonl with the reason. A document with a rejected
chunk goes to the rejects, not to out.jsonl, unless keep_partial is set.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from tinyhelen.atomic import atomic_jsonl, atomic_write_json
from tinyhelen.config import setting
from tinyhelen.llm import AnswerCache, ChatClient, ClientError, FatalClientError, cache_key
from simplify import GENRES
from simplify.chunk import Chunk, chunk_document, join_chunks
from simplify.clean import Cleaner
from simplify.io import Document, iter_documents
from simplify.prompts import PROMPT_VERSION, build_messages
from simplify.stats import Tally
from simplify.validate import Limits, Rejected, validate
from simplify.vocab import core_vocab

log = logging.getLogger("simplify.pipeline")


def known_genres(genres: str | tuple[str, ...]) -> str | None:
    """config.setting's check for a genre or genres: None when each is known (or empty)."""
    unknown = [g for g in ((genres,) if isinstance(genres, str) else genres) if g and g not in GENRES]
    return f"must be among {', '.join(GENRES)} (unknown: {', '.join(unknown)})" if unknown else None


@dataclass
class RunConfig:
    input: str = ""                 # a .jsonl/.jsonl.zst/.json.zst file or a folder (TinyHelen layout)
    split: str = ""                 # only files in a folder of this name (train, validation, test)
    genres: tuple[str, ...] = setting((), check=known_genres)  # only these (from file names); empty: all
    genre: str = setting("", check=known_genres)  # force one genre for every file (e.g. a plain JSONL)
    limit_docs: int = setting(0, min=0)  # stop after this many documents (0: all)
    output_dir: str = "simplify_out"
    cache_dir: str = ""             # default: OUTPUT_DIR/cache
    base_url: str = ""              # OpenAI-compatible endpoint, or $TINYHELEN_BASE_URL; empty: embedded model
    model: str = ""                 # or $TINYHELEN_MODEL
    key_env: str = "TINYHELEN_API_KEY"  # the NAME of the variable holding the key (never the key)
    concurrency: int = setting(4, min=1)
    timeout_s: float = setting(120.0, above=0)
    max_attempts: int = setting(5, min=1)  # HTTP attempts per request (429, 5xx, dropped connections)
    backoff_s: float = setting(1.0, min=0)  # first retry delay; doubles on each attempt
    answer_attempts: int = setting(3, min=1)  # fresh answers asked for when validation fails
    temperature: float = setting(0.2, min=0, max=2)
    max_tokens: int = setting(0, min=0)  # 0: twice the chunk's tokens plus 64, at most 2048
    budget: int = setting(0, min=0)  # token budget per chunk; 0: per-genre default (300 / 600)
    min_ratio: float = setting(0.3, above=0)  # answer words / input words within [min_ratio, max_ratio]
    max_ratio: float = setting(3.0, above=0)
    max_oov_share: float = setting(0.25, min=0, max=1)
    keep_partial: bool = False      # write documents with some chunks rejected (minus those chunks)
    progress: bool = True

    def __post_init__(self):
        if self.min_ratio >= self.max_ratio:
            raise ValueError(f"min_ratio ({self.min_ratio}) must be below max_ratio ({self.max_ratio})")


@dataclass
class ChunkResult:
    chunk: Chunk
    fields: dict | None = None
    reason: str = ""
    detail: str = ""
    attempts: int = 0


class Simplifier:
    """Turns one chunk into a validated answer, through the cache and the client."""

    def __init__(self, cfg: RunConfig, client: ChatClient, cache: AnswerCache, model: str):
        self.cfg, self.client, self.cache, self.model = cfg, client, cache, model
        self.vocab = core_vocab()
        self.limits = Limits(cfg.min_ratio, cfg.max_ratio, cfg.max_oov_share)

    def settings(self, chunk: Chunk, attempt: int) -> dict:
        max_tokens = self.cfg.max_tokens or min(2048, 2 * chunk.tokens() + 64)
        temperature = self.cfg.temperature if attempt == 0 else min(1.0, self.cfg.temperature + 0.3 * attempt)
        return {"temperature": temperature, "max_tokens": max_tokens, "seed": attempt}

    def __call__(self, genre: str, chunk: Chunk) -> ChunkResult:
        messages = build_messages(genre, chunk.fields)
        result = ChunkResult(chunk)
        for attempt in range(self.cfg.answer_attempts):
            settings = self.settings(chunk, attempt)
            key = cache_key(prompt_version=PROMPT_VERSION, messages=messages, model=self.model, settings=settings)
            cached = self.cache.get(key)
            result.attempts = attempt + 1
            if cached is not None:
                content = cached["content"]
            else:
                try:
                    content = self.client.complete(messages, **settings)
                except FatalClientError:
                    raise
                except ClientError as e:  # not cached: the next run asks again
                    result.reason, result.detail = "http_error", str(e)
                    return result
                self.cache.put(key, {"content": content, "model": self.model})
            try:
                result.fields = validate(genre, chunk.fields, content, self.vocab, self.limits)
                result.reason = result.detail = ""
                return result
            except Rejected as r:
                result.reason, result.detail = r.reason, r.detail
        return result


def _batches(items, size):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def assemble(doc: Document, results: list[ChunkResult]) -> dict:
    """The output row of a document from its chunks' answers (rejected chunks left out)."""
    good = [r for r in results if r.fields is not None]
    row = {"id": doc.id, "genre": doc.genre}
    if doc.genre == "math":
        row.update(doc.fields)
        row.update(doc.meta)  # the original hints list wins over the joined text
        row.update(good[0].fields if good else {})
        return row
    row.update(doc.meta)
    if set(doc.fields) == {"text"}:
        row["text"] = join_chunks([r.fields["text"] for r in good], [r.chunk.sep for r in good])
        row["chunks"] = len(results)
    elif good:
        row.update(good[0].fields)
    missing = [r.chunk.index for r in results if r.fields is None]
    if missing:
        row["missing_chunks"] = missing
    return row


def _output_text(genre: str, fields: dict) -> str:
    return "\n".join(v for v in fields.values() if isinstance(v, str))


def run(cfg: RunConfig, client: ChatClient, model: str) -> dict:
    """Simplify cfg.input through client; write outputs and return the report."""
    out_dir = Path(cfg.output_dir)
    cache = AnswerCache(cfg.cache_dir or out_dir / "cache")
    simplifier = Simplifier(cfg, client, cache, model)
    cleaner = Cleaner()
    counts: Counter = Counter()
    dropped: Counter = Counter()
    rejects: Counter = Counter()
    complexity_in, complexity_out = Tally(), Tally()
    vocab = simplifier.vocab
    docs = iter_documents(cfg.input, cfg.split, cfg.genres, cfg.genre)
    bar = tqdm(desc="simplifying", unit="chunk", disable=not cfg.progress, file=sys.stderr)
    with ExitStack() as stack:
        out = stack.enter_context(atomic_jsonl(out_dir / "out.jsonl"))
        rej = stack.enter_context(atomic_jsonl(out_dir / "rejects.jsonl"))
        drop = stack.enter_context(atomic_jsonl(out_dir / "dropped.jsonl"))
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=max(1, cfg.concurrency)))
        stack.callback(bar.close)
        for batch in _batches(_limited(docs, cfg.limit_docs), max(32, 8 * cfg.concurrency)):
            jobs = []
            for doc in batch:
                counts["documents_in"] += 1
                cleaned, reason = cleaner(doc)
                if cleaned is None:
                    dropped[reason] += 1
                    drop.write({"id": doc.id, "genre": doc.genre, "source": doc.source, "reason": reason})
                    continue
                chunks = chunk_document(cleaned, cfg.budget)
                bar.total = (bar.total or 0) + len(chunks)
                futures = [pool.submit(simplifier, cleaned.genre, c) for c in chunks]
                jobs.append((cleaned, futures))
            try:
                for doc, futures in jobs:
                    results = []
                    for future in futures:
                        results.append(future.result())
                        bar.update(1)
                    _record(doc, results, out, rej, counts, rejects, complexity_in, complexity_out,
                            vocab, cfg.keep_partial)
                    bar.set_postfix(rejected=sum(rejects.values()), cached=cache.hits)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    report = {**counts, "documents_dropped": dict(dropped), "rejects_by_reason": dict(rejects),
              "requests_sent": client.requests_sent, "cache_hits": cache.hits, "cache_misses": cache.misses,
              "complexity_in": complexity_in.measures(), "complexity_out": complexity_out.measures()}
    for key in ("documents_in", "documents_out", "documents_rejected", "chunks_in", "chunks_out"):
        report.setdefault(key, 0)
    atomic_write_json(out_dir / "report.json", report)
    return report


def _limited(docs, limit):
    for i, doc in enumerate(docs):
        if limit and i >= limit:
            return
        yield doc


def _record(doc, results, out, rej, counts, rejects, complexity_in, complexity_out, vocab, keep_partial):
    counts["chunks_in"] += len(results)
    failed = [r for r in results if r.fields is None]
    counts["chunks_out"] += len(results) - len(failed)
    prose = doc.genre != "math"
    for r in results:
        if prose:
            complexity_in.add(_output_text(doc.genre, r.chunk.fields), vocab)
            if r.fields is not None:
                complexity_out.add(_output_text(doc.genre, r.fields), vocab)
    for r in failed:
        rejects[r.reason] += 1
        rej.write({"id": doc.id, "genre": doc.genre, "chunk": r.chunk.index, "reason": r.reason,
                       "detail": r.detail, "attempts": r.attempts, "source": doc.source, "input": r.chunk.fields})
    if not failed or keep_partial and len(failed) < len(results):
        out.write(assemble(doc, results))
        counts["documents_out"] += 1
    else:
        counts["documents_rejected"] += 1


def endpoint_from(cfg: RunConfig) -> tuple[str, str]:
    """(base_url, model) from the settings, else the environment; ("", "") means embedded."""
    return (cfg.base_url or os.environ.get("TINYHELEN_BASE_URL", ""),
            cfg.model or os.environ.get("TINYHELEN_MODEL", ""))
