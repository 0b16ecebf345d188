"""Which implementation a kernel call uses: Triton or PyTorch.

backend is "auto" (Triton for CUDA tensors when triton is installed, PyTorch otherwise), "triton"
(always Triton: CUDA tensors, or CPU tensors when the process was started with TRITON_INTERPRET=1,
which is how the tests run the kernels without a GPU) or "torch" (always the PyTorch path).

Triton itself is imported only when a Triton kernel is about to run, so this package works where
triton is missing or cannot run, and TRITON_INTERPRET=1 keeps working when set before that import.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "torch")


@functools.cache
def triton_installed() -> bool:
    # cached: find_spec searches sys.path (about 25 us), and kernels ask on every call
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(t: torch.Tensor, backend: str) -> bool:
    """Whether a call on tensor t with this backend setting runs the Triton kernels."""
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return False
    can_run = (t.device.type == "cuda" or interpreting()) and triton_installed()
    if backend == "triton" and not can_run:
        raise RuntimeError(
            "backend 'triton' needs the triton package and a CUDA tensor (or TRITON_INTERPRET=1 set "
            f"before triton is imported, to run on CPU); got a {t.device.type} tensor with triton "
            f"{'installed' if triton_installed() else 'missing'}. Use backend 'auto' or 'torch'.")
    if backend == "auto":
        return can_run and t.device.type == "cuda"
    return True
