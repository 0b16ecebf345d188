"""Machine setup shared by every entry point: device, precision, threads and the process group.

    m = machine.setup(device="auto", dtype="auto", threads=0)
    m.device, m.dtype, m.rank, m.world, m.is_main
    with m.autocast(): ...            # bf16 autocast when m.dtype is bf16, a no-op otherwise
    m.mean_over_ranks(value)          # all-reduce of one float under DDP
    m.close()                         # ends the process group, if one was started

`device` is auto (CUDA when there is one, else CPU), cpu, cuda or cuda:N; `dtype` is auto (bf16
where the hardware computes it natively), bf16 or fp32. Under torchrun (RANK in the environment)
setup starts the process group (NCCL on CUDA, gloo on CPU) and gives each rank its own GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPE_CHOICES = ("auto", "bf16", "fp32")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def check_device(name: str) -> str | None:
    """None when name is a valid device setting, else the complaint (for the config checks)."""
    return None if _DEVICE.match(name) else f"must be one of {', '.join(DEVICE_CHOICES)}"


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def keep_freed_memory_mapped() -> None:
    """Ask glibc to keep freed memory in the process instead of returning it to the kernel.

    By default a freed block of more than a few MB goes back to the kernel, and the next step's
    tensor of the same size page-faults all its pages in again: measured here, about 0.7 us per
    4 KiB page, 3 ms to refault one 16 MB tensor, 20-50 ms of a CPU training step that alternates
    training and validation. Process memory then stays at its high-water mark, which training
    reaches in its first steps anyway. A no-op where glibc's mallopt is missing (macOS, musl)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 1 << 30)      # blocks up to 1 GiB come from the heap...
    libc.mallopt(m_trim_threshold, 2**31 - 1)    # ...which is never trimmed (the value is a C int)


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for a device setting; `cuda` under torchrun means this rank's GPU."""
    problem = check_device(name)
    if problem:
        raise ValueError(f"device {problem}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU here "
                         f"(use --device=cpu or --device=auto)")
    if name == "cuda":
        name = f"cuda:{local_rank}"
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """bf16 or fp32 for a dtype setting; auto picks bf16 only where it is computed natively."""
    if name not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {name!r}")
    if name == "auto":
        supported = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_supports_bf16()
        name = "bf16" if supported else "fp32"
    return torch.bfloat16 if name == "bf16" else torch.float32


def _start_process_group(device_name: str) -> tuple[int, int, int]:
    """(rank, world_size, local_rank); starts the process group when launched by torchrun."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and device_name != "cpu"
        if use_nccl:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    return rank, world, local


@dataclass
class Machine:
    device: torch.device
    dtype: torch.dtype
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dtype_name(self) -> str:
        """bf16 or fp32: the precision auto resolved to, for reports."""
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def autocast(self):
        """bf16 autocast for the forward pass when the run is bf16; fp32 runs get a no-op."""
        if self.dtype != torch.bfloat16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def mean_over_ranks(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str = "auto", dtype: str = "auto", threads: int = 0, distributed: bool = True) -> Machine:
    """Pick the device and precision, set the CPU threads, and join torchrun's process group
    (distributed=False for single-process tools such as sample and evaluate)."""
    rank, world, local = _start_process_group(device) if distributed else (0, 1, 0)
    dev = pick_device(device, local)
    if dev.type == "cpu":
        keep_freed_memory_mapped()
    if threads:
        torch.set_num_threads(threads)
    return Machine(dev, pick_dtype(dtype, dev), rank, world, local)
