"""Where the model runs: the GPU when PyTorch sees one, else the CPU. `ADASAM_DEVICE` (e.g. `cpu`, `cuda:1`)
overrides. Images, embeddings in the cache and every result handed out stay on the CPU; tensors move to the
device at the model's door (`to_device`)."""
from __future__ import annotations

import os

import torch


def default_device() -> torch.device:
    name = os.environ.get("ADASAM_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def module_device(module: torch.nn.Module) -> torch.device:
    """The device a module's weights live on (the CPU for a module without any)."""
    return next(module.parameters(), torch.empty(0)).device
