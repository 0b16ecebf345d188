"""One small client for any OpenAI-compatible chat-completions endpoint.

Hosted APIs throttle (429), fail (5xx), drop connections and now and then send half an answer, so
every call retries with exponential backoff and jitter, honours Retry-After, and gives up after a
fixed number of attempts with an error that says what happened last. A refusal of the request
itself (400, 401, 403, 404) is not retried: asking again cannot fix a wrong key or model name, so
it raises FatalClientError with a message that says what to fix.

The API key comes from the environment only. It is sent as a Bearer header and appears nowhere
else: not in repr(), not in log lines, not in exception messages (each is scrubbed of it), and the
cache and outputs never see the request at all. Each worker thread keeps its own HTTP session.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time

import requests

log = logging.getLogger("tinyhelen.llm.client")

KEY_ENV_VARS = ("TINYHELEN_API_KEY", "OPENAI_API_KEY")


class ClientError(RuntimeError):
    """The endpoint did not give a usable answer within the allowed attempts."""


class FatalClientError(ClientError):
    """The endpoint refused the request itself (bad key, model or URL): stop the run."""


class ChatClient:
    def __init__(self, base_url: str, model: str = "", key_env: str = "TINYHELEN_API_KEY",
                 timeout_s: float = 120.0, max_attempts: int = 5, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r} "
                             f"(for example --base_url=http://127.0.0.1:8000/v1)")
        self.base_url = base_url.rstrip("/")
        self.model = model
        names = (key_env,) + tuple(n for n in KEY_ENV_VARS if n != key_env)
        self.__key = next((os.environ[n] for n in names if os.environ.get(n)), "")
        self.timeout_s, self.max_attempts = timeout_s, max_attempts
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.requests_sent = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    def __repr__(self) -> str:
        return (f"ChatClient(base_url={self.base_url!r}, model={self.model!r}, "
                f"key={'set' if self.__key else 'not set'})")

    def _scrub(self, text: str) -> str:
        return text.replace(self.__key, "***") if self.__key else text

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after and retry_after.strip().replace(".", "", 1).isdigit():
            return min(float(retry_after), self.max_backoff_s)
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return base * (1 + 0.25 * random.random())  # jitter: workers must not retry in lockstep

    def complete(self, messages: list[dict], **settings) -> str:
        """The assistant's answer text for messages; settings such as temperature, max_tokens, seed."""
        url = f"{self.base_url}/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self.__key:
            headers["Authorization"] = f"Bearer {self.__key}"
        body = {"model": self.model or "default", "messages": messages, **settings}
        last = "no attempt made"
        for attempt in range(1, self.max_attempts + 1):
            retry_after = None
            with self._lock:
                self.requests_sent += 1
            try:
                response = self._session().post(url, json=body, headers=headers, timeout=self.timeout_s)
            except requests.RequestException as e:  # dropped connection, timeout, cut-off body
                last = f"{type(e).__name__}: {self._scrub(str(e))[:200]}"
            else:
                status = response.status_code
                if status == 200:
                    try:
                        return response.json()["choices"][0]["message"]["content"] or ""
                    except (ValueError, KeyError, IndexError, TypeError):
                        last = f"unreadable answer body (truncated or not chat-completions JSON): " \
                               f"{self._scrub(response.text[:120])!r}"
                elif status == 429 or status >= 500:
                    last, retry_after = f"HTTP {status}", response.headers.get("Retry-After")
                else:
                    hint = {401: "check the API key in $TINYHELEN_API_KEY", 403: "the key may lack access",
                            404: "check --base_url (it usually ends in /v1) and --model"}.get(status, "")
                    raise FatalClientError(f"{url} refused the request with HTTP {status}"
                                           f"{': ' + hint if hint else ''}; body: "
                                           f"{self._scrub(response.text[:200])!r}")
            if attempt < self.max_attempts:
                delay = self._delay(attempt, retry_after)
                log.warning("attempt %d/%d failed (%s); retrying in %.1fs", attempt, self.max_attempts,
                            last, delay)
                time.sleep(delay)
        raise ClientError(f"{url}: no usable answer after {self.max_attempts} attempts; last: {last}")
