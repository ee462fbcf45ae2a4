"""Where the model runs: the GPU when PyTorch sees one, else the CPU. `ADASAM_DEVICE` (e.g. `cpu`, `cuda:1`)
overrides. Images, embeddings in the cache and every result handed out stay on the CPU; tensors move to the
device at the model's door (`to_device`)."""
from __future__ import annotations

import os

import torch


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
