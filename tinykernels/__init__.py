"""Kernels for the hot spots, behind one function per op. The models call only these:

    attention(qkv, rope, n_head, n_kv_head, kv_cache, layer, start_pos)   rotary + causal attention
    rms_norm(x, weight, eps, backend, out_dtype)                         RMSNorm over the last dim
    swiglu(gate_up)                                                      silu(gate) * up
    cross_entropy(logits, targets, ignore_index=-1)                      mean loss over scored rows
    selective_scan(x, dt, A, B, C, backend)                              Mamba-1's scan -> y, last state
    ssd_chunked(x, dt, A, B, C, chunk)                                   Mamba-2's chunked scan

Each chooses between the fused C kernels for CPU (fused_cpu.c, matmul_cpu.c, attention_cpu.c,
compiled on first use by fused_cpu.py), Triton kernels on CUDA, and PyTorch, and takes the plain
formula under torch.compile: ops.py has the table. decode.py holds the Llama's one-token decoding
step and its KV cache. Triton is imported only when a Triton kernel runs (backend.py).

    selective_scan_reference / ssd_reference / rms_norm_reference    step-by-step oracles for the tests
"""

from tinykernels.backend import BACKENDS, interpreting, triton_installed, use_triton
from tinykernels.ops import apply_rotary, attention, cross_entropy, rms_norm, swiglu
from tinykernels.rmsnorm import rms_norm_reference
from tinykernels.scan_reference import selective_scan_reference, ssd_reference
from tinykernels.selective_scan import selective_scan
from tinykernels.ssd import ssd_chunked

__all__ = ["BACKENDS", "interpreting", "triton_installed", "use_triton", "apply_rotary", "attention",
           "cross_entropy", "rms_norm", "swiglu", "rms_norm_reference", "selective_scan",
           "selective_scan_reference", "ssd_chunked", "ssd_reference"]
