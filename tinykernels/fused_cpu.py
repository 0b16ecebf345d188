"""The fused CPU kernels of fused_cpu.c: compiled on first use, loaded with ctypes.

    available()                         True when the library could be built and loaded here
    rms_norm_forward(x, w, eps, out_dtype) -> y, rstd
    rms_norm_backward(gy, x, w, rstd)   -> gx (x's dtype), gw (fp32)
    swiglu_forward(gate_up)             -> silu(gate) * up
    swiglu_backward(grad, gate_up)      -> gradient of gate_up
    rotary_to_heads(qkv, rope, H, K)    -> q (B, H, T, Dh), k, v (B, K, T, Dh), q and k rotated
    rotary_from_heads(dq, dk, dv, rope) -> dqkv (B, T, (H + 2K) Dh), rotated back
    causal_softmax_(scores, T, scale)   in place, (R, T) scores -> probabilities
    causal_softmax_backward_(p, dp, T, scale)  in place, dp -> d scores
    attention_forward(q, k, v)          -> y (B, T, H Dh), lse: fp32 causal attention (attention_cpu.c)
    attention_backward(q, k, v, y, lse, dy) -> dq, dk, dv
    cross_entropy_forward(logits, targets) -> per-row losses, d losses / d logits
    rms_norm_inference(x, w, eps), decode_attention(qkv, cache, rope, pos, K, left_pad),
    pack_for_decoding(w), few_row_matmul(x, packed, n_out, residual)
        a decoding step's pieces, fp32 (see Llama.decode_step)
    applies(t, *dtypes)                 whether to use these kernels for CPU tensor t (and dtypes)

Tensors are CPU, contiguous, fp32 or bf16 (checked here, so a wrong call fails in Python rather
than in C). The library is built with the system C compiler (`cc`, or $CC) with -march=native, so
it is cached per source text and per CPU (its feature flags) under $TINYHELEN_CACHE (default
~/.cache/tinyhelen). Where it cannot be built (no compiler) or when TINYHELEN_FUSED_CPU=0, available()
is False and callers use their PyTorch paths; the reason is given once as a warning.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

# one library from these sources: the fused elementwise kernels, the few-row matmuls of decoding, and
# fp32 causal attention for training
SOURCES = [Path(__file__).with_name(name) for name in ("fused_cpu.c", "matmul_cpu.c", "attention_cpu.c")]
# -ffast-math lets gcc vectorise expf through glibc's vector math library and reorder the row sums;
# nothing here relies on NaN or infinity arithmetic (the bf16 rounding tests NaN by its bits).
# It is given to the compile step only: linking with it adds crtfastmath.o, which would switch the
# whole process to flushing denormals to zero the moment the library is loaded.
COMPILE_FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-fopenmp", "-fPIC", "-c"]
LINK_FLAGS = ["-shared", "-fopenmp"]

_c_void_p, _i64, _int, _float = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
_SIGNATURES = {
    "max_threads": [],
    "rms_norm_forward": [_c_void_p, _int, _c_void_p, _c_void_p, _int, _c_void_p, _i64, _i64, _float],
    "rms_norm_backward": [_c_void_p, _int, _c_void_p, _int, _c_void_p, _c_void_p, _c_void_p, _int,
                          _c_void_p, _i64, _i64],
    "swiglu_forward": [_c_void_p, _c_void_p, _int, _i64, _i64],
    "swiglu_backward": [_c_void_p, _c_void_p, _c_void_p, _int, _i64, _i64],
    "rotary_layout": [_c_void_p, _c_void_p, _c_void_p, _c_void_p, _int, _c_void_p,
                      _i64, _i64, _i64, _i64, _i64, _int],
    "causal_softmax_forward": [_c_void_p, _int, _i64, _i64, _float],
    "causal_softmax_backward": [_c_void_p, _c_void_p, _int, _i64, _i64, _float],
    "cross_entropy_forward": [_c_void_p, _int, _c_void_p, _c_void_p, _c_void_p, _i64, _i64],
    "decode_attention": [_c_void_p] * 5 + [_i64] * 6 + [_float],
    "few_row_matmul": [_c_void_p, _c_void_p, _c_void_p, _c_void_p, _i64, _i64, _i64],
    "pack_panels": [_c_void_p, _c_void_p, _i64, _i64],
    "attention_forward": [_c_void_p] * 5 + [_i64] * 5 + [_float],
    "attention_backward": [_c_void_p] * 9 + [_i64] * 5 + [_float],
}


def _cache_dir() -> Path:
    return Path(os.environ.get("TINYHELEN_CACHE", Path.home() / ".cache" / "tinyhelen"))


def _cpu_flags() -> str:
    # -march=native code must not run on another CPU that shares this cache (a network home)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(compiler: str) -> Path:
    key = hashlib.sha256("\n".join([*(source.read_text() for source in SOURCES), compiler, *COMPILE_FLAGS,
                                     *LINK_FLAGS, _cpu_flags()]).encode())
    target = _cache_dir() / f"fused_cpu-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # compile to a temporary name, then rename: another process may be building the same file
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        objects = [os.path.join(tmp, source.stem + ".o") for source in SOURCES]
        lib = os.path.join(tmp, "fused_cpu.so")
        commands = [[compiler, *COMPILE_FLAGS, str(source), "-o", obj] for source, obj in zip(SOURCES, objects)]
        for command in commands + [[compiler, *LINK_FLAGS, *objects, "-o", lib, "-lm"]]:
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr.strip()}")
        os.replace(lib, target)
    return target


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("TINYHELEN_FUSED_CPU", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        warnings.warn("no C compiler (cc, gcc or $CC) found: the fused CPU kernels are off and "
                      "PyTorch's ops run instead (slower). Install gcc to enable them.")
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (RuntimeError, OSError) as e:
        warnings.warn(f"the fused CPU kernels are off, PyTorch's ops run instead: {e}")
        return None
    for name, argtypes in _SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
    lib.max_threads.restype = _int
    return lib


def available() -> bool:
    return _library() is not None


def dtype_ok(*dtypes: torch.dtype) -> bool:
    """Whether the kernels take these dtypes (fp32 and bf16 only)."""
    return all(d in (torch.float32, torch.bfloat16) for d in dtypes)


def applies(t: torch.Tensor, *other_dtypes: torch.dtype) -> bool:
    """Whether a caller should use these kernels: t (and any other dtypes involved) fp32/bf16 on
    CPU, the library built, and not under torch.compile (Dynamo cannot trace ctypes calls; callers
    give Inductor plain formulas instead)."""
    return (t.device.type == "cpu" and dtype_ok(t.dtype, *other_dtypes)
            and not torch.compiler.is_compiling() and available())


def _flag(t: torch.Tensor) -> int:
    """1 for bf16, 0 for fp32; anything else (or a non-contiguous or non-CPU tensor) is a bug."""
    if t.device.type != "cpu" or not t.is_contiguous() or not dtype_ok(t.dtype):
        raise ValueError(f"fused CPU kernels take contiguous fp32/bf16 CPU tensors, got {t.dtype} "
                         f"on {t.device}, contiguous={t.is_contiguous()}")
    return int(t.dtype == torch.bfloat16)


def rms_norm_forward(x: torch.Tensor, weight: torch.Tensor, eps: float,
                     out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, D) -> y (M, D) in out_dtype, rstd (M,) fp32."""
    M, D = x.shape
    y = torch.empty(M, D, dtype=out_dtype)
    rstd = torch.empty(M, dtype=torch.float32)
    w = weight.float().contiguous()
    _library().rms_norm_forward(x.data_ptr(), _flag(x), w.data_ptr(), y.data_ptr(), _flag(y),
                                rstd.data_ptr(), M, D, eps)
    return y, rstd


def rms_norm_backward(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                      rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gy, x (M, D) -> gx (M, D) in x's dtype, gw (D,) fp32."""
    lib = _library()
    M, D = x.shape
    gx = torch.empty_like(x)
    gw_partial = torch.zeros(lib.max_threads(), D, dtype=torch.float32)
    w = weight.float().contiguous()
    lib.rms_norm_backward(gy.data_ptr(), _flag(gy), x.data_ptr(), _flag(x), w.data_ptr(),
                          rstd.data_ptr(), gx.data_ptr(), _flag(gx), gw_partial.data_ptr(), M, D)
    return gx, gw_partial.sum(0)


def swiglu_forward(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up (..., 2F) -> silu(gate) * up (..., F), same dtype."""
    F2 = gate_up.shape[-1]
    h = gate_up.new_empty(*gate_up.shape[:-1], F2 // 2)
    _library().swiglu_forward(gate_up.data_ptr(), h.data_ptr(), _flag(gate_up), h.numel() // (F2 // 2), F2 // 2)
    return h


def swiglu_backward(grad: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    """grad (..., F), gate_up (..., 2F) -> grad of gate_up (..., 2F), gate_up's dtype."""
    grad = grad.to(gate_up.dtype).contiguous()
    out = torch.empty_like(gate_up)
    F = grad.shape[-1]
    _library().swiglu_backward(grad.data_ptr(), gate_up.data_ptr(), out.data_ptr(), _flag(gate_up),
                               grad.numel() // F, F)
    return out


def rotary_to_heads(qkv: torch.Tensor, rope: torch.Tensor, H: int, K: int):
    """qkv (B, T, (H + 2K) Dh) -> q (B, H, T, Dh), k, v (B, K, T, Dh), contiguous, q and k rotated
    by rope (T, Dh/2, 2) fp32 (cos, sin)."""
    B, T, width = qkv.shape
    Dh = width // (H + 2 * K)
    _check_rope(rope, T, Dh)
    q = qkv.new_empty(B, H, T, Dh)
    k, v = qkv.new_empty(B, K, T, Dh), qkv.new_empty(B, K, T, Dh)
    _library().rotary_layout(qkv.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), _flag(qkv),
                             rope.data_ptr(), B, T, H, K, Dh, 1)
    return q, k, v


def rotary_from_heads(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """The transpose of rotary_to_heads: head-major (dq, dk, dv) -> dqkv (B, T, (H + 2K) Dh)."""
    B, H, T, Dh = dq.shape
    K = dk.shape[1]
    _check_rope(rope, T, Dh)
    if not dq.dtype == dk.dtype == dv.dtype:
        raise ValueError(f"dq, dk, dv dtypes differ: {dq.dtype}, {dk.dtype}, {dv.dtype}")
    _flag(dk), _flag(dv)  # contiguous fp32/bf16 CPU, or a ValueError
    dqkv = dq.new_empty(B, T, (H + 2 * K) * Dh)
    _library().rotary_layout(dqkv.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), _flag(dq),
                             rope.data_ptr(), B, T, H, K, Dh, 0)
    return dqkv


def _check_rope(rope: torch.Tensor, T: int, Dh: int) -> None:
    if rope.shape != (T, Dh // 2, 2) or rope.dtype != torch.float32 or not rope.is_contiguous():
        raise ValueError(f"rope must be a contiguous fp32 ({T}, {Dh // 2}, 2) table, got "
                         f"{rope.dtype} {tuple(rope.shape)}")


def causal_softmax_(scores: torch.Tensor, T: int, scale: float) -> torch.Tensor:
    """scores (..., T) whose rows are query positions 0..T-1 repeating -> probabilities, in place."""
    _library().causal_softmax_forward(scores.data_ptr(), _flag(scores), scores.numel() // T, T, scale)
    return scores


def causal_softmax_backward_(probs: torch.Tensor, grad: torch.Tensor, T: int, scale: float) -> torch.Tensor:
    """grad of the probabilities -> grad of the scores, in place in grad."""
    if probs.dtype != grad.dtype or probs.shape != grad.shape:
        raise ValueError(f"probs {probs.dtype} {tuple(probs.shape)} and grad {grad.dtype} "
                         f"{tuple(grad.shape)} must match")
    _library().causal_softmax_backward(probs.data_ptr(), grad.data_ptr(), _flag(grad), grad.numel() // T, T, scale)
    return grad


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention in fp32, scale Dh^-0.5: q (B, H, T, Dh), k, v (B, K, T, Dh) with K dividing H
    -> y (B, T, H·Dh), token-major as the output projection reads it, and the log-sum-exp of each
    query row's scores (B, H, T), which the backward needs."""
    B, H, T, Dh = q.shape
    K = _check_attention_inputs(q, k, v)
    y, lse = q.new_empty(B, T, H * Dh), q.new_empty(B, H, T)
    _library().attention_forward(q.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr(), lse.data_ptr(),
                                 B, H, K, T, Dh, Dh ** -0.5)
    return y, lse


def attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, y: torch.Tensor, lse: torch.Tensor,
                       grad_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of attention_forward: grad_y (B, T, H·Dh) -> dq (B, H, T, Dh), dk, dv (B, K, T, Dh)."""
    B, H, T, Dh = q.shape
    K = _check_attention_inputs(q, k, v)
    for name, t, shape in (("y", y, (B, T, H * Dh)), ("grad_y", grad_y, (B, T, H * Dh)), ("lse", lse, (B, H, T))):
        if _flag(t) or t.shape != shape:
            raise ValueError(f"{name} must be fp32 {shape}, got {t.dtype} {tuple(t.shape)}")
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _library().attention_backward(q.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr(), lse.data_ptr(),
                                  grad_y.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                                  B, H, K, T, Dh, Dh ** -0.5)
    return dq, dk, dv


def _check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """Contiguous fp32 (B, H, T, Dh) queries and (B, K, T, Dh) keys and values, K dividing H; -> K."""
    B, H, T, Dh = q.shape
    K = k.shape[1]
    if any(_flag(t) for t in (q, k, v)) or k.shape != v.shape or k.shape != (B, K, T, Dh) or H % K:
        raise ValueError(f"attention takes fp32 q (B, H, T, Dh), k and v (B, K, T, Dh) with K dividing H, "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    return K


def cross_entropy_forward(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (N, V), targets (N,) int64 (negative = ignored) -> per-row losses (N,) fp32 and
    d loss_row / d logits (N, V) in logits' dtype."""
    N, V = logits.shape
    targets = targets.to(torch.int64).contiguous()
    if N and (targets.max() >= V):
        raise ValueError(f"target {int(targets.max())} out of range for {V} classes")
    losses = torch.empty(N, dtype=torch.float32)
    grad = torch.empty_like(logits)
    _library().cross_entropy_forward(logits.data_ptr(), _flag(logits), targets.data_ptr(), losses.data_ptr(),
                                     grad.data_ptr(), N, V)
    return losses, grad


# A decoding step runs these a few dozen times on single rows, so they skip the checks above (the
# caller, Llama.decode_step, passes contiguous fp32 tensors it made itself): Python overhead per
# call is most of their cost.

def rms_norm_inference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (M, D) fp32, weight (D,) fp32 -> y (M, D) fp32, no statistics kept."""
    y = torch.empty_like(x)
    _library().rms_norm_forward(x.data_ptr(), 0, weight.data_ptr(), y.data_ptr(), 0, None,
                                x.size(0), x.size(1), eps)
    return y


def decode_attention(qkv: torch.Tensor, cache_layer: torch.Tensor, rope: torch.Tensor, pos: int,
                     n_kv_head: int, left_pad: torch.Tensor | None = None) -> torch.Tensor:
    """qkv (B, H + 2K, Dh) fp32 (rotated in place), cache_layer (B, 2K, T_max, Dh) fp32 (keys and
    values written at slot pos), rope the whole contiguous fp32 rotary table (T_rope, 1, Dh/2, 2),
    as Llama.rope_table -> y (B, H·Dh) attention over slots 0..pos. With left_pad (B,) contiguous
    int64 (left-padded prompts), row b is at position pos - left_pad[b] and attends to slots
    left_pad[b]..pos only."""
    B, heads, Dh = qkv.shape
    H = heads - 2 * n_kv_head
    y = qkv.new_empty(B, H * Dh)
    _library().decode_attention(qkv.data_ptr(), cache_layer.data_ptr(), rope.data_ptr(),
                                None if left_pad is None else left_pad.data_ptr(), y.data_ptr(),
                                B, H, n_kv_head, Dh, cache_layer.size(2), pos, Dh ** -0.5)
    return y


PANEL = 32  # matmul_cpu.c's panel width


def pack_for_decoding(weight: torch.Tensor) -> torch.Tensor:
    """weight (Kd, N) fp32 -> (ceil(N / 32), Kd, 32) column panels, zero-padded past N: the layout
    few_row_matmul streams (matmul_cpu.c says why). A copy, as large as the weight."""
    Kd, N = weight.shape
    weight = weight.contiguous()
    _flag(weight)
    if weight.dtype != torch.float32:
        raise ValueError(f"few_row_matmul is fp32 only, got {weight.dtype}")
    packed = weight.new_empty(-(-N // PANEL), Kd, PANEL)
    _library().pack_panels(weight.data_ptr(), packed.data_ptr(), Kd, N)
    return packed


def few_row_matmul(x: torch.Tensor, packed: torch.Tensor, n_out: int,
                   residual: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, Kd) fp32 contiguous @ the weight packed by pack_for_decoding -> (M, n_out) fp32, plus
    residual (M, n_out) when given (written in place: the result is residual)."""
    M, Kd = x.shape
    y = residual if residual is not None else x.new_empty(M, n_out)
    _library().few_row_matmul(x.data_ptr(), packed.data_ptr(), y.data_ptr() if residual is not None else None,
                              y.data_ptr(), M, Kd, n_out)
    return y
