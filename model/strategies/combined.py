"""combined: unsure whether the target is there, or sure it is and unsure of its outline (model.uncertainty)."""
from __future__ import annotations

import numpy as np

from model.strategies.base import Candidate, Strategy


def rank(candidates: list[Candidate], vectors: np.ndarray | None = None,
         labeled: np.ndarray | None = None) -> np.ndarray:
    return np.array([c.uncertainty.combined for c in candidates], dtype=float)


STRATEGY = Strategy("combined", "classifier and mask uncertainty", rank)
