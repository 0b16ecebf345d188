"""The whole pipeline against the fault-injecting server: retries, rejects, resume, no key leaks."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tinyhelen.llm import ChatClient
from tinyhelen.llm.faults import FaultServer
from simplify.pipeline import RunConfig, run

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).parent / "fixtures" / "simplify" / "corpus"
FAKE_KEY = "sk-test-FAKE-KEY-0123456789abcdef"


def settings(fake, out_dir, **kw) -> RunConfig:
    kw = {"concurrency": 3, "timeout_s": 0.5, "max_attempts": 3, "backoff_s": 0.01, "progress": False, **kw}
    return RunConfig(input=str(CORPUS), output_dir=str(out_dir), base_url=fake.base_url, model="fake", **kw)


def client(cfg: RunConfig) -> ChatClient:
    return ChatClient(cfg.base_url, cfg.model, timeout_s=cfg.timeout_s, max_attempts=cfg.max_attempts,
                      backoff_s=cfg.backoff_s, max_backoff_s=0.05)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def plan_faults(fake):
    fake.plan("Acacia cyclops", ["429", "500"])                   # HTTP retries recover
    fake.plan("Did you finish", ["drop", "truncate"])              # dropped and cut-off answers
    fake.plan("factorial", ["timeout"])                            # a slow answer times out once
    fake.plan("Simisola", ["wrong_format", "refusal", "wrong_format"])  # every answer is bad
    fake.plan("Vogtlandkreis", ["500"] * 3)                        # the endpoint keeps failing


def test_faults_rejects_and_resume(tmp_path):
    with FaultServer(slow_s=1.5) as fake:
        plan_faults(fake)
        cfg = settings(fake, tmp_path)
        first = run(cfg, client(cfg), "fake")
        out1 = rows(tmp_path / "out.jsonl")
        rejects = rows(tmp_path / "rejects.jsonl")
        dropped = rows(tmp_path / "dropped.jsonl")

        assert first["documents_in"] == 17 and first["documents_out"] == 12 and first["documents_rejected"] == 2
        assert first["documents_dropped"] == {"duplicate": 1, "not_english": 1, "too_short": 1}
        assert [d["reason"] for d in dropped] == ["duplicate", "not_english", "too_short"]
        assert first["rejects_by_reason"] == {"format": 1, "http_error": 1}
        by_reason = {r["reason"]: r for r in rejects}
        assert by_reason["format"]["attempts"] == 3 and "Simisola" in by_reason["format"]["input"]["text"]
        assert "HTTP 500" in by_reason["http_error"]["detail"]
        assert first["chunks_in"] == first["chunks_out"] + 2
        assert first["complexity_out"]["oov_share"] < first["complexity_in"]["oov_share"]

        ids = [r["id"] for r in out1]
        assert len(ids) == len(set(ids)) == 12
        by_genre = {r["genre"]: r for r in out1}
        assert by_genre["math"]["difficulty"] == 3 and by_genre["math"]["hints"] == ["$= 6 + 8$", "$= 14$"]
        assert by_genre["glue"]["label"] == 0 and set(by_genre["glue"]) >= {"sentence1", "sentence2", "idx"}
        assert "def factorial(n):" in by_genre["code"]["response"]
        assert set(by_genre["instruction"]) >= {"instruction", "input", "response"}

        # Restart with the same command: cached answers are free; only the failed request is asked again.
        fake.plan("Vogtlandkreis", [])
        second = run(cfg, client(cfg), "fake")
        assert second["requests_sent"] == 1 and second["documents_out"] == 13
        assert second["rejects_by_reason"] == {"format": 1}  # re-validated from the cache, not re-asked
        out2 = rows(tmp_path / "out.jsonl")
        assert [r for r in out2 if r["id"] in ids] == out1  # nothing lost, nothing changed
        assert len({r["id"] for r in out2}) == len(out2) == 13  # nothing duplicated

        before = (tmp_path / "out.jsonl").read_bytes()
        third = run(cfg, client(cfg), "fake")
        assert third["requests_sent"] == 0 and (tmp_path / "out.jsonl").read_bytes() == before


class InterruptingClient(ChatClient):
    """Behaves like a user pressing Ctrl-C in the middle of the run."""

    def __init__(self, *args, after: int, **kw):
        super().__init__(*args, **kw)
        self.after, self.calls = after, 0

    def complete(self, messages, **settings):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return super().complete(messages, **settings)


def test_interrupted_run_resumes_without_paying_twice(tmp_path):
    with FaultServer() as fake:
        reference = settings(fake, tmp_path / "reference", concurrency=1)
        full = run(reference, client(reference), "fake")

        cfg = replace(reference, output_dir=str(tmp_path / "interrupted"))
        interrupting = InterruptingClient(cfg.base_url, "fake", timeout_s=1, max_attempts=1, after=5)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, interrupting, "fake")
        assert not (tmp_path / "interrupted" / "out.jsonl").exists()  # no half-written outputs
        assert len(list((tmp_path / "interrupted" / "cache").rglob("*.json"))) == 5

        resumed = run(cfg, client(cfg), "fake")
        assert resumed["requests_sent"] == full["requests_sent"] - 5
        for name in ("out.jsonl", "rejects.jsonl", "dropped.jsonl"):
            assert (tmp_path / "interrupted" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()


def test_cli_never_leaks_the_key(tmp_path):
    env = {**os.environ, "TINYHELEN_API_KEY": FAKE_KEY}
    env.pop("TINYHELEN_BASE_URL", None)
    with FaultServer(require_key=FAKE_KEY) as fake:
        fake.plan("Acacia cyclops", ["429", "500"])  # retries write warnings to the log
        cmd = [sys.executable, "-m", "simplify", "run", f"--input={CORPUS}", f"--base_url={fake.base_url}",
               "--model=fake", f"--output_dir={tmp_path / 'out'}", "--backoff_s=0.01", "--timeout_s=5"]
        ok = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert ok.returncode == 0, ok.stderr
        assert "attempt 1/5 failed (HTTP 429)" in ok.stderr
        assert json.loads(ok.stdout.strip().splitlines()[-1])["documents_out"] == 14
        assert fake.requests and all(r["authorized"] for r in fake.requests)

        wrong = subprocess.run(cmd[:-3] + [f"--output_dir={tmp_path / 'wrong'}"], cwd=ROOT,
                               env={**env, "TINYHELEN_API_KEY": FAKE_KEY[::-1]},
                               capture_output=True, text=True, timeout=300)
        assert wrong.returncode == 1 and "HTTP 401: check the API key" in wrong.stderr
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 10
    for blob in written + [ok.stdout.encode(), ok.stderr.encode(), wrong.stdout.encode(), wrong.stderr.encode()]:
        assert FAKE_KEY.encode() not in blob and FAKE_KEY[::-1].encode() not in blob
        assert b"Bearer" not in blob and b"Authorization" not in blob


def test_outputs_and_cache_are_written_through_atomic(tmp_path, monkeypatch):
    # Every output and cache entry is fsynced under a temp name, renamed, and its folder fsynced.
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with FaultServer() as fake:
        cfg = settings(fake, tmp_path, limit_docs=3, concurrency=1)
        report = run(cfg, client(cfg), "fake")
    out_dir = tmp_path.resolve()
    for name in ("out.jsonl", "rejects.jsonl", "dropped.jsonl", "report.json"):
        assert any(p.parent == out_dir and p.name.startswith(f".{name}.") for p in synced), name
    entries = list((tmp_path / "cache").rglob("*.json"))
    assert len(entries) == report["requests_sent"] > 0
    for entry in entries:
        folder = entry.parent.resolve()
        assert any(p.parent == folder and p.name.startswith(f".{entry.name}.") for p in synced)
        assert folder in synced  # the folder, after the rename
    assert out_dir in synced
