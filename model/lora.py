"""LoRA on the encoder's attention q and v projections (the paper's rank-8 setting), for machines with a GPU.

With LoRA the encoder trains, so embeddings cannot be cached and every step runs the encoder: about 2.5 s per
image on 2 CPU cores, fine on a GPU. TinyViT (LiteMedSAM) and SAM's ViT both keep q, k and v in one fused `qkv`
Linear; a mask over its output picks the q and v features (laid out per head in TinyViT, as q|k|v in SAM ViT).
"""
from __future__ import annotations

import math

import torch
from torch import nn


class LoRAQKV(nn.Module):
    """A frozen fused qkv Linear plus rank-r updates restricted to its q and v outputs."""

    def __init__(self, base: nn.Linear, rank: int, q_mask: torch.Tensor, v_mask: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.q_down = nn.Linear(base.in_features, rank, bias=False)
        self.q_up = nn.Linear(rank, base.out_features, bias=False)
        self.v_down = nn.Linear(base.in_features, rank, bias=False)
        self.v_up = nn.Linear(rank, base.out_features, bias=False)
        for down, up in ((self.q_down, self.q_up), (self.v_down, self.v_up)):
            nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
            nn.init.zeros_(up.weight)  # starts as the pretrained projection
        self.register_buffer("q_mask", q_mask, persistent=False)
        self.register_buffer("v_mask", v_mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.base(x) + self.q_up(self.q_down(x)) * self.q_mask
                + self.v_up(self.v_down(x)) * self.v_mask)


def _qv_masks(attention: nn.Module, out_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    q_mask, v_mask = torch.zeros(out_features), torch.zeros(out_features)
    if hasattr(attention, "key_dim"):  # TinyViT: per head [q (key_dim) | k (key_dim) | v (d)]
        per_head = 2 * attention.key_dim + attention.d
        for head in range(attention.num_heads):
            q_mask[head * per_head:head * per_head + attention.key_dim] = 1
            v_mask[head * per_head + 2 * attention.key_dim:(head + 1) * per_head] = 1
    else:  # SAM ViT: [q | k | v]
        third = out_features // 3
        q_mask[:third] = 1
        v_mask[2 * third:] = 1
    return q_mask, v_mask


def apply_lora(encoder: nn.Module, rank: int) -> list[nn.Parameter]:
    """Freeze `encoder`, wrap every attention `qkv` with LoRA of `rank`, and return the new trainable parameters."""
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    added: list[nn.Parameter] = []
    for module in list(encoder.modules()):
        qkv = getattr(module, "qkv", None)
        if isinstance(qkv, nn.Linear):
            module.qkv = LoRAQKV(qkv, rank, *_qv_masks(module, qkv.out_features))
            added += [p for p in module.qkv.parameters() if p.requires_grad]
    if not added:
        raise ValueError("encoder has no attention qkv projections to put LoRA on")
    return added
