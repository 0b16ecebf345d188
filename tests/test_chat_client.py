"""The chat client against the fault-injecting loopback server: retries, caps, fatal errors, secrecy."""

import logging

import pytest

from tinyhelen.llm import ChatClient, ClientError, FatalClientError
from tinyhelen.llm.faults import FaultServer

FAKE_KEY = "sk-test-FAKE-KEY-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "The feline reposed upon the rug.\n\nRewrite the text above."}]


def client_for(fake, **kw):
    kw = {"timeout_s": 0.5, "max_attempts": 7, "backoff_s": 0.01, "max_backoff_s": 0.05, **kw}
    return ChatClient(fake.base_url, "fake-model", **kw)


def test_recovers_from_every_transient_fault(monkeypatch, caplog):
    monkeypatch.setenv("TINYHELEN_API_KEY", FAKE_KEY)
    with FaultServer(require_key=FAKE_KEY, slow_s=1.5) as fake:
        fake.default = ["429", "500", "503", "drop", "truncate", "timeout"]
        client = client_for(fake)
        with caplog.at_level(logging.WARNING):
            answer = client.complete(MESSAGES, temperature=0.0, max_tokens=50)
    assert answer.endswith(".") and len(answer.split()) >= 3
    assert client.requests_sent == 7  # six faults, then the answer
    assert all(r["authorized"] for r in fake.requests)
    assert len(caplog.records) == 6 and "HTTP 429" in caplog.text
    assert FAKE_KEY not in caplog.text and FAKE_KEY not in repr(client)


def test_gives_up_after_the_attempt_cap(monkeypatch):
    monkeypatch.delenv("TINYHELEN_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FaultServer() as fake:
        fake.default = ["500"] * 10
        client = client_for(fake, max_attempts=3)
        with pytest.raises(ClientError, match="after 3 attempts; last: HTTP 500"):
            client.complete(MESSAGES)
    assert client.requests_sent == 3 and not any(r["authorized"] for r in fake.requests)


def test_wrong_key_is_fatal_at_once_and_never_echoed(monkeypatch):
    monkeypatch.setenv("TINYHELEN_API_KEY", FAKE_KEY)
    with FaultServer(require_key="sk-the-right-one") as fake:
        client = client_for(fake)
        with pytest.raises(FatalClientError, match="HTTP 401: check the API key") as err:
            client.complete(MESSAGES)
    assert client.requests_sent == 1
    assert FAKE_KEY not in str(err.value) and FAKE_KEY not in repr(err.value)


def test_key_falls_back_to_openai_variable(monkeypatch):
    monkeypatch.delenv("TINYHELEN_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    with FaultServer(require_key=FAKE_KEY) as fake:
        client = client_for(fake)
        assert client.complete(MESSAGES)
    assert repr(client).endswith("key=set)")


def test_rejects_a_url_without_scheme():
    with pytest.raises(ValueError, match="http://127.0.0.1:8000/v1"):
        ChatClient("127.0.0.1:8000/v1")


def test_fault_server_answers_with_the_given_function():
    # The judge scripts its own answers; the faults still come first.
    with FaultServer(answer=lambda prompt: f"SCORE: {len(prompt.split())}") as fake:
        fake.default = ["503"]
        client = client_for(fake)
        assert client.complete(MESSAGES) == "SCORE: 10"
    assert client.requests_sent == 2
