"""python -m simplify: every user error stops with exit code 2 and a message that says what to fix,
before any server starts or any request is sent."""

import subprocess
import sys
from pathlib import Path

import pytest

from simplify.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).parent / "fixtures" / "simplify" / "corpus"


@pytest.mark.parametrize("argv, message", [
    ([], "no command; give one of run, stats, serve, vocab"),
    (["simplify"], "unknown command 'simplify'"),
    (["run"], "give --input=FILE.jsonl or a folder"),
    (["run", "--input=/no/such/folder"], "/no/such/folder: no such file or folder"),
    (["run", f"--input={CORPUS}", "--genres=wikki"], "genres must be among web, book, wiki"),
    (["run", f"--input={CORPUS}", "--split=nonexistent"], "files in a 'nonexistent' folder"),
    (["run", f"--input={CORPUS}", "--concurrency=0"], "concurrency must be at least 1, got 0"),
    (["run", f"--input={CORPUS}", "--concurency=2"], "unknown config key 'concurency'"),
    (["run", f"--input={CORPUS}", "--timeout_s=soon"], "timeout_s must be float, got 'soon'"),
    (["run", f"--input={CORPUS}", "--min_ratio=4"], "min_ratio (4.0) must be below max_ratio (3.0)"),
    (["run", f"--input={CORPUS}", "--base_url=127.0.0.1:8000/v1"], "must start with http:// or https://"),
    (["stats"], "give --path=FILE.jsonl or a folder"),
    (["stats", "--path=missing.jsonl"], "missing.jsonl: no such file or folder"),
    (["stats", f"--path={CORPUS}", "--genre=poetry"], "genre must be among web, book, wiki"),
    (["serve", "--model_path=/no/such/model.gguf"], "/no/such/model.gguf: no such model file"),
    (["serve", "--port=70000"], "port must be at most 65535"),
    (["vocab", "--size=100", "--candidates=10"], "candidates (10) must be at least size (100)"),
])
def test_user_errors_exit_2_with_a_clear_message(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("TINYHELEN_BASE_URL", raising=False)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err, err
    assert "Traceback" not in err


def test_help_exits_0():
    for argv in (["--help"], ["run", "--help"]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 0


def test_the_real_command_exits_2():
    cmd = [sys.executable, "-m", "simplify", "run", "--input=/no/such/folder"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error: /no/such/folder: no such file or folder" in done.stderr
    assert "starting the embedded" not in done.stderr  # stopped before any server was started
