"""segmentation: the proposed mask's mean pixel entropy first (the outline is a coin toss)."""
from __future__ import annotations

import numpy as np

from model.strategies.base import Candidate, Strategy


def rank(candidates: list[Candidate], vectors: np.ndarray | None = None,
         labeled: np.ndarray | None = None) -> np.ndarray:
    return np.array([c.uncertainty.segmentation for c in candidates], dtype=float)


STRATEGY = Strategy("segmentation", "mask pixel entropy", rank)
