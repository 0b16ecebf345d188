"""Kernels for the hot spots, behind one function per op. The models call only these:

    rms_norm(x, weight, eps, backend, out_dtype)                         RMSNorm over the last dim
    swiglu(gate_up)                                                      silu(gate) * up
    cross_entropy(logits, targets, ignore_index=-1)                      mean loss over scored rows
    selective_scan(x, dt, A, B, C, backend)                              Mamba-1's scan -> y, last state
    ssd_chunked(x, dt, A, B, C, chunk)                                   Mamba-2's chunked scan

and, for the Llama's attention (written out in model_llama.py), attention_cpu.causal_attention for
CPU training and decode.decode_step for generation. Each chooses between the fused C kernels for CPU
(fused_cpu.c, matmul_cpu.c, attention_cpu.c, compiled on first use by fused_cpu.py), Triton kernels
on CUDA, and PyTorch, and takes the plain formula under torch.compile: ops.py has the table. Triton
is imported only when a Triton kernel runs (backend.py).

    selective_scan_reference / ssd_reference / rms_norm_reference    step-by-step oracles for the tests

The Mamba scans (scan.py, ssd.py, scan_reference.py) load on first use of their names
(module __getattr__, PEP 562), so that importing the Llama never loads them.
"""

import importlib

from tinykernels.backend import BACKENDS, interpreting, triton_installed, use_triton
from tinykernels.ops import cross_entropy, rms_norm, swiglu
from tinykernels.rmsnorm import rms_norm_reference

_LAZY = {  # name -> the submodule that defines it
    "selective_scan": "tinykernels.scan",
    "selective_scan_reference": "tinykernels.scan_reference",
    "ssd_reference": "tinykernels.scan_reference",
    "ssd_chunked": "tinykernels.ssd",
}

__all__ = ["BACKENDS", "interpreting", "triton_installed", "use_triton", "cross_entropy", "rms_norm",
           "swiglu", "rms_norm_reference", "selective_scan", "selective_scan_reference", "ssd_chunked",
           "ssd_reference"]


def __getattr__(name: str):
    """Called only for names not yet set here: import the scan's submodule, then keep the function."""
    if name not in _LAZY:
        raise AttributeError(f"module 'tinykernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    # kept, so that __getattr__ runs once per name
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
