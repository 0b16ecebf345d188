"""Content-addressed answer cache: what made an answer decides where it is stored.

The key is the sha256 of everything that produced the answer: for simplify, the prompt version,
the exact messages (so the chunk and the genre prompt), the model and every sampling setting. A
restarted run with the same command finds every answer it already paid for; a changed prompt or
setting finds nothing stale. One small file per answer, written through tinyhelen/atomic.py (temp file,
fsync, rename, folder fsync), so a crash leaves the whole answer or none and worker threads never
share a file. Only the answer text and its model are stored: never a key, a header or an endpoint.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from tinyhelen.atomic import atomic_write_json


def cache_key(**parts) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AnswerCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0
        self._lock = threading.Lock()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            value = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            value = None  # a missing or unreadable entry is simply asked again
        with self._lock:
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
        return value

    def put(self, key: str, value: dict) -> None:
        atomic_write_json(self.path(key), value, indent=None)
