"""Where the model runs: the GPU when PyTorch sees one, else the CPU. `ADASAM_DEVICE` (e.g. `cpu`, `cuda:1`)
overrides. Images, embeddings in the cache and every result handed out stay on the CPU; tensors move to the
device at the model's door (`to_device`)."""
from __future__ import annotations

import ctypes
import os
import platform

import torch

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
PRECISION_SWITCH, PRECISIONS = "ADASAM_PRECISION", ("float32", "bfloat16")  # `training_dtype`


class DeviceError(RuntimeError):
    """ADASAM_DEVICE names no usable device (one-line message; a RuntimeError, as torch's own device errors are)."""


def default_device() -> torch.device:
    """A mistyped or unavailable ADASAM_DEVICE is refused here, in one line, not deep inside the first model call."""
    name = os.environ.get("ADASAM_DEVICE")
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"ADASAM_DEVICE={name!r} is not a device name (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"ADASAM_DEVICE={name!r}, but PyTorch sees no CUDA GPU on this machine")
    return device


def module_device(module: torch.nn.Module) -> torch.device:
    """The device a module's weights live on (the CPU for a module without any)."""
    return next(module.parameters(), torch.empty(0)).device


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing every large block back to the system.

    By default a block over 32 MiB (a batch of 8 LiteMedSAM embeddings is 32 MiB, one of 16 is 64) is mapped fresh
    for each tensor and unmapped when it is freed, so every such tensor pays a page fault per 4 kB page, written
    and zeroed by the kernel. On 2 cores at 1 thread, beside two benchmark jobs, the adapter and map head took
    0.100 s an embedding in batches of 16 against 0.052 s with this, and an evaluation pass 0.28-0.29 s an image
    against 0.17-0.19 s; alone on the machine a whole app round gained little (training steps 3-9% faster;
    benchmarks/README.md, nineteenth session). The cost: the process keeps up to 1 GiB of freed memory instead of
    returning it. False where the C library is not glibc (nothing changed)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def training_dtype(device: torch.device) -> torch.dtype:
    """What a training step computes in: `ADASAM_PRECISION`, float32 (the default) or bfloat16 (autocast; weights,
    optimiser state, losses and evaluation stay float32). On 2 cores with AMX, bfloat16 steps were 1.29x faster (an
    app round's 60 steps 47 s against 61 s), but on BUSI at 10% masks dice_all fell by 0.035 on both seeds run and
    val Dice was lower on both and in two app rounds, so it is not the default (benchmarks/README.md, twenty-sixth
    session). Only worth it where the CPU computes bf16 in hardware (AMX, AVX-512 BF16); elsewhere it is emulated."""
    precision = os.environ.get(PRECISION_SWITCH) or "float32"
    if precision not in PRECISIONS:
        raise DeviceError(f"{PRECISION_SWITCH}={precision!r}: choose one of {', '.join(PRECISIONS)}")
    return getattr(torch, precision)
