"""A fake, fault-injecting chat-completions endpoint on loopback, for tests and dry runs.

Retries, rejects and resuming can only be trusted when they have been seen to work against the
failures a real endpoint produces: 429s, 500s, slow answers, dropped connections, cut-off JSON
and answers in the wrong shape. This server produces each of them on demand, and otherwise
answers like an obliging model: by default simple_answer (short sentences of very common words,
the same ### sections as the request, code blocks kept, DIFFICULTY for math: what the simplify
pipeline asks for), or whatever the `answer` function given to FaultServer returns for the last
message. Faults are scripted per request (keyed by a marker string found in it) so that
concurrent workers cannot make a test flaky.

Fault names: 429, 500, 503, timeout (answers after `slow_s`), drop (closes the connection
without a word), truncate (a body cut in half), wrong_format, refusal, echo (returns the input
unchanged: too hard for the vocabulary check), ok.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

# Sentences of very common words, none repeated for a thousand sentences (7, 11, 13 are coprime).
_WHO = ("The man", "The girl", "My dog", "A little boy", "Her mother", "The old cat", "Our friend")
_DOES = ("sees", "likes", "finds", "has", "wants", "makes", "helps", "takes", "gives", "loves", "needs")
_WHAT = ("a big red ball", "the warm sun", "some good food", "a new book", "the blue sky", "a small house",
         "the green tree", "a happy song", "the cold water", "a long road", "the white car", "a nice hat",
         "the funny game")
_HEADING = re.compile(r"^###[ \t]*([A-Z0-9 _-]+):[ \t]*$", re.M)
_CODE = re.compile(r"```.*?```", re.S)


def simple_answer(body: str) -> str:
    """An answer a good model could give: the request's shape, simple words, about 80% as long."""
    if "Grade the problem above" in body:
        return "DIFFICULTY: 3"
    body = body.rsplit("\n\n", 1)[0]  # the text, without the request that follows it
    heads = list(_HEADING.finditer(body))
    if not heads:
        return _simple_words(len(body.split()))
    parts = []
    for k, (m, nxt) in enumerate(zip(heads, heads[1:] + [None])):
        text = body[m.end(): nxt.start() if nxt else len(body)]
        code = "\n\n".join(_CODE.findall(text))
        words = _simple_words(len(_CODE.sub(" ", text).split()), start=100 * k) if text.strip() else ""
        parts.append(f"### {m.group(1)}:\n" + "\n\n".join(p for p in (words, code) if p))
    return "\n\n".join(parts)


def _simple_words(n_in: int, start: int = 0) -> str:
    sentences, words, i = [], 0, start
    while words < max(3, int(n_in * 0.8)):
        sentence = f"{_WHO[i % 7]} {_DOES[i % 11]} {_WHAT[i % 13]}."
        sentences.append(sentence)
        words += len(sentence.split())
        i += 1
    return " ".join(sentences)


class FaultServer:
    """`with FaultServer() as fake: fake.base_url` ... `fake.plan("marker", ["429", "ok"])`."""

    def __init__(self, require_key: str = "", slow_s: float = 2.0,
                 answer: Callable[[str], str] | None = None):
        self.require_key, self.slow_s = require_key, slow_s
        self.answer = answer or simple_answer  # the last message's text -> the answer's text
        self.faults: dict[str, list[str]] = {}   # marker -> faults, consumed in order
        self.default: list[str] = []             # consumed by requests that match no marker
        self.requests: list[dict] = []           # what was asked (bodies, whether a key came)
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def plan(self, marker: str, faults: list[str]) -> None:
        with self.lock:
            self.faults[marker] = list(faults)

    def _next_fault(self, prompt: str) -> str:
        with self.lock:
            for marker, queue in self.faults.items():
                if marker in prompt:
                    return queue.pop(0) if queue else "ok"
            return self.default.pop(0) if self.default else "ok"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: bytes, cut: bool = False):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._send(200, json.dumps({"data": [{"id": "fake"}]}).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                auth = self.headers.get("Authorization", "")
                with server.lock:
                    server.requests.append({"body": body, "authorized": bool(auth)})
                if server.require_key and auth != f"Bearer {server.require_key}":
                    return self._send(401, b'{"error": {"message": "invalid api key"}}')
                prompt = body["messages"][-1]["content"]
                fault = server._next_fault(prompt)
                if fault in ("429", "500", "503"):
                    return self._send(int(fault), b'{"error": {"message": "injected"}}')
                if fault == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return None
                if fault == "timeout":
                    time.sleep(server.slow_s)
                content = {"wrong_format": '{"answer": "not what was asked for"}',
                           "refusal": "I'm sorry, but I can't help with that.",
                           "echo": prompt.rsplit("\n\n", 1)[0]}.get(fault)
                if content is None:
                    content = server.answer(prompt)
                payload = json.dumps({"id": "x", "object": "chat.completion", "model": body.get("model"),
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": content}}]})
                data = payload.encode()
                if fault == "truncate":
                    data = data[: len(data) // 2]
                try:
                    self._send(200, data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                    pass

        return Handler

    def __enter__(self) -> "FaultServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
