"""Uncertainty scores that rank unlabeled images for annotation (all in [0, 1], higher = more worth labelling).

- classifier: binary entropy (bits) of the presence probability. 1 means the classifier cannot tell whether the
  target is in the image at all; available before any mask exists, and the paper's ranking signal. With
  `samples > 1` the probability is the mean over Monte-Carlo dropout samples of the classifier head.
- segmentation: mean per-pixel entropy (bits) of the mask probability over the pixels the decoder gives any
  weight (p > 0.1). 1 means the mask's extent is a coin toss; 0 means a crisp mask (or none at all).
- combined: (classifier + p * segmentation) / 2, i.e. unsure whether the target is there, or sure that it is and
  unsure of its outline.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Uncertainty:
    classifier: float
    segmentation: float
    combined: float


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


def classifier_uncertainty(probability: torch.Tensor) -> torch.Tensor:
    return binary_entropy(probability)


def segmentation_uncertainty(mask_prob: torch.Tensor) -> torch.Tensor:
    """B x H x W mask probabilities -> B scores."""
    flat = mask_prob.flatten(1)
    region = flat > 0.1
    entropy = binary_entropy(flat) * region
    return entropy.sum(1) / region.sum(1).clamp_min(1)


def combined_uncertainty(probability: torch.Tensor, classifier: torch.Tensor,
                         segmentation: torch.Tensor) -> torch.Tensor:
    return (classifier + probability * segmentation) / 2


def mc_dropout_probability(classifier: torch.nn.Module, features: torch.Tensor, samples: int,
                           valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean presence probability over `samples` passes with the classifier's dropout active; `valid` (B x h x w)
    keeps padding out of the pooling, as in the deterministic pass."""
    was_training = classifier.training
    classifier.train()
    with torch.no_grad():
        probs = torch.stack([classifier(features, valid).softmax(1)[:, 1] for _ in range(samples)])
    classifier.train(was_training)
    return probs.mean(0)
