"""Losses of the ADA-SAM objective."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """1 - soft Dice per image, averaged; `weight` (same shape) down-weights unsure pixels."""
    prob = torch.sigmoid(logits.float()).flatten(1)  # float32 sums, also when the step computes in bfloat16
    target = target.flatten(1)
    w = torch.ones_like(prob) if weight is None else weight.flatten(1)
    intersection = (w * prob * target).sum(1)
    total = (w * prob).sum(1) + (w * target).sum(1)
    return (1 - (2 * intersection + 1) / (total + 1)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Dice + pixel BCE (Dice alone is unstable on small lesions, BCE alone under-segments them)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight)
    return dice_loss(logits, target, weight) + bce


def map_loss(location_logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Masks supervising the classifier's map (B x h x w logits) against the mask's share of each location, over
    the valid (unpadded) locations: BCE + soft Dice (a target-free mask asks for a dark map everywhere)."""
    bce = F.binary_cross_entropy_with_logits(location_logits, target, weight=valid)
    return bce + dice_loss(location_logits, target, valid)


def map_consistency_loss(student_logits: torch.Tensor, teacher_map: torch.Tensor,
                         valid: torch.Tensor) -> torch.Tensor:
    """Student's map on a perturbed embedding vs the EMA teacher's thresholded map, weighted by its confidence."""
    confidence = (2 * (teacher_map - 0.5).abs()).detach() * valid
    return F.binary_cross_entropy_with_logits(student_logits, (teacher_map > 0.5).float(), weight=confidence)


def consistency_loss(student_logits: torch.Tensor, teacher_prob: torch.Tensor) -> torch.Tensor:
    """Student on a perturbed embedding vs the EMA teacher's pseudo-mask, weighted by the teacher's confidence."""
    pseudo = (teacher_prob > 0.5).float()
    confidence = (2 * (teacher_prob - 0.5).abs()).detach()
    return segmentation_loss(student_logits, pseudo, confidence)
