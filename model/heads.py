"""The two trainable modules ADA-SAM adds on top of the (cached) SAM image embedding."""
from __future__ import annotations

import torch
from torch import nn


class SharedAdapter(nn.Module):
    """A residual conv block between the frozen encoder output and both heads: the gradient-feedback path.

    The mask decoder and the classifier both read its output, so segmentation losses reshape the features the
    classifier (and therefore its CAMs, and the next prompts) is built on. It sits after the encoder so that it
    trains on cached embeddings on a CPU. The last layer starts at zero: an untrained adapter is the identity and
    the pretrained decoder behaves exactly as shipped.
    """

    def __init__(self, dim: int = 256, hidden: int = 64) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, hidden, 1), nn.GroupNorm(8, hidden), nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.GELU(),
            nn.Conv2d(hidden, dim, 1),
        )
        nn.init.zeros_(self.block[-1].weight)
        nn.init.zeros_(self.block[-1].bias)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return embedding + self.block(embedding)


class PresenceClassifier(nn.Module):
    """Target present / absent from the shared features: global average pool -> MLP 256-256-2 (the paper's head)."""

    def __init__(self, dim: int = 256, hidden: int = 256, dropout: float = 0.3) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 2))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """B x C x h x w features -> B x 2 logits (index 1 = target present)."""
        return self.mlp(features.mean(dim=(2, 3)))
