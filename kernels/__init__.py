"""Kernels for the two hot spots: RMSNorm and the state-space scans.

    rms_norm(x, weight, eps, backend)                 RMSNorm over the last dim (custom op)
    selective_scan(x, dt, A, B, C, backend)           Mamba-1's scan (custom op) -> y, last state
    ssd_chunked(x, dt, A, B, C, chunk)                Mamba-2's chunked scan (PyTorch matmuls)
    selective_scan_reference / ssd_reference          step-by-step oracles for the tests
    rms_norm_reference                                plain PyTorch RMSNorm

The custom ops run Triton kernels on CUDA tensors and PyTorch elsewhere; backend="triton" or
"torch" forces one (backend.py). Triton is imported only when a Triton kernel runs.
"""

from kernels.backend import BACKENDS, interpreting, triton_installed, use_triton
from kernels.rmsnorm import rms_norm, rms_norm_reference
from kernels.scan_reference import selective_scan_reference, ssd_reference
from kernels.selective_scan import selective_scan
from kernels.ssd import ssd_chunked

__all__ = ["BACKENDS", "interpreting", "triton_installed", "use_triton", "rms_norm", "rms_norm_reference",
           "selective_scan", "selective_scan_reference", "ssd_chunked", "ssd_reference"]
