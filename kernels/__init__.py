"""Kernels for the hot spots: RMSNorm, the state-space scans, and on CPU the ops around the matmuls.

    rms_norm(x, weight, eps, backend)                 RMSNorm over the last dim (custom op)
    selective_scan(x, dt, A, B, C, backend)           Mamba-1's scan (custom op) -> y, last state
    ssd_chunked(x, dt, A, B, C, chunk)                Mamba-2's chunked scan (PyTorch matmuls)
    selective_scan_reference / ssd_reference          step-by-step oracles for the tests
    rms_norm_reference                                plain PyTorch RMSNorm

The custom ops run Triton kernels on CUDA tensors and PyTorch elsewhere; backend="triton" or
"torch" forces one (backend.py). Triton is imported only when a Triton kernel runs.

On CPU, fused_cpu.c holds C kernels compiled on first use (fused_cpu.py): RMSNorm, SwiGLU,
cross-entropy (cross_entropy.py), rotary + causal attention for training (attention_cpu.py) and
a decoding step's attention. Each does in one pass what PyTorch does in several; they are used
where they can be built and fall back to PyTorch otherwise.
"""

from kernels.backend import BACKENDS, interpreting, triton_installed, use_triton
from kernels.rmsnorm import rms_norm, rms_norm_reference
from kernels.scan_reference import selective_scan_reference, ssd_reference
from kernels.selective_scan import selective_scan
from kernels.ssd import ssd_chunked

__all__ = ["BACKENDS", "interpreting", "triton_installed", "use_triton", "rms_norm", "rms_norm_reference",
           "selective_scan", "selective_scan_reference", "ssd_chunked", "ssd_reference"]
