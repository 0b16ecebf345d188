"""Fixtures shared by the engine tests: the real TinyHelen data and a small prepared subset of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "tinyhelen"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the real TinyHelen data is not at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def leaner_small(shared_data, tmp_path_factory) -> Path:
    """The real leaner corpus, genres wiki+conversation+math, with a gpt-2K tokenizer trained on it.

    Small enough to prepare in seconds, large enough (~1M tokens) for training tests to be real."""
    from data.prepare import PrepareConfig, prepare
    out = tmp_path_factory.mktemp("leaner_small")
    prepare(PrepareConfig(data_root=str(shared_data), corpus="leaner", genres="wiki,conversation,math",
                          out_dir=str(out), progress=False))
    return out


def run_script(*args: str, env: dict | None = None, check: bool = True, timeout: int = 600):
    """Run one of the project's commands as a user would, from the repo root."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
